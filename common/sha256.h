// SHA-256 (OpenSSL), used for model fingerprints and trace checksums.
#pragma once

#include <cstddef>
#include <span>
#include <string>

#include "common/status.h"

namespace kvp {

// Incremental SHA-256.
class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;

  void update(const void* data, size_t size);
  std::string hex();  // lower-case digest; call once

 private:
  struct Impl;
  Impl* impl_;
};

// Lower-case hex digest of `data`.
std::string sha256_hex(std::span<const std::byte> data);

// Lower-case hex digest of the file at `path`, read in chunks.
Result<std::string> sha256_file(const std::string& path);

}  // namespace kvp
