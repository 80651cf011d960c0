// A whole file mapped read-only. Pages are read when touched, so a model's resident memory is the
// weights a run actually reads, not a copy of the file.
#pragma once

#include <cstddef>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "common/status.h"

namespace kvp {

class MappedFile {
 public:
  // Errors name the path: missing, a directory, unreadable.
  static Result<std::shared_ptr<const MappedFile>> open(const std::string& path);
  // The same interface over bytes held in memory (`path` names them in errors): for fuzzing and
  // tests of readers without a file.
  static std::shared_ptr<const MappedFile> from_bytes(const std::string& path, std::span<const std::byte> bytes);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const std::string& path() const { return path_; }
  std::span<const std::byte> bytes() const { return owned_.empty() ? std::span<const std::byte>(data_, size_) : std::span<const std::byte>(owned_); }
  size_t size() const { return size_; }

 private:
  MappedFile() = default;
  std::string path_;
  std::vector<std::byte> owned_;  // from_bytes only
  const std::byte* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace kvp
