#include "executor/cpu/dot_kernels.h"

#include <cstring>
#include <vector>

#if defined(__AVX512F__) && defined(__AVX512BW__)
// GCC 12's masked-load intrinsics start from an "undefined" vector it then warns about.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#define KVP_DOT_AVX512 1
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define KVP_DOT_AVX2 1
#endif

namespace kvp {
namespace {

constexpr int kLanes = 16;
constexpr int kAccs = 4;
constexpr int kStep = kLanes * kAccs;  // elements per main-loop iteration
constexpr int kMaxRows = 4;            // activation rows sharing one pass over a weight row
constexpr int kPrefetchBytes = 4096;   // how far ahead of the loads the weights are prefetched

inline void prefetch(const std::byte* p) { __builtin_prefetch(p, 0, 3); }

#ifdef KVP_DOT_AVX512

using Vec = __m512;

// Loads 16 weights (elements [i, i + n), n <= 16; the rest read as 0) widened to f32.
template <WeightType T>
inline Vec load_weights(const std::byte* row, int64_t i, int n) {
  const __mmask16 m = n >= 16 ? __mmask16(0xffff) : __mmask16((1u << n) - 1);
  if constexpr (T == WeightType::kF32) {
    return _mm512_maskz_loadu_ps(m, reinterpret_cast<const float*>(row) + i);
  } else if constexpr (T == WeightType::kF16) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, reinterpret_cast<const uint16_t*>(row) + i));
  } else if constexpr (T == WeightType::kBF16) {
    const __m512i wide = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, reinterpret_cast<const uint16_t*>(row) + i));
    return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
  }
}

// 16 int8 weights widened to f32.
inline Vec load_q8(const std::byte* q) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q))));
}

// A q4 block's 32 nibbles (16 bytes) as f32: elements 0-15 (low nibbles), 16-31 (high).
inline void load_nibbles(const std::byte* q, Vec* lo, Vec* hi) {
  const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q)), low4 = _mm_set1_epi8(0x0F);
  *lo = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(b, low4)));
  *hi = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(b, 4), low4)));
}
inline void store(Vec v, float* out) { _mm512_storeu_ps(out, v); }

inline Vec load_x(const float* x, int64_t i, int n) {
  const __mmask16 m = n >= 16 ? __mmask16(0xffff) : __mmask16((1u << n) - 1);
  return _mm512_maskz_loadu_ps(m, x + i);
}
inline Vec zero() { return _mm512_setzero_ps(); }
inline Vec splat(float f) { return _mm512_set1_ps(f); }
inline Vec mul(Vec a, Vec b) { return _mm512_mul_ps(a, b); }
inline Vec add(Vec a, Vec b) { return _mm512_add_ps(a, b); }
inline Vec fma(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }
inline Vec combine(Vec a0, Vec a1, Vec a2, Vec a3) { return _mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)); }

