// SHA-256 (OpenSSL), used for model fingerprints and trace checksums.
#pragma once

#include <cstddef>
#include <span>
#include <string>

#include "common/status.h"

namespace kvp {

// Lower-case hex digest of `data`.
std::string sha256_hex(std::span<const std::byte> data);

// Lower-case hex digest of the file at `path`, read in chunks.
Result<std::string> sha256_file(const std::string& path);

}  // namespace kvp
