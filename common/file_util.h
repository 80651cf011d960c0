// Reading whole files with clear errors, and writing files atomically (temporary name, then
// rename), so a failure never leaves a half-written file under the final name.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "common/status.h"

namespace kvp {

// Reads the whole file. Errors name the path: missing, a directory, unreadable, short read.
Result<std::vector<std::byte>> read_file_bytes(const std::string& path);
Result<std::string> read_file_text(const std::string& path);

// Size in bytes of a regular file; an error for a missing file or a directory.
Result<int64_t> regular_file_size(const std::string& path);

// Writes `path` atomically: `write` fills a temporary file in the same directory, which is
// flushed, synced and renamed over `path` only if `write` returned ok. On any failure the
// temporary file is removed and `path` is untouched.
Status write_file_atomic(const std::string& path,
                         const std::function<Status(std::FILE* out)>& write);
Status write_file_atomic(const std::string& path, std::string_view contents);

// Writes `size` bytes, turning a short write into an error naming `path`.
Status write_all(std::FILE* out, const void* data, size_t size, const std::string& path);

}  // namespace kvp
