// Host-side launchers of the decoder kernels, one set per execution target with the same
// signatures: kvp::emulated (the kernel bodies on the CPU, kernels/emu) in every build, and
// kvp::cuda (device pointers, default stream) where nvcc exists. Pointers are to the target's
// memory: host memory for emulated, device memory for cuda.
#pragma once

#include <cstdint>

#include "kernels/score_rule.h"

namespace kvp {

// The plan-shaped cache as the kernels see it (decoder_kernels.cuh SlotCache): keys and values of
// binary16 when `half`, else float; value_l1 null when the policy keeps no value norms.
struct SlotCacheView {
  void* k;
  void* v;
  bool half;
  int32_t* pos;
  float* score;
  float* value_l1;
  const int64_t* offset;
  const int32_t* capacity;
  const int32_t* n_used;
};

// `rule` is a math::ScoreRule (kernels/kernel_math.h); `per_query_key` selects VATP's base-mean key.
#define KVP_DECLARE_LAUNCHERS                                                                                     \
  void embedding(const int32_t* tokens, const float* table, float* out, int rows, int dim, int threads);          \
  void rmsnorm(const float* x, const float* w, float* y, int rows, int n, float eps, int threads);                \
  void rope(float* x, const int32_t* positions, const float* cos_table, const float* sin_table, int rows,         \
            int n_heads, int head_dim, int threads);                                                              \
  void swiglu(float* gate, const float* up, int64_t count, int threads);                                          \
  void argmax(const float* x, int rows, int n, int32_t* out, int threads);                                        \
  /* executor/sampler.h's rule per row, drawn with uniform[row]; argmax when temperature is 0. */              \
  /* probs: workspace [rows, n]. */                                                                            \
  void sample(const float* logits, int rows, int n, float temperature, float top_p, const float* uniform,        \
              float* probs, int32_t* out, int threads);                                                           \
  void to_half(const float* x, void* out, int64_t count, int threads);                                            \
  void insert(const SlotCacheView& cache, const float* k_new, const float* v_new, const int32_t* slot,           \
              const int32_t* position, const float* self_weight, const math::ScoreArgs& score_args,              \
              int n_kv_heads, int heads, int head_dim, int threads);                                              \
  void place(const float* score, const int32_t* positions, const int64_t* offset, const int32_t* capacity,       \
             const int32_t* n_used, const int32_t* newest, int sinks, int recent, int per_query_key,             \
             int shared, int32_t* slot, int32_t* evicted_pos, float* evicted_key, int heads, int threads);       \
  void prefill_column_sums(const float* q, const float* k, float* row_max, float* row_sum, float* column_sum,       \
                           int prompt_len, int n_kv_heads, int group, int head_dim, int threads);               \
  /* Outputs of every prompt row, and when column_sum is not null each key's attention from the rows */      \
  /* >= first_row at or after it (own_row) or after it. */                                                    \
  void prefill_attention(const float* q, const float* k, const float* v, float* row_max, float* row_sum,         \
                         float* out, float* column_sum, int first_row, int own_row, int prompt_len,               \
                         int n_kv_heads, int group, int head_dim, int threads);                                   \
  void prefill_scores(const float* k, const float* v, const float* column_sum, float* score, float* value_l1,   \
                      float* key, int prompt_len, int n_kv_heads, int head_dim, const math::ScoreArgs& score_args, \
                      int threads);                                                                               \
  /* out[j] = sum over the rows of x [rows, n] in row order. */                                                \
  void sum_rows(const float* x, int rows, int n, float* out, int threads);                                       \
  /* REQUIRES: prompt_len <= 8192 and budget >= the protected positions. */                                   \
  void prefill_keep(const float* keys, int heads, int prompt_len, int sinks, int recent, int budget,             \
                    int32_t* keep, int threads);                                                                 \
  void prefill_gather(const SlotCacheView& cache, const float* k, const float* v, const float* score,            \
                      const float* value_l1, const int32_t* keep, int keep_stride, int prompt_len,              \
                      int n_kv_heads, int head_dim, int threads);                                                \
  /* REQUIRES: threads a multiple of 32 (whole warps) for every kernel but swiglu, rope, to_half and */      \
  /* embedding; decode_attention: head_dim <= 128, group <= 8, and `weights` a workspace of */                \
  /* [heads, group, weights_stride] floats with weights_stride > every head's n_used. */                        \
  void decode_attention(const float* q, const SlotCacheView& cache, const float* k_new, const float* v_new,       \
                        float* out, float* self_weight, float* weights, int weights_stride, int rule, int heads,  \
                        int group, int head_dim, int threads);

namespace emulated {
KVP_DECLARE_LAUNCHERS
}  // namespace emulated

namespace cuda {
KVP_DECLARE_LAUNCHERS  // defined only in CUDA builds (KVP_HAVE_CUDA)
}  // namespace cuda

// One target's launchers as a table, so code compiled once can drive either.
struct Launchers {
#define KVP_LAUNCHER_FIELD(name) decltype(&emulated::name) name;
  KVP_LAUNCHER_FIELD(embedding) KVP_LAUNCHER_FIELD(rmsnorm) KVP_LAUNCHER_FIELD(rope) KVP_LAUNCHER_FIELD(swiglu)
  KVP_LAUNCHER_FIELD(argmax) KVP_LAUNCHER_FIELD(sample) KVP_LAUNCHER_FIELD(to_half) KVP_LAUNCHER_FIELD(insert) KVP_LAUNCHER_FIELD(place)
  KVP_LAUNCHER_FIELD(prefill_attention) KVP_LAUNCHER_FIELD(prefill_scores) KVP_LAUNCHER_FIELD(sum_rows)
  KVP_LAUNCHER_FIELD(prefill_keep)
  KVP_LAUNCHER_FIELD(prefill_gather) KVP_LAUNCHER_FIELD(decode_attention)
#undef KVP_LAUNCHER_FIELD
};

namespace emulated {
extern const Launchers kLaunchers;
}  // namespace emulated
namespace cuda {
extern const Launchers kLaunchers;  // defined only in CUDA builds (KVP_HAVE_CUDA)
}  // namespace cuda

}  // namespace kvp
