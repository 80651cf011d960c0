// A weight tensor in its stored element type, viewed where it lives (a memory-mapped file or a
// buffer the model owns). Matrices are [rows, cols] row-major with y = W x, so `rows` is the output
// width and `cols` the input width; a vector is [1, cols].
//
// Element types (each format's reader maps its own type codes onto these):
//   f32   IEEE binary32
//   f16   IEEE binary16
//   bf16  bfloat16 (the high half of a binary32)
//   q8_0  blocks of 32 along a row: binary16 scale d, then 32 int8 q; the weight is d * q
//   q4_0  blocks of 32 (18 bytes): binary16 d, 16 bytes of 4-bit q (element j in byte j's low
//         nibble, element j + 16 in its high nibble); weight d·(q − 8) (ggml's Q4_0)
//   q4_1  blocks of 32 (20 bytes): binary16 d and m, 16 bytes of 4-bit q as q4_0; weight d·q + m
//   q4_k  super-blocks of 256 (144 bytes): binary16 d and dmin, 12 bytes of 6-bit scales and mins
//         for 8 sub-blocks of 32, 128 bytes of 4-bit q; weight d·sc·q − dmin·m (ggml's Q4_K)
//   q6_k  super-blocks of 256 (210 bytes): 128 bytes of low 4 bits, 64 of high 2 bits, 16 int8
//         sub-block scales, binary16 d; weight d·sc·(q − 32) (ggml's Q6_K)
// The k-quants are read (GGUF downloads use them), not written.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace kvp {

enum class WeightType : uint8_t { kF32, kF16, kBF16, kQ8_0, kQ4_K, kQ6_K, kQ4_0, kQ4_1 };

inline constexpr int kQ8BlockSize = 32;        // weights per q8_0 block
inline constexpr int kQ8BlockBytes = 2 + 32;   // binary16 scale, 32 int8
inline constexpr int kQ4BlockSize = 32;        // weights per q4_0 / q4_1 block
inline constexpr int kQ4_0BlockBytes = 2 + 16; // binary16 d, 32 nibbles
inline constexpr int kQ4_1BlockBytes = 4 + 16; // binary16 d and m, 32 nibbles
inline constexpr int kQkBlockSize = 256;       // weights per k-quant super-block
inline constexpr int kQ4KBlockBytes = 144;
inline constexpr int kQ6KBlockBytes = 210;

std::string_view weight_type_name(WeightType type);  // "f32", "f16", "bf16", "q8_0", "q4_k", "q6_k", "q4_0", "q4_1"
// The types a model can be converted to: f32, f16, bf16, q8_0, q4_0, q4_1.
Result<WeightType> parse_weight_type(std::string_view name);

// Bytes of one row of `cols` elements. REQUIRES: row_layout_ok(type, cols).
size_t row_bytes(WeightType type, int64_t cols);
// Quantized rows hold whole blocks (32 for q8_0, q4_0 and q4_1, 256 for the k-quants); the float types
// take any width.
bool row_layout_ok(WeightType type, int64_t cols);

struct WeightTensor {
  WeightType type = WeightType::kF32;
  const std::byte* data = nullptr;  // [rows, cols] in `type`
  int64_t rows = 0;
  int64_t cols = 0;

  bool empty() const { return data == nullptr; }
  size_t bytes_per_row() const { return row_bytes(type, cols); }
  size_t bytes() const { return static_cast<size_t>(rows) * bytes_per_row(); }
  const std::byte* row(int64_t row_idx) const { return data + static_cast<size_t>(row_idx) * bytes_per_row(); }
  // The floats of an f32 tensor. REQUIRES: type == kF32.
  const float* f32() const;
};

// Element conversions, round to nearest even.
float half_to_float(uint16_t h);
uint16_t float_to_half(float x);
float bf16_to_float(uint16_t b);

// One k-quant super-block (256 weights) widened to f32, as ggml's dequantize_row_q4_K / _q6_K.
void dequantize_q4_k_block(const std::byte* block, float* out);
void dequantize_q6_k_block(const std::byte* block, float* out);
// One q4_0 / q4_1 block (32 weights) widened to f32, as ggml's dequantize_row_q4_0 / _q4_1.
void dequantize_q4_0_block(const std::byte* block, float* out);
void dequantize_q4_1_block(const std::byte* block, float* out);
uint16_t float_to_bf16(float x);

// out[i] = weight (row_idx, i) as f32, exactly (every stored type widens exactly). out: [cols].
void dequantize_row(const WeightTensor& w, int64_t row_idx, std::span<float> out);
// The whole tensor as f32, [rows, cols]: for small tensors and device uploads, never the model.
std::vector<float> dequantize(const WeightTensor& w);

// Encodes `x` ([rows, cols] f32) in `type`: q8_0 takes d = max|x| / 127 per block (as ggml does)
// and q = round(x / d); q4_0 and q4_1 as ggml's reference quantizers. REQUIRES: row_layout_ok(type,
// cols); not a k-quant.
std::vector<std::byte> quantize(std::span<const float> x, int64_t rows, int64_t cols, WeightType type);

// The first non-finite element of a float tensor (the scales of the quantized types included), or -1.
int64_t first_non_finite(const WeightTensor& w);

}  // namespace kvp
