// NumPy's .npy format (version 1.0) for float32 arrays in C order, so study scripts read kvplan's
// per-position outputs with numpy.load: the magic "\x93NUMPY", version 1.0, a little-endian uint16
// header length, a Python dict literal {'descr': '<f4', 'fortran_order': False, 'shape': (...), }
// padded with spaces and ended by '\n' so that the data starts at a multiple of 64 bytes, then the
// values.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "common/status.h"

namespace kvp {

// The whole file's bytes. REQUIRES: the product of `shape` equals values.size().
std::string npy_f32(const std::vector<int64_t>& shape, std::span<const float> values);

// Writes them atomically (temporary name, then rename).
Status write_npy_f32(const std::string& path, const std::vector<int64_t>& shape, std::span<const float> values);

// Rows of different lengths as one array of shape `outer` + [longest row], the missing ends NaN
// (per-sequence outputs of sequences of different lengths). REQUIRES: the product of `outer` equals
// rows.size().
std::string npy_rows_f32(const std::vector<int64_t>& outer, std::span<const std::vector<float>* const> rows);
Status write_npy_rows_f32(const std::string& path, const std::vector<int64_t>& outer,
                          std::span<const std::vector<float>* const> rows);

}  // namespace kvp
