// How a policy scores a cached token (planner/policy), as the kernels apply it: the score a token
// enters with and whether the attention it receives is added to it. Kept free of CUDA headers so
// host code may name the rules; the policies' own scores that need no attention (knorm, random)
// are defined here once, for the CPU policies and the kernels alike.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define KVP_SCORE_HD __host__ __device__
#else
#define KVP_SCORE_HD
#endif

namespace kvp::math {

// kScoreZero: full; kScorePosition: window (the oldest goes first); kScoreAttention: h2o
// (accumulated attention); kScoreValueAttention: vatp (accumulated attention times the value's L1
// norm); kScoreKeyNorm: knorm (minus the key's L2 norm); kScoreRandom: random (a hash of the seed
// and the token's layer, head and position); kScoreLastAttention: tova (the latest query's
// attention, replacing the score; one kept set per layer); kScoreWindowAttention: snapkv (the
// attention of the prompt's last snap_window queries, max-pooled over snap_kernel positions;
// tokens generated later enter at -1 and gain nothing).
enum ScoreRule : int {
  kScoreZero = 0,
  kScorePosition = 1,
  kScoreAttention = 2,
  kScoreValueAttention = 3,
  kScoreKeyNorm = 4,
  kScoreRandom = 5,
  kScoreLastAttention = 6,
  kScoreWindowAttention = 7,
};

// A rule and what it needs besides the token itself, as the kernels take it.
struct ScoreArgs {
  int rule = kScoreZero;
  int per_query_key = 0;  // VATP base mean: eviction key = score / queries seen
  uint64_t seed = 0;      // kScoreRandom
  int layer_idx = 0;      // kScoreRandom
  int snap_window = 0;    // kScoreWindowAttention: the prompt's last queries that count
  int snap_kernel = 0;    // kScoreWindowAttention: max-pool width
};

// Whether decode adds each slot's attention to its score (tova sets it instead).
KVP_SCORE_HD inline bool accumulates_attention(int rule) {
  return rule == kScoreAttention || rule == kScoreValueAttention;
}
// Whether the prefill scores prompt tokens by attention, and which queries count: rows from
// first_row on, a token's own row included or not (the CPU policies' observe and init_slot).
KVP_SCORE_HD inline bool prefill_uses_attention(int rule) {
  return accumulates_attention(rule) || rule == kScoreLastAttention || rule == kScoreWindowAttention;
}
KVP_SCORE_HD inline int prefill_first_row(const ScoreArgs& a, int prompt_len) {
  if (a.rule == kScoreLastAttention) return prompt_len - 1;
  if (a.rule == kScoreWindowAttention) return prompt_len - a.snap_window > 0 ? prompt_len - a.snap_window : 0;
  return 0;
}
KVP_SCORE_HD inline bool prefill_counts_own_row(int rule) { return rule != kScoreWindowAttention; }

KVP_SCORE_HD inline uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// knorm: the token with the largest key norm goes first. Summed in order d = 0, 1, ...
KVP_SCORE_HD inline float key_norm_score(const float* key, int head_dim) {
  float ss = 0.0f;
  for (int d = 0; d < head_dim; ++d) ss += key[d] * key[d];
  return -sqrtf(ss);
}

// random: uniform in [0, 1) from (seed, layer, KV head, position), so every run of a plan — replay,
// CPU executor, GPU — evicts the same tokens.
KVP_SCORE_HD inline float random_score(uint64_t seed, int layer_idx, int kv_head_idx, int32_t pos) {
  const uint64_t h = splitmix64(seed ^ splitmix64((uint64_t(layer_idx) << 48) ^ (uint64_t(kv_head_idx) << 32) ^
                                                  uint64_t(uint32_t(pos))));
  return static_cast<float>(h >> 40) * 0x1.0p-24f;
}

}  // namespace kvp::math
