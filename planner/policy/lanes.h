// Sixteen float (or int32) lanes as one value, through the GCC/Clang vector extension: lane-wise
// arithmetic with no reassociation, so a loop written over lanes computes exactly what the same
// loop written per element does, and compiles to whole AVX-512 (or 2 × AVX2, 4 × SSE) registers
// instead of whatever the auto-vectoriser manages.
#pragma once

#include <cstdint>
#include <cstring>

#ifdef __AVX512F__
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
inline F16 max(F16 a, F16 b) { return a > b ? a : b; }

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

// The smallest lane (min is exact, so any order gives it).
template <typename V>
inline auto reduce_min(V v) {
  auto take_min = [&v](V other) { v = v < other ? v : other; };
  take_min(__builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15, 8, 9, 10, 11, 12, 13, 14, 15));
  take_min(__builtin_shufflevector(v, v, 4, 5, 6, 7, 4, 5, 6, 7, 4, 5, 6, 7, 4, 5, 6, 7));
  take_min(__builtin_shufflevector(v, v, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3));
  take_min(__builtin_shufflevector(v, v, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1));
  return v[0];
}

// The first `n` (0 < n < 16) elements at p, the other lanes `fill`; reads nothing past p + n.
template <typename T>
inline auto load_partial(const T* p, int n, T fill) {
  using V = decltype(load(p));
#ifdef __AVX512F__
  static_assert(sizeof(T) == 4);
  return reinterpret_cast<V>(_mm512_mask_loadu_epi32(reinterpret_cast<__m512i>(splat(fill)),
                                                     static_cast<__mmask16>((1u << n) - 1), p));
#else
  V v = splat(fill);
  for (int l = 0; l < n; ++l) v[l] = p[l];
  return v;
#endif
}
inline F16 load_partial(const float* p, int n) { return load_partial(p, n, 0.0f); }

// {0, 1, ..., 15}.
inline I16 lane_index() { return I16{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}; }

// Lanes below n keep v, the others become zero.
inline F16 keep_first(F16 v, int n) { return lane_index() < splat(n) ? v : F16{}; }

}  // namespace kvp::lanes
