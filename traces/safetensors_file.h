// A safetensors file mapped read-only, validated in full when opened: header length within the
// file, JSON that parses, known dtypes, non-negative shapes whose byte counts equal their
// offset ranges, offsets inside the data buffer, no overlaps and no holes. Errors name the file
// and the tensor.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "common/status.h"
#include "traces/tensor_dtype.h"

namespace kvp {

struct TensorInfo {
  std::string name;
  TensorDtype dtype;
  std::vector<int64_t> shape;
  int64_t begin;  // byte offset within the data buffer
  int64_t end;
  int64_t element_count() const;
};

class SafetensorsFile {
 public:
  static Result<SafetensorsFile> open(const std::string& path);

  SafetensorsFile(SafetensorsFile&&) noexcept;
  SafetensorsFile& operator=(SafetensorsFile&&) noexcept;
  ~SafetensorsFile();

  const std::string& path() const { return path_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }  // in file order
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const TensorInfo* find(const std::string& name) const;

  // The whole file, as mapped.
  std::span<const std::byte> file_bytes() const { return {map_, map_size_}; }
  // The tensor's bytes inside the mapping.
  std::span<const std::byte> bytes(const TensorInfo& t) const;

  // Checks that `name` exists with this dtype and shape; the error names file and tensor.
  Result<const TensorInfo*> expect(const std::string& name, TensorDtype dtype,
                                   const std::vector<int64_t>& shape) const;

  // Copies a tensor out as f32 (F32 as is, F16 and BF16 widened). REQUIRES: a float dtype.
  void read_floats(const TensorInfo& t, std::span<float> out) const;

  // Drops the mapped pages of `range` (inside file_bytes()) from this process's memory; they are
  // read back from the file if touched again. Keeps a reader's resident set bounded by what it
  // holds, not by the size of the files it has read.
  void release(std::span<const std::byte> range) const;
  void release(const TensorInfo& t) const { release(bytes(t)); }
  // sha256 of the whole file, releasing each chunk once hashed.
  std::string sha256_releasing() const;

 private:
  SafetensorsFile() = default;
  std::string path_;
  const std::byte* map_ = nullptr;
  size_t map_size_ = 0;
  const std::byte* data_ = nullptr;  // start of the data buffer within the mapping
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t> by_name_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace kvp
