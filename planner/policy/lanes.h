// Sixteen float (or int32) lanes as one value, through the GCC/Clang vector extension: lane-wise
// arithmetic with no reassociation, so a loop written over lanes computes exactly what the same
// loop written per element does, and compiles to whole AVX-512 (or 2 × AVX2, 4 × SSE) registers
// instead of whatever the auto-vectoriser manages. Without AVX-512, GCC turns a 16-lane comparison
// or select (a > b ? a : b) into one scalar per lane, so those go through max, blend_first and the
// native-width types below, which compile to whole AVX2 registers.
#pragma once

#include <bit>
#include <cstdint>
#include <cstring>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

namespace kvp::lanes {

inline constexpr int kWidth = 16;
typedef float F16 __attribute__((vector_size(64)));
typedef int32_t I16 __attribute__((vector_size(64)));

inline F16 load(const float* p) {
  F16 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline I16 load(const int32_t* p) {
  I16 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store(float* p, F16 v) { std::memcpy(p, &v, sizeof v); }
inline F16 splat(float x) { return F16{} + x; }
inline I16 splat(int32_t x) { return I16{} + x; }

// The widest vector the registers hold whole (16 lanes with AVX-512, else 8), for code whose result
// does not depend on the lane count (minima, maxima, selections): Of<N>::F and Of<N>::I.
#ifdef __AVX512F__
inline constexpr int kNativeWidth = 16;
#else
inline constexpr int kNativeWidth = 8;
#endif
template <int N>
struct Of {
  typedef float F __attribute__((vector_size(4 * N)));
  typedef int32_t I __attribute__((vector_size(4 * N)));
};
using NF = Of<kNativeWidth>::F;
using NI = Of<kNativeWidth>::I;

template <typename V, typename T>
inline V load_as(const T* p) {
  static_assert(sizeof(V) % sizeof(T) == 0);
  V v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

#if defined(__AVX2__) && !defined(__AVX512F__)
inline __m256 low_half(F16 v) { return __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7); }
inline __m256 high_half(F16 v) { return __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15); }
inline F16 join(__m256 lo, __m256 hi) {
  return __builtin_shufflevector(lo, hi, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
}
// Lanes below n of an 8-lane register, as a mask.
inline __m256 first_mask(int n) {
  return _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)));
}
#endif

// a > b ? a : b, lane-wise (MAXPS is exactly this select, NaNs included).
inline F16 max(F16 a, F16 b) {
#if defined(__AVX2__) && !defined(__AVX512F__)
  return join(_mm256_max_ps(low_half(a), low_half(b)), _mm256_max_ps(high_half(a), high_half(b)));
#else
  return a > b ? a : b;
#endif
}

// The fixed halving tree: lane l += lane l + w for w = 8, 4, 2, 1, in registers.
inline float reduce_add(F16 v) {
  v += __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15, 8, 9, 10, 11, 12, 13, 14, 15);
  v += __builtin_shufflevector(v, v, 4, 5, 6, 7, 4, 5, 6, 7, 4, 5, 6, 7, 4, 5, 6, 7);
  v += __builtin_shufflevector(v, v, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3);
  v += __builtin_shufflevector(v, v, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1);
  return v[0];
}

// reduce_add of eight vectors at once: out[i] = reduce_add(v[i]), the same additions in the same
// order, with the lanes of different vectors packed together between the steps of the tree.
inline void reduce_add8(const F16 (&v)[8], float* out) {
  F16 x[4], y[2];
  for (int i = 0; i < 4; ++i) {  // w = 8: two vectors' eight partial sums per register
    x[i] = __builtin_shufflevector(v[2 * i], v[2 * i + 1], 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23) +
           __builtin_shufflevector(v[2 * i], v[2 * i + 1], 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
  }
  for (int i = 0; i < 2; ++i) {  // w = 4: four vectors' four partial sums
    y[i] = __builtin_shufflevector(x[2 * i], x[2 * i + 1], 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27) +
           __builtin_shufflevector(x[2 * i], x[2 * i + 1], 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31);
  }
  // w = 2: eight vectors' two partial sums; w = 1: the sums.
  const F16 z = __builtin_shufflevector(y[0], y[1], 0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29) +
                __builtin_shufflevector(y[0], y[1], 2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31);
  const F16 r = __builtin_shufflevector(z, z, 0, 2, 4, 6, 8, 10, 12, 14, 0, 2, 4, 6, 8, 10, 12, 14) +
                __builtin_shufflevector(z, z, 1, 3, 5, 7, 9, 11, 13, 15, 1, 3, 5, 7, 9, 11, 13, 15);
  for (int i = 0; i < 8; ++i) out[i] = r[i];
}

// The largest lane (max is exact, so any order gives it).
inline float reduce_max(F16 v) {
  v = max(v, __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15, 8, 9, 10, 11, 12, 13, 14, 15));
  v = max(v, __builtin_shufflevector(v, v, 4, 5, 6, 7, 4, 5, 6, 7, 4, 5, 6, 7, 4, 5, 6, 7));
  v = max(v, __builtin_shufflevector(v, v, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3));
  v = max(v, __builtin_shufflevector(v, v, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1));
  return v[0];
}