// out[i] = the lane sum of v[i] for 16 vectors at once, by the tree of _mm512_reduce_add_ps
// (lanes l + 8, then l + 4, l + 2, l + 1) with the 16 trees interleaved: a transpose that adds as
// it shuffles, 15 vector additions for 16 sums instead of 4 dependent ones each. The bits equal
// _mm512_reduce_add_ps(v[i]) (each addition is the same pair of values).
inline void reduce16(const Vec* v, float* out) {
  Vec s1[8], s2[4], s3[2];
  for (int i = 0; i < 8; ++i) {  // lanes 0-7: row 2i's v[l] + v[l + 8]; lanes 8-15: row 2i + 1's
    s1[i] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0x44),
                          _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0xEE));
  }
  for (int i = 0; i < 4; ++i) {  // quarter k: row 4i + k's (l) + (l + 4)
    s2[i] = _mm512_add_ps(_mm512_shuffle_f32x4(s1[2 * i], s1[2 * i + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                          _mm512_shuffle_f32x4(s1[2 * i], s1[2 * i + 1], _MM_SHUFFLE(3, 1, 3, 1)));
  }
  for (int i = 0; i < 2; ++i) {  // quarter k: rows 8i + k and 8i + 4 + k, (m) + (m + 2) for m = 0, 1
    s3[i] = _mm512_add_ps(_mm512_shuffle_ps(s2[2 * i], s2[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                          _mm512_shuffle_ps(s2[2 * i], s2[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
  }
  // Lane 4k + j holds row 4j + k's sum.
  const Vec r = _mm512_add_ps(_mm512_shuffle_ps(s3[0], s3[1], _MM_SHUFFLE(2, 0, 2, 0)),
                              _mm512_shuffle_ps(s3[0], s3[1], _MM_SHUFFLE(3, 1, 3, 1)));
  const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  _mm512_storeu_ps(out, _mm512_permutexvar_ps(order, r));
}

#elif defined(KVP_DOT_AVX2)

// Sixteen lanes as two AVX2 registers: the same lanes and operations as the AVX-512 path, so the
// two give the same bits.
struct Vec {
  __m256 lo, hi;
};

template <WeightType T>
inline Vec load_weights_full(const std::byte* p) {
  if constexpr (T == WeightType::kF32) {
    const float* f = reinterpret_cast<const float*>(p);
    return {_mm256_loadu_ps(f), _mm256_loadu_ps(f + 8)};
  } else if constexpr (T == WeightType::kF16) {
    const __m128i* h = reinterpret_cast<const __m128i*>(p);
    return {_mm256_cvtph_ps(_mm_loadu_si128(h)), _mm256_cvtph_ps(_mm_loadu_si128(h + 1))};
  } else {
    static_assert(T == WeightType::kBF16);
    const __m128i* h = reinterpret_cast<const __m128i*>(p);
    auto widen = [](__m128i b) { return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(b), 16)); };
    return {widen(_mm_loadu_si128(h)), widen(_mm_loadu_si128(h + 1))};
  }
}

// Loads 16 weights (elements [i, i + n), n <= 16; the rest read as 0) widened to f32. A partial
// vector goes through a zeroed copy, so nothing past the row is read.
template <WeightType T>
inline Vec load_weights(const std::byte* row, int64_t i, int n) {
  constexpr int kElemBytes = T == WeightType::kF32 ? 4 : 2;
  if (n >= kLanes) return load_weights_full<T>(row + i * kElemBytes);
  alignas(32) std::byte part[kLanes * kElemBytes] = {};
  std::memcpy(part, row + i * kElemBytes, static_cast<size_t>(n) * kElemBytes);
  return load_weights_full<T>(part);
}

inline Vec load_q8(const std::byte* q) {
  const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q));
  return {_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b)), _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(b, 8)))};
}

inline void load_nibbles(const std::byte* q, Vec* lo, Vec* hi) {
  const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q)), low4 = _mm_set1_epi8(0x0F);
  auto widen = [](__m128i n) {
    return Vec{_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(n)), _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(n, 8)))};
  };
  *lo = widen(_mm_and_si128(b, low4));
  *hi = widen(_mm_and_si128(_mm_srli_epi16(b, 4), low4));
}
inline void store(Vec v, float* out) {
  _mm256_storeu_ps(out, v.lo);
  _mm256_storeu_ps(out + 8, v.hi);
}

inline Vec load_x(const float* x, int64_t i, int n) {
  return load_weights<WeightType::kF32>(reinterpret_cast<const std::byte*>(x), i, n);
}
inline Vec zero() { return {_mm256_setzero_ps(), _mm256_setzero_ps()}; }
inline Vec splat(float f) { return {_mm256_set1_ps(f), _mm256_set1_ps(f)}; }
inline Vec mul(Vec a, Vec b) { return {_mm256_mul_ps(a.lo, b.lo), _mm256_mul_ps(a.hi, b.hi)}; }
inline Vec add(Vec a, Vec b) { return {_mm256_add_ps(a.lo, b.lo), _mm256_add_ps(a.hi, b.hi)}; }
inline Vec fma(Vec a, Vec b, Vec c) { return {_mm256_fmadd_ps(a.lo, b.lo, c.lo), _mm256_fmadd_ps(a.hi, b.hi, c.hi)}; }
inline Vec combine(Vec a0, Vec a1, Vec a2, Vec a3) { return add(add(a0, a1), add(a2, a3)); }

