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

namespace kvp {

// sha256_file with a cache for large files (model weights): the digest is stored keyed by the
// file's absolute path, size and modification time, so a 14 GB model is hashed once, not on every
// command. The cache is `fingerprints.tsv` in $KVPLAN_CACHE_DIR, else $XDG_CACHE_HOME/kvplan, else
// ~/.cache/kvplan; files under `min_bytes` are always hashed, and a cache that cannot be written
// is skipped silently (the digest is still right).
Result<std::string> sha256_file_cached(const std::string& path, int64_t min_bytes = 64 << 20);

// kvplan's cache directory: $KVPLAN_CACHE_DIR, else $XDG_CACHE_HOME/kvplan, else ~/.cache/kvplan
// ("" when none can be named). It holds fingerprints.tsv and models/ (tools/fetch-model.sh).
std::string cache_dir();

// The cache file sha256_file_cached uses ("" when no cache directory can be named).
std::string fingerprint_cache_path();

}  // namespace kvp