// The smallest lane (min is exact, so any order gives it), for 8 or 16 lanes.
template <typename V>
inline auto reduce_min(V v) {
  auto take_min = [&v](V other) { v = v < other ? v : other; };
  if constexpr (sizeof(V) == 64) {
    take_min(__builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15, 8, 9, 10, 11, 12, 13, 14, 15));
    take_min(__builtin_shufflevector(v, v, 4, 5, 6, 7, 4, 5, 6, 7, 4, 5, 6, 7, 4, 5, 6, 7));
    take_min(__builtin_shufflevector(v, v, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3));
    take_min(__builtin_shufflevector(v, v, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1));
  } else {
    static_assert(sizeof(V) == 32);
    take_min(__builtin_shufflevector(v, v, 4, 5, 6, 7, 4, 5, 6, 7));
    take_min(__builtin_shufflevector(v, v, 2, 3, 2, 3, 2, 3, 2, 3));
    take_min(__builtin_shufflevector(v, v, 1, 1, 1, 1, 1, 1, 1, 1));
  }
  return v[0];
}

// The first `n` (0 < n < lanes) elements at p as a V of 8 or 16 lanes, the other lanes `fill`;
// reads nothing past p + n.
template <typename V, typename T>
inline V load_partial_as(const T* p, int n, T fill) {
  static_assert(sizeof(T) == 4);
  constexpr int kLanes = sizeof(V) / 4;
  V v = V{} + fill;
#if defined(__AVX512F__)
  if constexpr (kLanes == 16) {
    return reinterpret_cast<V>(_mm512_mask_loadu_epi32(reinterpret_cast<__m512i>(v), static_cast<__mmask16>((1u << n) - 1), p));
  }
#elif defined(__AVX2__)
  // Masked loads (masked lanes are not read), the fill blended into the rest.
  const float* pf = reinterpret_cast<const float*>(p);
  auto part = [&](int at) {
    const __m256 m = first_mask(n - at);
    const __m256 f = _mm256_castsi256_ps(_mm256_set1_epi32(std::bit_cast<int32_t>(fill)));
    return _mm256_blendv_ps(f, _mm256_maskload_ps(pf + at, _mm256_castps_si256(m)), m);
  };
  if constexpr (kLanes == 8) {
    return reinterpret_cast<V>(part(0));
  } else {
    return reinterpret_cast<V>(join(part(0), part(8)));
  }
#endif
  for (int l = 0; l < n; ++l) v[l] = p[l];
  return v;
}
template <typename T>
inline auto load_partial(const T* p, int n, T fill) {
  return load_partial_as<decltype(load(p))>(p, n, fill);
}
inline F16 load_partial(const float* p, int n) { return load_partial(p, n, 0.0f); }

// {0, 1, ..., 15}.
inline I16 lane_index() { return I16{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}; }

// Lanes below n from v, the others from other.
inline F16 blend_first(F16 v, int n, F16 other) {
#if defined(__AVX2__) && !defined(__AVX512F__)
  return join(_mm256_blendv_ps(low_half(other), low_half(v), first_mask(n)),
              _mm256_blendv_ps(high_half(other), high_half(v), first_mask(n - 8)));
#else
  return lane_index() < splat(n) ? v : other;
#endif
}

// Lanes below n keep v, the others become zero.
inline F16 keep_first(F16 v, int n) { return blend_first(v, n, F16{}); }

}  // namespace kvp::lanes