// The AVX-512 path's tree (lanes l + 8, l + 4, l + 2, l + 1) for 16 vectors at once: the first
// step adds each vector's halves, the others are a transpose that adds as it shuffles, 8 sums
// per register.
inline void reduce16(const Vec* v, float* out) {
  for (int g = 0; g < 2; ++g) {  // vectors 8g .. 8g + 7
    __m256 s1[8], s2[4], s3[2];
    for (int i = 0; i < 8; ++i) s1[i] = _mm256_add_ps(v[8 * g + i].lo, v[8 * g + i].hi);
    for (int i = 0; i < 4; ++i) {  // 128-bit half h: vector 2i + h's (l) + (l + 4)
      s2[i] = _mm256_add_ps(_mm256_permute2f128_ps(s1[2 * i], s1[2 * i + 1], 0x20),
                            _mm256_permute2f128_ps(s1[2 * i], s1[2 * i + 1], 0x31));
    }
    for (int i = 0; i < 2; ++i) {  // half h: vectors 4i + h and 4i + 2 + h, (m) + (m + 2) for m = 0, 1
      s3[i] = _mm256_add_ps(_mm256_shuffle_ps(s2[2 * i], s2[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                            _mm256_shuffle_ps(s2[2 * i], s2[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
    }
    // Lane 4h + j holds vector 2j + h's sum.
    const __m256 r = _mm256_add_ps(_mm256_shuffle_ps(s3[0], s3[1], _MM_SHUFFLE(2, 0, 2, 0)),
                                   _mm256_shuffle_ps(s3[0], s3[1], _MM_SHUFFLE(3, 1, 3, 1)));
    _mm256_storeu_ps(out + 8 * g, _mm256_permutevar8x32_ps(r, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
  }
}

#else  // portable: the same lanes, one at a time

struct Vec {
  float v[kLanes];
};

template <WeightType T>
inline Vec load_weights(const std::byte* row, int64_t i, int n) {
  Vec out{};
  for (int l = 0; l < n && l < kLanes; ++l) {
    const int64_t e = i + l;
    if constexpr (T == WeightType::kF32) {
      std::memcpy(&out.v[l], row + 4 * e, 4);
    } else {
      static_assert(T == WeightType::kF16 || T == WeightType::kBF16);
      uint16_t h;
      std::memcpy(&h, row + 2 * e, 2);
      out.v[l] = T == WeightType::kF16 ? half_to_float(h) : bf16_to_float(h);
    }
  }
  return out;
}

inline Vec load_q8(const std::byte* q) {
  Vec out;
  for (int l = 0; l < kLanes; ++l) out.v[l] = static_cast<float>(static_cast<int8_t>(q[l]));
  return out;
}

inline void load_nibbles(const std::byte* q, Vec* lo, Vec* hi) {
  for (int l = 0; l < kLanes; ++l) {
    const auto b = static_cast<uint8_t>(q[l]);
    lo->v[l] = static_cast<float>(b & 0xF);
    hi->v[l] = static_cast<float>(b >> 4);
  }
}
inline void store(Vec v, float* out) { std::memcpy(out, v.v, sizeof v.v); }

inline Vec load_x(const float* x, int64_t i, int n) {
  Vec out{};
  for (int l = 0; l < n && l < kLanes; ++l) out.v[l] = x[i + l];
  return out;
}
inline Vec zero() { return Vec{}; }
inline Vec splat(float f) {
  Vec out;
  for (int l = 0; l < kLanes; ++l) out.v[l] = f;
  return out;
}
inline Vec mul(Vec a, Vec b) {
  for (int l = 0; l < kLanes; ++l) a.v[l] *= b.v[l];
  return a;
}
inline Vec fma(Vec a, Vec b, Vec c) {
  for (int l = 0; l < kLanes; ++l) c.v[l] = std::fma(a.v[l], b.v[l], c.v[l]);
  return c;
}
inline Vec add(Vec a, Vec b) {
  for (int l = 0; l < kLanes; ++l) a.v[l] += b.v[l];
  return a;
}
inline Vec combine(Vec a0, Vec a1, Vec a2, Vec a3) { return add(add(a0, a1), add(a2, a3)); }

// A pairwise tree over each vector's lanes.
inline void reduce16(const Vec* v, float* out) {
  for (int i = 0; i < kLanes; ++i) {
    Vec s = v[i];
    for (int width = kLanes / 2; width >= 1; width /= 2) {
      for (int l = 0; l < width; ++l) s.v[l] = s.v[l] + s.v[l + width];
    }
    out[i] = s.v[0];
  }
}

#endif

// Dots of one weight row with NR activation rows, each left as 16 lanes for reduce16 to sum; the
// weights are loaded and widened once. Every accumulator index is a compile-time constant (the tail
// included), so they all stay in registers.
template <WeightType T, int NR>
inline void dot_rows(const std::byte* wrow, int64_t cols, const float* const* x, Vec* out) {
  Vec acc[NR][kAccs];
  for (int r = 0; r < NR; ++r) {
    for (int a = 0; a < kAccs; ++a) acc[r][a] = zero();
  }
  auto step = [&]<int A>(int64_t at, int n) {
    const Vec w = load_weights<T>(wrow, at, n);
    for (int r = 0; r < NR; ++r) acc[r][A] = fma(w, load_x(x[r], at, n), acc[r][A]);
  };
  int64_t i = 0;
  for (; i + kStep <= cols; i += kStep) {
    // The streamers alone leave a single-thread decode latency-bound: ask for the weights a few
    // kilobytes ahead (measured: f16 and q8_0 rows stream 1.5-2x faster).
    constexpr int kElemBytes = T == WeightType::kF32 ? 4 : 2;
    for (int off = 0; off < kStep * kElemBytes; off += 64) prefetch(wrow + i * kElemBytes + kPrefetchBytes + off);
    step.template operator()<0>(i, kLanes);
    step.template operator()<1>(i + kLanes, kLanes);
    step.template operator()<2>(i + 2 * kLanes, kLanes);
    step.template operator()<3>(i + 3 * kLanes, kLanes);
  }
  // Tail: whole or partial vectors into the accumulators in order.
  auto tail = [&]<int A>() {
    if (i < cols) {
      const int n = static_cast<int>(std::min<int64_t>(kLanes, cols - i));
      step.template operator()<A>(i, n);
      i += kLanes;
    }
  };
  tail.template operator()<0>();
  tail.template operator()<1>();
  tail.template operator()<2>();
  tail.template operator()<3>();
  for (int r = 0; r < NR; ++r) out[r] = combine(acc[r][0], acc[r][1], acc[r][2], acc[r][3]);
}

// A block's binary16 scale as a float: F16C's conversion where the build has it (exact, as the
// portable one is, for every finite value), else half_to_float (an out-of-line call per block of
// 32 weights, which made a 5632 x 2048 q8_0 product 3.2x slower: 0.93 against 0.29 ms, one row,
// 2 threads, BM_MatmulBatch).
inline float q8_scale(uint16_t d) {
#if defined(__F16C__)
  return _cvtsh_ss(d);
#else
  return half_to_float(d);
#endif
}

// q8_0 rows: per block of 32, Σ q·x in f32 (two vectors), then acc += d · that. The scale is
// applied once per block instead of once per weight; the sum is exact up to f32 rounding (the
// products q·x carry no more rounding than the dequantized d·q·x would). Every path (AVX-512,
// AVX2, portable) does these operations lane for lane.
template <int NR>
inline void dot_rows_q8(const std::byte* wrow, int64_t cols, const float* const* x, Vec* out) {
  Vec acc0[NR], acc1[NR];
  for (int r = 0; r < NR; ++r) acc0[r] = acc1[r] = zero();
  // One block's contribution into `acc` (a compile-time choice of accumulator set).
  auto block = [&](int64_t b, Vec* acc) {
    const std::byte* blk = wrow + b * kQ8BlockBytes;
    uint16_t d;
    std::memcpy(&d, blk, 2);
    const Vec q0 = load_q8(blk + 2), q1 = load_q8(blk + 2 + kLanes);
    const Vec scale = splat(q8_scale(d));
    for (int r = 0; r < NR; ++r) {
      const float* xb = x[r] + b * kQ8BlockSize;
      const Vec s = fma(q1, load_x(xb, kLanes, kLanes), mul(q0, load_x(xb, 0, kLanes)));
      acc[r] = fma(scale, s, acc[r]);
    }
  };
  const int64_t blocks = cols / kQ8BlockSize;
  int64_t b = 0;
  for (; b + 2 <= blocks; b += 2) {
    prefetch(wrow + b * kQ8BlockBytes + kPrefetchBytes);
    prefetch(wrow + b * kQ8BlockBytes + kPrefetchBytes + 64);
    block(b, acc0);
    block(b + 1, acc1);
  }
  if (b < blocks) block(b, acc0);
  for (int r = 0; r < NR; ++r) out[r] = add(acc0[r], acc1[r]);
}

#ifdef KVP_DOT_AVX512
// Vector decoders of one super-block into `out` (256 floats), with the scalar decoders' operations
// in the same order (a multiply, then a subtraction: no fused rounding), so the values are equal.
inline void q4_k_block_avx512(const std::byte* block, float* out) {
  uint16_t hd, hm;
  std::memcpy(&hd, block, 2);
  std::memcpy(&hm, block + 2, 2);
  const float d = _cvtsh_ss(hd), dmin = _cvtsh_ss(hm);
  const uint8_t* sc = reinterpret_cast<const uint8_t*>(block + 4);
  const uint8_t* q = reinterpret_cast<const uint8_t*>(block + 16);
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  for (int j = 0; j < 4; ++j) {  // 64 weights: sub-block 2j from low nibbles, 2j+1 from high
    float scale[2], min[2];
    for (int h = 0; h < 2; ++h) {
      const int s = 2 * j + h;
      const uint8_t a = s < 4 ? sc[s] & 63 : static_cast<uint8_t>((sc[s + 4] & 0xF) | ((sc[s - 4] >> 6) << 4));
      const uint8_t m = s < 4 ? sc[s + 4] & 63 : static_cast<uint8_t>((sc[s + 4] >> 4) | ((sc[s] >> 6) << 4));
      scale[h] = d * a;
      min[h] = dmin * m;
    }
    const __m256i bytes = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + 32 * j));
    const __m256i lo = _mm256_and_si256(bytes, low4), hi = _mm256_and_si256(_mm256_srli_epi16(bytes, 4), low4);
    const __m256i halves[2] = {lo, hi};
    for (int h = 0; h < 2; ++h) {
      const Vec vs = _mm512_set1_ps(scale[h]), vm = _mm512_set1_ps(min[h]);
      for (int k = 0; k < 2; ++k) {
        const __m128i part = k == 0 ? _mm256_castsi256_si128(halves[h]) : _mm256_extracti128_si256(halves[h], 1);
        const Vec v = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(part));
        _mm512_store_ps(out + 64 * j + 32 * h + 16 * k, _mm512_sub_ps(_mm512_mul_ps(vs, v), vm));
      }
    }
  }
}

inline void q6_k_block_avx512(const std::byte* block, float* out) {
  const uint8_t* ql = reinterpret_cast<const uint8_t*>(block);
  const uint8_t* qh = reinterpret_cast<const uint8_t*>(block + 128);
  const int8_t* sc = reinterpret_cast<const int8_t*>(block + 192);
  uint16_t hd;
  std::memcpy(&hd, block + 208, 2);
  const float d = _cvtsh_ss(hd);
  const __m256i low4 = _mm256_set1_epi8(0x0F), low2 = _mm256_set1_epi8(0x03), k32 = _mm256_set1_epi8(32);
  for (int n = 0; n < 2; ++n) {  // 128 weights
    const __m256i l0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ql + 64 * n));
    const __m256i l1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ql + 64 * n + 32));
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qh + 32 * n));
    auto high = [&](int shift) { return _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, shift), low2), 4); };
    const __m256i q[4] = {
        _mm256_sub_epi8(_mm256_or_si256(_mm256_and_si256(l0, low4), high(0)), k32),
        _mm256_sub_epi8(_mm256_or_si256(_mm256_and_si256(l1, low4), high(2)), k32),
        _mm256_sub_epi8(_mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), low4), high(4)), k32),
        _mm256_sub_epi8(_mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), low4), high(6)), k32),
    };
    for (int g = 0; g < 4; ++g) {  // out[32g + l] uses scale sc[8n + 2g + l / 16]
      for (int k = 0; k < 2; ++k) {
        const __m128i part = k == 0 ? _mm256_castsi256_si128(q[g]) : _mm256_extracti128_si256(q[g], 1);
        const Vec v = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(part));
        const Vec s = _mm512_set1_ps(d * sc[8 * n + 2 * g + k]);
        _mm512_store_ps(out + 128 * n + 32 * g + 16 * k, _mm512_mul_ps(s, v));
      }
    }
  }
}
#endif

