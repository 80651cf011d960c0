// Writes a safetensors file: 8-byte little-endian header length N, N bytes of JSON header
// (space-padded to a multiple of 8), then the tensors' raw little-endian bytes back to back in
// the order they were added. The file appears under its name only when complete.
#pragma once

#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "common/status.h"
#include "traces/tensor_dtype.h"

namespace kvp {

class SafetensorsWriter {
 public:
  // Copies the data. `shape` is outermost first; data.size() must be the shape's byte count.
  void add(std::string name, TensorDtype dtype, std::vector<int64_t> shape,
           std::span<const std::byte> data);
  void add_f32(std::string name, std::vector<int64_t> shape, std::span<const float> data);
  void add_i32(std::string name, std::vector<int64_t> shape, std::span<const int32_t> data);
  // Stores f32 values as `dtype` (F32, F16 or BF16).
  void add_float_as(std::string name, TensorDtype dtype, std::vector<int64_t> shape,
                    std::span<const float> data);
  void set_metadata(std::string key, std::string value) { metadata_[std::move(key)] = std::move(value); }

  // Writes the file atomically and returns the sha256 of its bytes. `fail_after_bytes` (tests
  // only) makes the write fail once that many bytes have been written, as a full disk would.
  Result<std::string> write(const std::string& path, int64_t fail_after_bytes = -1) const;

 private:
  struct Tensor {
    std::string name;
    TensorDtype dtype;
    std::vector<int64_t> shape;
    std::vector<std::byte> data;
  };
  std::vector<Tensor> tensors_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace kvp
