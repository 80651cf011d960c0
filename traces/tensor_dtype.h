// Element types of trace tensors, with their safetensors names. On-disk names are frozen.
#pragma once

#include <cstdint>
#include <span>
#include <string_view>

#include "common/status.h"

namespace kvp {

enum class TensorDtype { kF32, kF16, kI32, kBF16 };

std::string_view dtype_name(TensorDtype dtype);  // "F32", "F16", "I32", "BF16" (safetensors)
Result<TensorDtype> parse_dtype(std::string_view name);
int dtype_bytes(TensorDtype dtype);

// IEEE binary16 conversions, round to nearest even.
void f32_to_f16(std::span<const float> in, std::span<uint16_t> out);
void f16_to_f32(std::span<const uint16_t> in, std::span<float> out);
// bfloat16 (the high half of a binary32) conversions, round to nearest even; NaN stays NaN.
void f32_to_bf16(std::span<const float> in, std::span<uint16_t> out);
void bf16_to_f32(std::span<const uint16_t> in, std::span<float> out);

}  // namespace kvp