// k-quant rows: each 256-weight super-block widened into an L1 buffer (by the vector decoders, or
// the scalar ones of weight_tensor.h), then the same lanes and order as the float types.
template <WeightType T, int NR>
inline void dot_rows_kquant(const std::byte* wrow, int64_t cols, const float* const* x, Vec* out) {
  alignas(64) float buf[kQkBlockSize];
  Vec acc[NR][kAccs];
  for (int r = 0; r < NR; ++r) {
    for (int a = 0; a < kAccs; ++a) acc[r][a] = zero();
  }
  const std::byte* bufp = reinterpret_cast<const std::byte*>(buf);
  auto step = [&]<int A>(int64_t at, int64_t x_at) {
    const Vec w = load_weights<WeightType::kF32>(bufp, at, kLanes);
    for (int r = 0; r < NR; ++r) acc[r][A] = fma(w, load_x(x[r], x_at, kLanes), acc[r][A]);
  };
  constexpr int kBytes = T == WeightType::kQ4_K ? kQ4KBlockBytes : kQ6KBlockBytes;
  for (int64_t b = 0; b < cols / kQkBlockSize; ++b) {
    for (int off = 0; off < kBytes; off += 64) prefetch(wrow + b * kBytes + kPrefetchBytes + off);
#ifdef KVP_DOT_AVX512
    if constexpr (T == WeightType::kQ4_K) {
      q4_k_block_avx512(wrow + b * kBytes, buf);
    } else {
      q6_k_block_avx512(wrow + b * kBytes, buf);
    }
#else
    if constexpr (T == WeightType::kQ4_K) {
      dequantize_q4_k_block(wrow + b * kBytes, buf);
    } else {
      dequantize_q6_k_block(wrow + b * kBytes, buf);
    }
#endif
    for (int c = 0; c < kQkBlockSize; c += kStep) {
      const int64_t xi = b * kQkBlockSize + c;
      step.template operator()<0>(c, xi);
      step.template operator()<1>(c + kLanes, xi + kLanes);
      step.template operator()<2>(c + 2 * kLanes, xi + 2 * kLanes);
      step.template operator()<3>(c + 3 * kLanes, xi + 3 * kLanes);
    }
  }
  for (int r = 0; r < NR; ++r) out[r] = combine(acc[r][0], acc[r][1], acc[r][2], acc[r][3]);
}

