#include "traces/safetensors_writer.h"

#include <nlohmann/json.hpp>

#include <bit>
#include <cstring>
#include <numeric>

#include "common/file_util.h"
#include "common/sha256.h"

namespace kvp {
namespace {

int64_t element_count(const std::vector<int64_t>& shape) {
  return std::accumulate(shape.begin(), shape.end(), int64_t{1}, std::multiplies<>());
}

}  // namespace

void SafetensorsWriter::add(std::string name, TensorDtype dtype, std::vector<int64_t> shape,
                            std::span<const std::byte> data) {
  KVP_CHECK(static_cast<int64_t>(data.size()) == element_count(shape) * dtype_bytes(dtype),
            "tensor {}: {} bytes for its shape", name, data.size());
  tensors_.push_back({std::move(name), dtype, std::move(shape), {data.begin(), data.end()}});
}

void SafetensorsWriter::add_f32(std::string name, std::vector<int64_t> shape,
                                std::span<const float> data) {
  add(std::move(name), TensorDtype::kF32, std::move(shape), std::as_bytes(data));
}

void SafetensorsWriter::add_i32(std::string name, std::vector<int64_t> shape,
                                std::span<const int32_t> data) {
  add(std::move(name), TensorDtype::kI32, std::move(shape), std::as_bytes(data));
}

void SafetensorsWriter::add_float_as(std::string name, TensorDtype dtype,
                                     std::vector<int64_t> shape, std::span<const float> data) {
  if (dtype == TensorDtype::kF32) return add_f32(std::move(name), std::move(shape), data);
  KVP_CHECK(dtype == TensorDtype::kF16 || dtype == TensorDtype::kBF16);
  std::vector<uint16_t> halves(data.size());
  if (dtype == TensorDtype::kF16) {
    f32_to_f16(data, halves);
  } else {
    f32_to_bf16(data, halves);
  }
  add(std::move(name), dtype, std::move(shape), std::as_bytes(std::span(halves)));
}

Result<std::string> SafetensorsWriter::write(const std::string& path,
                                             int64_t fail_after_bytes) const {
  static_assert(std::endian::native == std::endian::little, "safetensors is little-endian");
  nlohmann::ordered_json header;
  if (!metadata_.empty()) header["__metadata__"] = metadata_;
  int64_t offset = 0;
  for (const Tensor& t : tensors_) {
    const int64_t end = offset + static_cast<int64_t>(t.data.size());
    header[t.name] = {{"dtype", dtype_name(t.dtype)}, {"shape", t.shape},
                      {"data_offsets", {offset, end}}};
    offset = end;
  }
  std::string json = header.dump();
  json.resize((json.size() + 7) / 8 * 8, ' ');
  const uint64_t header_len = json.size();

  Sha256 digest;
  KVP_RETURN_IF_ERROR(write_file_atomic(path, [&](std::FILE* out) -> Status {
    int64_t written = 0;
    auto put = [&](const void* data, size_t size) -> Status {
      if (fail_after_bytes >= 0 && written + static_cast<int64_t>(size) > fail_after_bytes) {
        KVP_RETURN_IF_ERROR(write_all(out, data, static_cast<size_t>(fail_after_bytes - written), path));
        return make_error("{}: write failed after {} bytes (injected)", path, fail_after_bytes);
      }
      written += static_cast<int64_t>(size);
      digest.update(data, size);
      return write_all(out, data, size, path);
    };
    KVP_RETURN_IF_ERROR(put(&header_len, 8));
    KVP_RETURN_IF_ERROR(put(json.data(), json.size()));
    for (const Tensor& t : tensors_) KVP_RETURN_IF_ERROR(put(t.data.data(), t.data.size()));
    return ok_status();
  }));
  return digest.hex();
}

}  // namespace kvp
