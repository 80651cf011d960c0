// A whole file mapped read-only. Pages are read when touched, so a model's resident memory is the
// weights a run actually reads, not a copy of the file.
#pragma once

#include <cstddef>
#include <memory>
#include <span>
#include <string>

#include "common/status.h"

namespace kvp {

class MappedFile {
 public:
  // Errors name the path: missing, a directory, unreadable.
  static Result<std::shared_ptr<const MappedFile>> open(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const std::string& path() const { return path_; }
  std::span<const std::byte> bytes() const { return {data_, size_}; }
  size_t size() const { return size_; }

 private:
  MappedFile() = default;
  std::string path_;
  const std::byte* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace kvp