// One q4_0 / q4_1 block (32 weights) as f32 into `out`. Every product q·d is exact (4 by 11
// significant bits), so d·(q − 8) and the fused q·d + m are the scalar decoders' values on every path.
template <WeightType T>
inline void decode_q4_block(const std::byte* block, float* out) {
  uint16_t hd;
  std::memcpy(&hd, block, 2);
  const Vec d = splat(q8_scale(hd));
  Vec lo, hi;
  if constexpr (T == WeightType::kQ4_1) {
    uint16_t hm;
    std::memcpy(&hm, block + 2, 2);
    const Vec m = splat(q8_scale(hm));
    load_nibbles(block + 4, &lo, &hi);
    store(fma(lo, d, m), out);
    store(fma(hi, d, m), out + kLanes);
  } else {
    static_assert(T == WeightType::kQ4_0);
    load_nibbles(block + 2, &lo, &hi);
    const Vec eight = splat(-8.0f);
    store(mul(add(lo, eight), d), out);
    store(mul(add(hi, eight), d), out + kLanes);
  }
}

template <WeightType T>
constexpr bool kIsQ4 = T == WeightType::kQ4_0 || T == WeightType::kQ4_1;

template <WeightType T, int NR>
inline void dot_rows_any(const std::byte* wrow, int64_t cols, const float* const* x, Vec* out) {
  if constexpr (T == WeightType::kQ4_K || T == WeightType::kQ6_K) {
    dot_rows_kquant<T, NR>(wrow, cols, x, out);
  } else if constexpr (T == WeightType::kQ8_0) {
    dot_rows_q8<NR>(wrow, cols, x, out);
  } else {
    dot_rows<T, NR>(wrow, cols, x, out);
  }
}

