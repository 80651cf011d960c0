// Per-element math of the decoder kernels, one definition for the GPU kernels, their CPU emulation
// and the plain C++ references (kernels/reference.h).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "kernels/gpu_compat.h"
#include "kernels/score_rule.h"

namespace kvp::math {

KVP_HD inline float inv_rms(float sum_sq, int n, float eps) { return 1.0f / sqrtf(sum_sq / static_cast<float>(n) + eps); }
KVP_HD inline float rmsnorm_element(float x, float w, float inv) { return w * (inv * x); }
KVP_HD inline void rotate_pair(float& v0, float& v1, float c, float s) {
  const float a = v0, b = v1;
  v0 = a * c - b * s;
  v1 = a * s + b * c;
}
// An IEEE binary16 bit pattern as float, exactly (q8_0 block scales are stored this way).
KVP_HD inline float half_bits_to_float(uint32_t h) {
  const uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu, bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      int e = -1;
      do {
        ++e;
        mant <<= 1;
      } while ((mant & 0x400u) == 0);
      bits = sign | static_cast<uint32_t>(127 - 15 - e) << 23 | (mant & 0x3ffu) << 13;
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | mant << 13;
  } else {
    bits = sign | (exp + 127 - 15) << 23 | mant << 13;
  }
  float f;
  memcpy(&f, &bits, 4);
  return f;
}
KVP_HD inline float swiglu(float gate, float up) { return gate / (1.0f + expf(-gate)) * up; }
// Argmax order: the larger value, then the lower index.
KVP_HD inline bool better(float v, int i, float best, int best_i) { return v > best || (v == best && i < best_i); }
// Eviction order: the lower key first, then the older position (the CPU executor's rule). With
// best_key = +inf and best_pos = INT32_MAX as "none yet", an open slot whose key is +inf is still
// taken by the older-position rule, so the oldest open slot wins when every key is +inf.
KVP_HD inline bool evict_before(float key, int32_t pos, float best_key, int32_t best_pos) {
  return key < best_key || (key == best_key && pos < best_pos);
}
// The same bits as another type (a non-negative float's bits order as the floats do).
template <typename To, typename From>
KVP_HD inline To same_bits(From x) {
  static_assert(sizeof(To) == sizeof(From));
  To y;
  memcpy(&y, &x, sizeof y);
  return y;
}
KVP_HD inline float attention_scale(int head_dim) { return 1.0f / sqrtf(static_cast<float>(head_dim)); }


// The score a token of KV head `kv_head_idx` enters the cache with: `attention` is what it received
// at its own step (its self weight in decode, its column sum over the prompt in prefill, `in_prompt`);
// `key` its key, [head_dim]. (snapkv's prompt scores are then max-pooled, prefill_scores_kernel.)
KVP_HD inline float initial_score(const ScoreArgs& a, int kv_head_idx, int32_t pos, float attention, float value_l1,
                                  const float* key, int head_dim, bool in_prompt) {
  switch (a.rule) {
    case kScorePosition: return static_cast<float>(pos);
    case kScoreAttention:
    case kScoreLastAttention: return attention;
    case kScoreWindowAttention: return in_prompt ? attention : -1.0f;
    case kScoreValueAttention: return attention * value_l1;
    case kScoreKeyNorm: return key_norm_score(key, head_dim);
    case kScoreRandom: return random_score(a.seed, a.layer_idx, kv_head_idx, pos);
    default: return 0.0f;
  }
}
// The eviction key of a slot: its score, or with `per_query` (VATP base mean) its score divided by
// the number of queries that have seen it, positions pos..newest.
KVP_HD inline float eviction_key(float score, int32_t pos, int32_t newest, int per_query) {
  return per_query ? score / static_cast<float>(newest - pos + 1) : score;
}

}  // namespace kvp::math
