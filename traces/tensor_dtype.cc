#include "traces/tensor_dtype.h"

#include <Eigen/Core>
#include <cstring>

namespace kvp {

std::string_view dtype_name(TensorDtype dtype) {
  switch (dtype) {
    case TensorDtype::kF32: return "F32";
    case TensorDtype::kF16: return "F16";
    case TensorDtype::kI32: return "I32";
    case TensorDtype::kBF16: return "BF16";
  }
  KVP_CHECK(false, "unknown TensorDtype {}", static_cast<int>(dtype));
}

Result<TensorDtype> parse_dtype(std::string_view name) {
  if (name == "F32") return TensorDtype::kF32;
  if (name == "F16") return TensorDtype::kF16;
  if (name == "I32") return TensorDtype::kI32;
  if (name == "BF16") return TensorDtype::kBF16;
  return make_error("dtype: expected F32, F16, BF16 or I32, found '{}'", name);
}

int dtype_bytes(TensorDtype dtype) {
  switch (dtype) {
    case TensorDtype::kF32: return 4;
    case TensorDtype::kF16: return 2;
    case TensorDtype::kI32: return 4;
    case TensorDtype::kBF16: return 2;
  }
  KVP_CHECK(false, "unknown TensorDtype {}", static_cast<int>(dtype));
}

void f32_to_f16(std::span<const float> in, std::span<uint16_t> out) {
  KVP_CHECK(in.size() == out.size());
  for (size_t i = 0; i < in.size(); ++i) {
    const Eigen::half h(in[i]);
    std::memcpy(&out[i], &h, 2);
  }
}

void f16_to_f32(std::span<const uint16_t> in, std::span<float> out) {
  KVP_CHECK(in.size() == out.size());
  for (size_t i = 0; i < in.size(); ++i) {
    Eigen::half h;
    std::memcpy(&h, &in[i], 2);
    out[i] = static_cast<float>(h);
  }
}

void f32_to_bf16(std::span<const float> in, std::span<uint16_t> out) {
  KVP_CHECK(in.size() == out.size());
  for (size_t i = 0; i < in.size(); ++i) {
    uint32_t bits;
    std::memcpy(&bits, &in[i], 4);
    if ((bits & 0x7fffffffu) > 0x7f800000u) {
      out[i] = static_cast<uint16_t>((bits >> 16) | 0x40);  // a quiet NaN
    } else {
      out[i] = static_cast<uint16_t>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
    }
  }
}

void bf16_to_f32(std::span<const uint16_t> in, std::span<float> out) {
  KVP_CHECK(in.size() == out.size());
  for (size_t i = 0; i < in.size(); ++i) {
    const uint32_t bits = uint32_t{in[i]} << 16;
    std::memcpy(&out[i], &bits, 4);
  }
}

}  // namespace kvp