// Output rows [o0, o0 + n_out), n_out <= 16, for NR activation rows: each row's lanes, then one
// reduce16 per activation row, and the 16 results stored together. `rows` holds the n_out weight
// rows in type T, `rb` bytes apart.
template <WeightType T, int NR>
void matmul_block(const MatmulArgs& a, const float* const* x, int r0, int64_t o0, int n_out, const std::byte* rows,
                  size_t rb) {
  Vec lanes[NR][kLanes];
  for (int j = 0; j < n_out; ++j) {
    Vec out[NR];
    dot_rows_any<T, NR>(rows + static_cast<size_t>(j) * rb, a.w->cols, x, out);
    for (int r = 0; r < NR; ++r) lanes[r][j] = out[r];
  }
  for (int r = 0; r < NR; ++r) {
    for (int j = n_out; j < kLanes; ++j) lanes[r][j] = zero();
    float sums[kLanes];
    reduce16(lanes[r], sums);
    float* y = a.y + static_cast<size_t>(r0 + r) * a.y_stride + o0;
    for (int j = 0; j < n_out; ++j) y[j] = a.accumulate ? y[j] + sums[j] : sums[j];
  }
}

// The activation rows are taken in tiles of about kTileBytes (a multiple of kMaxRows rows), which
// stay in the core's L2; within a tile each block of kLanes output rows runs every group of
// kMaxRows activation rows while its weights are still in L1/L2. A matrix is so read from memory once
// per tile rather than once per kMaxRows rows (8 times over for a batch of 32 before). The groups
// of rows are the same as without tiles, so every output keeps its bits.
constexpr size_t kTileBytes = 256 * 1024;

