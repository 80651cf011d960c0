#include "executor/model/weight_tensor.h"

#include "kernels/kernel_math.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>

namespace kvp {

std::string_view weight_type_name(WeightType type) {
  switch (type) {
    case WeightType::kF32: return "f32";
    case WeightType::kF16: return "f16";
    case WeightType::kBF16: return "bf16";
    case WeightType::kQ8_0: return "q8_0";
    case WeightType::kQ4_K: return "q4_k";
    case WeightType::kQ6_K: return "q6_k";
    case WeightType::kQ4_0: return "q4_0";
    case WeightType::kQ4_1: return "q4_1";
  }
  KVP_CHECK(false, "unknown WeightType {}", static_cast<int>(type));
}

Result<WeightType> parse_weight_type(std::string_view name) {
  for (WeightType t : {WeightType::kF32, WeightType::kF16, WeightType::kBF16, WeightType::kQ8_0, WeightType::kQ4_0,
                       WeightType::kQ4_1}) {
    if (name == weight_type_name(t)) return t;
  }
  return make_error("expected f32, f16, bf16, q8_0, q4_0 or q4_1, found '{}'", name);
}

bool row_layout_ok(WeightType type, int64_t cols) {
  if (cols < 0) return false;
  if (type == WeightType::kQ8_0 || type == WeightType::kQ4_0 || type == WeightType::kQ4_1) return cols % kQ8BlockSize == 0;
  if (type == WeightType::kQ4_K || type == WeightType::kQ6_K) return cols % kQkBlockSize == 0;
  return true;
}

size_t row_bytes(WeightType type, int64_t cols) {
  const size_t n = static_cast<size_t>(cols);
  switch (type) {
    case WeightType::kF32: return n * 4;
    case WeightType::kF16:
    case WeightType::kBF16: return n * 2;
    case WeightType::kQ8_0: return n / kQ8BlockSize * kQ8BlockBytes;
    case WeightType::kQ4_K: return n / kQkBlockSize * kQ4KBlockBytes;
    case WeightType::kQ6_K: return n / kQkBlockSize * kQ6KBlockBytes;
    case WeightType::kQ4_0: return n / kQ4BlockSize * kQ4_0BlockBytes;
    case WeightType::kQ4_1: return n / kQ4BlockSize * kQ4_1BlockBytes;
  }
  KVP_CHECK(false, "unknown WeightType {}", static_cast<int>(type));
}

const float* WeightTensor::f32() const {
  KVP_CHECK(type == WeightType::kF32, "expected an f32 tensor, found {}", weight_type_name(type));
  return reinterpret_cast<const float*>(data);
}

// One definition of the decoding for the CPU, the kernels and their references.
float half_to_float(uint16_t h) { return math::half_bits_to_float(h); }

uint16_t float_to_half(float x) {
  const uint32_t f = std::bit_cast<uint32_t>(x);
  const uint32_t sign = (f >> 16) & 0x8000u;
  const uint32_t abs = f & 0x7fffffffu;
  if (abs >= 0x7f800000u) {  // Inf or NaN (quiet NaN keeps a payload bit)
    return static_cast<uint16_t>(sign | 0x7c00u | (abs > 0x7f800000u ? 0x200u : 0));
  }
  if (abs >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds past the largest half
  if (abs < 0x38800000u) {  // below the smallest normal half: round to a subnormal (or zero)
    const float scaled = std::bit_cast<float>(abs) * 0x1p24f;  // exact: units of 2^-24
    return static_cast<uint16_t>(sign | static_cast<uint32_t>(std::nearbyint(scaled)));
  }
  const uint32_t mant_round = abs + 0xfffu + ((abs >> 13) & 1u);  // round to nearest even at bit 13
  return static_cast<uint16_t>(sign | ((mant_round - 0x38000000u) >> 13));
}

float bf16_to_float(uint16_t b) { return std::bit_cast<float>(static_cast<uint32_t>(b) << 16); }

uint16_t float_to_bf16(float x) {
  const uint32_t f = std::bit_cast<uint32_t>(x);
  if ((f & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((f >> 16) | 0x40u);  // quiet NaN
  return static_cast<uint16_t>((f + 0x7fffu + ((f >> 16) & 1u)) >> 16);
}

namespace {

uint16_t load16(const std::byte* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}

// Sub-block j's 6-bit scale and min in Q4_K's 12 packed bytes.
void scale_min_k4(int j, const uint8_t* q, uint8_t* d, uint8_t* m) {
  if (j < 4) {
    *d = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *d = static_cast<uint8_t>((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
    *m = static_cast<uint8_t>((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
  }
}

}  // namespace

void dequantize_q4_k_block(const std::byte* block, float* out) {
  const float d = half_to_float(load16(block)), dmin = half_to_float(load16(block + 2));
  const uint8_t* scales = reinterpret_cast<const uint8_t*>(block + 4);
  const uint8_t* q = reinterpret_cast<const uint8_t*>(block + 16);
  int is = 0;
  for (int j = 0; j < kQkBlockSize; j += 64) {  // two sub-blocks: low nibbles, then high
    uint8_t sc, m;
    scale_min_k4(is + 0, scales, &sc, &m);
    const float d1 = d * sc, m1 = dmin * m;
    scale_min_k4(is + 1, scales, &sc, &m);
    const float d2 = d * sc, m2 = dmin * m;
    for (int l = 0; l < 32; ++l) *out++ = d1 * static_cast<float>(q[l] & 0xF) - m1;
    for (int l = 0; l < 32; ++l) *out++ = d2 * static_cast<float>(q[l] >> 4) - m2;
    q += 32;
    is += 2;
  }
}

void dequantize_q6_k_block(const std::byte* block, float* out) {
  const uint8_t* ql = reinterpret_cast<const uint8_t*>(block);
  const uint8_t* qh = reinterpret_cast<const uint8_t*>(block + 128);
  const int8_t* sc = reinterpret_cast<const int8_t*>(block + 192);
  const float d = half_to_float(load16(block + 208));
  for (int n = 0; n < kQkBlockSize; n += 128) {
    for (int l = 0; l < 32; ++l) {
      const int is = l / 16;
      const int q1 = static_cast<int>((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
      const int q2 = static_cast<int>((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
      const int q3 = static_cast<int>((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
      const int q4 = static_cast<int>((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
      out[l] = d * sc[is] * static_cast<float>(q1);
      out[l + 32] = d * sc[is + 2] * static_cast<float>(q2);
      out[l + 64] = d * sc[is + 4] * static_cast<float>(q3);
      out[l + 96] = d * sc[is + 6] * static_cast<float>(q4);
    }
    out += 128;
    ql += 64;
    qh += 32;
    sc += 8;
  }
}

void dequantize_q4_0_block(const std::byte* block, float* out) {
  const float d = half_to_float(load16(block));
  const uint8_t* q = reinterpret_cast<const uint8_t*>(block + 2);
  for (int j = 0; j < kQ4BlockSize / 2; ++j) {
    out[j] = static_cast<float>((q[j] & 0xF) - 8) * d;
    out[j + kQ4BlockSize / 2] = static_cast<float>((q[j] >> 4) - 8) * d;
  }
}

void dequantize_q4_1_block(const std::byte* block, float* out) {
  const float d = half_to_float(load16(block)), m = half_to_float(load16(block + 2));
  const uint8_t* q = reinterpret_cast<const uint8_t*>(block + 4);
  for (int j = 0; j < kQ4BlockSize / 2; ++j) {
    // A product, then a sum: two roundings (no fused multiply-add), as the kernels do.
    const float lo = static_cast<float>(q[j] & 0xF) * d, hi = static_cast<float>(q[j] >> 4) * d;
    out[j] = lo + m;
    out[j + kQ4BlockSize / 2] = hi + m;
  }
}

void dequantize_row(const WeightTensor& w, int64_t row_idx, std::span<float> out) {
  KVP_CHECK(static_cast<int64_t>(out.size()) == w.cols && row_idx >= 0 && row_idx < w.rows);
  const std::byte* r = w.row(row_idx);
  const size_t n = out.size();
  switch (w.type) {
    case WeightType::kF32:
      std::memcpy(out.data(), r, n * 4);
      return;
    case WeightType::kF16:
    case WeightType::kBF16:
      for (size_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, r + 2 * i, 2);
        out[i] = w.type == WeightType::kF16 ? half_to_float(h) : bf16_to_float(h);
      }
      return;
    case WeightType::kQ8_0:
      for (size_t b = 0; b < n / kQ8BlockSize; ++b) {
        const std::byte* block = r + b * kQ8BlockBytes;
        uint16_t d;
        std::memcpy(&d, block, 2);
        const float scale = half_to_float(d);
        for (int i = 0; i < kQ8BlockSize; ++i) {
          out[b * kQ8BlockSize + i] = scale * static_cast<float>(static_cast<int8_t>(block[2 + i]));
        }
      }
      return;
    case WeightType::kQ4_K:
      for (size_t b = 0; b < n / kQkBlockSize; ++b) dequantize_q4_k_block(r + b * kQ4KBlockBytes, out.data() + b * kQkBlockSize);
      return;
    case WeightType::kQ6_K:
      for (size_t b = 0; b < n / kQkBlockSize; ++b) dequantize_q6_k_block(r + b * kQ6KBlockBytes, out.data() + b * kQkBlockSize);
      return;
    case WeightType::kQ4_0:
      for (size_t b = 0; b < n / kQ4BlockSize; ++b) dequantize_q4_0_block(r + b * kQ4_0BlockBytes, out.data() + b * kQ4BlockSize);
      return;
    case WeightType::kQ4_1:
      for (size_t b = 0; b < n / kQ4BlockSize; ++b) dequantize_q4_1_block(r + b * kQ4_1BlockBytes, out.data() + b * kQ4BlockSize);
      return;
  }
}

std::vector<float> dequantize(const WeightTensor& w) {
  std::vector<float> out(static_cast<size_t>(w.rows * w.cols));
  for (int64_t r = 0; r < w.rows; ++r) {
    dequantize_row(w, r, std::span<float>(out.data() + r * w.cols, static_cast<size_t>(w.cols)));
  }
  return out;
}

std::vector<std::byte> quantize(std::span<const float> x, int64_t rows, int64_t cols, WeightType type) {
  KVP_CHECK(row_layout_ok(type, cols) && static_cast<int64_t>(x.size()) == rows * cols);
  KVP_CHECK(type != WeightType::kQ4_K && type != WeightType::kQ6_K, "{} is read, not written", weight_type_name(type));
  std::vector<std::byte> out(static_cast<size_t>(rows) * row_bytes(type, cols));
  std::byte* at = out.data();
  auto put16 = [&](uint16_t v) {
    std::memcpy(at, &v, 2);
    at += 2;
  };
  switch (type) {
    case WeightType::kF32:
      std::memcpy(out.data(), x.data(), x.size() * 4);
      break;
    case WeightType::kF16:
      for (float v : x) put16(float_to_half(v));
      break;
    case WeightType::kBF16:
      for (float v : x) put16(float_to_bf16(v));
      break;
    case WeightType::kQ8_0:
      for (size_t b = 0; b < x.size() / kQ8BlockSize; ++b) {
        const float* v = x.data() + b * kQ8BlockSize;
        float amax = 0.0f;
        for (int i = 0; i < kQ8BlockSize; ++i) amax = std::max(amax, std::fabs(v[i]));
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        put16(float_to_half(d));
        for (int i = 0; i < kQ8BlockSize; ++i) {
          *at++ = static_cast<std::byte>(static_cast<int8_t>(std::lround(v[i] * id)));
        }
      }
      break;
    case WeightType::kQ4_0:
    case WeightType::kQ4_1:
      // ggml's reference quantizers: q4_0 scales the block's largest-magnitude value (sign
      // included) to -8, q4_1 spans [min, max] in 15 steps; nibbles as dequantize_q4_*_block reads them.
      for (size_t b = 0; b < x.size() / kQ4BlockSize; ++b) {
        const float* v = x.data() + b * kQ4BlockSize;
        float lo = v[0], hi = v[0], amax = 0.0f, signed_max = 0.0f;
        for (int i = 0; i < kQ4BlockSize; ++i) {
          lo = std::min(lo, v[i]);
          hi = std::max(hi, v[i]);
          if (std::fabs(v[i]) > amax) amax = std::fabs(v[i]), signed_max = v[i];
        }
        const bool q4_1 = type == WeightType::kQ4_1;
        const float d = q4_1 ? (hi - lo) / 15.0f : signed_max / -8.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        put16(float_to_half(d));
        if (q4_1) put16(float_to_half(lo));
        auto nibble = [&](float value) {
          const float at = q4_1 ? (value - lo) * id + 0.5f : value * id + 8.5f;
          return static_cast<uint8_t>(std::min(15, static_cast<int>(at)));
        };
        for (int j = 0; j < kQ4BlockSize / 2; ++j) {
          *at++ = static_cast<std::byte>(nibble(v[j]) | nibble(v[j + kQ4BlockSize / 2]) << 4);
        }
      }
      break;
    case WeightType::kQ4_K:
    case WeightType::kQ6_K:
      break;  // refused above
  }
  return out;
}

namespace {

// The first element of `data` (n elements of UInt) whose bits under `mask` are all ones (an
// all-ones exponent: Inf or NaN), or -1. Chunks of 1024 are tested without branches (the loop
// vectorises), and only a chunk that holds one is searched element by element.
template <typename UInt>
int64_t first_all_ones(const std::byte* data, size_t n, UInt mask) {
  constexpr size_t kChunk = 1024;
  for (size_t c = 0; c < n; c += kChunk) {
    const size_t end = std::min(n, c + kChunk);
    unsigned hits = 0;
    for (size_t i = c; i < end; ++i) {
      UInt v;
      std::memcpy(&v, data + sizeof(UInt) * i, sizeof(UInt));
      hits += (v & mask) == mask ? 1u : 0u;
    }
    if (hits == 0) continue;
    for (size_t i = c; i < end; ++i) {
      UInt v;
      std::memcpy(&v, data + sizeof(UInt) * i, sizeof(UInt));
      if ((v & mask) == mask) return static_cast<int64_t>(i);
    }
  }
  return -1;
}

}  // namespace

int64_t first_non_finite(const WeightTensor& w) {
  const size_t n = static_cast<size_t>(w.rows * w.cols);
  switch (w.type) {
    case WeightType::kF32:
      return first_all_ones<uint32_t>(w.data, n, 0x7f800000u);
    case WeightType::kF16:
    case WeightType::kBF16:
      // An all-ones exponent is Inf or NaN: 5 bits at 10 for binary16, 8 bits at 7 for bfloat16.
      return first_all_ones<uint16_t>(w.data, n, w.type == WeightType::kF16 ? 0x7c00u : 0x7f80u);
    case WeightType::kQ8_0:
    case WeightType::kQ4_K:
    case WeightType::kQ6_K:
    case WeightType::kQ4_0:
    case WeightType::kQ4_1: {
      // The binary16 scales: d at 0 (q8_0, q4_0), d and dmin/m at 0 and 2 (q4_k, q4_1), d at 208 (q6_k).
      struct Layout {
        size_t block, bytes;
        std::vector<size_t> at;
      };
      const Layout l = w.type == WeightType::kQ8_0   ? Layout{kQ8BlockSize, kQ8BlockBytes, {0}}
                       : w.type == WeightType::kQ4_0 ? Layout{kQ4BlockSize, kQ4_0BlockBytes, {0}}
                       : w.type == WeightType::kQ4_1 ? Layout{kQ4BlockSize, kQ4_1BlockBytes, {0, 2}}
                       : w.type == WeightType::kQ4_K ? Layout{kQkBlockSize, kQ4KBlockBytes, {0, 2}}
                                                     : Layout{kQkBlockSize, kQ6KBlockBytes, {208}};
      const size_t block = l.block, bytes = l.bytes;
      const std::vector<size_t>& at = l.at;
      for (size_t b = 0; b < n / block; ++b) {
        for (size_t o : at) {
          if ((load16(w.data + b * bytes + o) & 0x7c00u) == 0x7c00u) return static_cast<int64_t>(b * block);
        }
      }
      return -1;
    }
  }
  return -1;
}

}  // namespace kvp
