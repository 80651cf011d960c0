#include "common/npy.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <limits>
#include <numeric>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "common/file_util.h"

namespace kvp {

std::string npy_f32(const std::vector<int64_t>& shape, std::span<const float> values) {
  const int64_t count = std::accumulate(shape.begin(), shape.end(), int64_t{1}, std::multiplies<>());
  KVP_CHECK(count == static_cast<int64_t>(values.size()), "npy: shape holds {} values, given {}", count, values.size());
  // (3,) for one dimension, (2, 3) for more, as numpy writes them.
  std::string dims = fmt::format("{}{}", fmt::join(shape, ", "), shape.size() == 1 ? "," : "");
  std::string header = fmt::format("{{'descr': '<f4', 'fortran_order': False, 'shape': ({}), }}", dims);
  const size_t preamble = 10;  // magic (6), version (2), header length (2)
  header.append((64 - (preamble + header.size() + 1) % 64) % 64, ' ');
  header += '\n';
  KVP_CHECK(header.size() <= 65535, "npy: header of {} bytes", header.size());
  std::string out("\x93NUMPY\x01\x00", 8);
  out += static_cast<char>(header.size() & 0xff);
  out += static_cast<char>(header.size() >> 8);
  out += header;
  static_assert(std::endian::native == std::endian::little, "'<f4' is written as the host stores floats");
  out.append(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(float));
  return out;
}

Status write_npy_f32(const std::string& path, const std::vector<int64_t>& shape, std::span<const float> values) {
  return write_file_atomic(path, npy_f32(shape, values));
}

std::string npy_rows_f32(const std::vector<int64_t>& outer, std::span<const std::vector<float>* const> rows) {
  size_t n = 0;
  for (const std::vector<float>* r : rows) n = std::max(n, r->size());
  std::vector<float> padded(rows.size() * n, std::numeric_limits<float>::quiet_NaN());
  for (size_t i = 0; i < rows.size(); ++i) std::copy(rows[i]->begin(), rows[i]->end(), padded.begin() + i * n);
  std::vector<int64_t> shape = outer;
  shape.push_back(static_cast<int64_t>(n));
  return npy_f32(shape, padded);
}

Status write_npy_rows_f32(const std::string& path, const std::vector<int64_t>& outer,
                          std::span<const std::vector<float>* const> rows) {
  return write_file_atomic(path, npy_rows_f32(outer, rows));
}

}  // namespace kvp