//
// q4_0 and q4_1 rows are decoded to f32 once per block of kLanes output rows and tile (into a
// thread's buffer of kLanes rows, in L2), and every activation row of the tile runs the f32 kernel
// over them: the decoding is shared by the whole tile instead of redone per kMaxRows rows, and a
// row's result is the same whatever else is in the batch.
template <WeightType T>
void matmul_typed(const MatmulArgs& a, int64_t row_begin, int64_t row_end) {
  const int64_t cols = a.w->cols;
  const size_t row_bytes = static_cast<size_t>(cols) * sizeof(float);
  const int tile = std::max<int>(kMaxRows, static_cast<int>(kTileBytes / row_bytes) / kMaxRows * kMaxRows);
  constexpr WeightType kRun = kIsQ4<T> ? WeightType::kF32 : T;  // the type the dot kernels see
  thread_local std::vector<float> decoded;
  if constexpr (kIsQ4<T>) decoded.resize(static_cast<size_t>(kLanes * cols));
  const size_t rb = kIsQ4<T> ? row_bytes : a.w->bytes_per_row();
  for (int t0 = 0; t0 < a.n_rows; t0 += tile) {
    const int t1 = std::min(a.n_rows, t0 + tile);
    for (int64_t o0 = row_begin; o0 < row_end; o0 += kLanes) {
      const int n_out = static_cast<int>(std::min<int64_t>(kLanes, row_end - o0));
      const std::byte* rows = a.w->row(o0);
      if constexpr (kIsQ4<T>) {
        constexpr int kBytes = T == WeightType::kQ4_0 ? kQ4_0BlockBytes : kQ4_1BlockBytes;
        for (int j = 0; j < n_out; ++j) {
          const std::byte* src = a.w->row(o0 + j);
          float* dst = decoded.data() + static_cast<size_t>(j) * cols;
          for (int64_t b = 0; b < cols / kQ4BlockSize; ++b) decode_q4_block<T>(src + b * kBytes, dst + b * kQ4BlockSize);
        }
        rows = reinterpret_cast<const std::byte*>(decoded.data());
      }
      for (int r0 = t0; r0 < t1; r0 += kMaxRows) {
        const int nr = std::min(kMaxRows, t1 - r0);
        const float* x[kMaxRows];
        for (int r = 0; r < nr; ++r) x[r] = a.x + static_cast<size_t>(r0 + r) * a.x_stride;
        switch (nr) {
          case 1: matmul_block<kRun, 1>(a, x, r0, o0, n_out, rows, rb); break;
          case 2: matmul_block<kRun, 2>(a, x, r0, o0, n_out, rows, rb); break;
          case 3: matmul_block<kRun, 3>(a, x, r0, o0, n_out, rows, rb); break;
          default: matmul_block<kRun, 4>(a, x, r0, o0, n_out, rows, rb); break;
        }
      }
    }
  }
}

}  // namespace

void matmul_range(const MatmulArgs& args, int64_t row_begin, int64_t row_end) {
  KVP_CHECK(row_begin >= 0 && row_begin <= row_end && row_end <= args.w->rows);
  KVP_CHECK(row_layout_ok(args.w->type, args.w->cols));
  switch (args.w->type) {
    case WeightType::kF32: return matmul_typed<WeightType::kF32>(args, row_begin, row_end);
    case WeightType::kF16: return matmul_typed<WeightType::kF16>(args, row_begin, row_end);
    case WeightType::kBF16: return matmul_typed<WeightType::kBF16>(args, row_begin, row_end);
    case WeightType::kQ8_0: return matmul_typed<WeightType::kQ8_0>(args, row_begin, row_end);
    case WeightType::kQ4_K: return matmul_typed<WeightType::kQ4_K>(args, row_begin, row_end);
    case WeightType::kQ6_K: return matmul_typed<WeightType::kQ6_K>(args, row_begin, row_end);
    case WeightType::kQ4_0: return matmul_typed<WeightType::kQ4_0>(args, row_begin, row_end);
    case WeightType::kQ4_1: return matmul_typed<WeightType::kQ4_1>(args, row_begin, row_end);
  }
}

void matmul_reference(const MatmulArgs& a) {
  const WeightTensor& w = *a.w;
  std::vector<float> row(static_cast<size_t>(w.cols));
  for (int64_t o = 0; o < w.rows; ++o) {
    dequantize_row(w, o, row);
    for (int r = 0; r < a.n_rows; ++r) {
      const float* x = a.x + static_cast<size_t>(r) * a.x_stride;
      double s = 0.0;
      for (int64_t i = 0; i < w.cols; ++i) s += static_cast<double>(row[i]) * x[i];
      float& y = a.y[static_cast<size_t>(r) * a.y_stride + o];
      y = a.accumulate ? static_cast<float>(y + s) : static_cast<float>(s);
    }
  }
}

bool dot_kernels_vectorised() {
#if defined(KVP_DOT_AVX512) || defined(KVP_DOT_AVX2)
  return true;
#else
  return false;
#endif
}

}  // namespace kvp
