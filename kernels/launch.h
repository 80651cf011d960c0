// Host-side launchers of the decoder kernels, one set per execution target with the same
// signatures: kvp::emulated (the kernel bodies on the CPU, kernels/emu) in every build, and
// kvp::cuda (device pointers, default stream) where nvcc exists. Pointers are to the target's
// memory: host memory for emulated, device memory for cuda.
#pragma once

#include <cstdint>

namespace kvp {

struct SlotCacheView {
  float* k;
  float* v;
  float* score;
  float* value_l1;
  const int64_t* offset;
  const int32_t* capacity;
  const int32_t* n_used;
};

#define KVP_DECLARE_LAUNCHERS                                                                                     \
  void embedding(const int32_t* tokens, const float* table, float* out, int rows, int dim, int threads);          \
  void rmsnorm(const float* x, const float* w, float* y, int rows, int n, float eps, int threads);                \
  void rope(float* x, const int32_t* positions, const float* cos_table, const float* sin_table, int rows,         \
            int n_heads, int head_dim, int threads);                                                              \
  void swiglu(float* gate, const float* up, int64_t count, int threads);                                          \
  void argmax(const float* x, int rows, int n, int32_t* out, int threads);                                        \
  void insert(const SlotCacheView& cache, const float* k_new, const float* v_new, const int32_t* slot,           \
              int heads, int head_dim, int threads);                                                              \
  void victim(const float* keys, const int32_t* positions, const int64_t* offset, const int32_t* n_used,           \
              const int32_t* newest, int sinks, int recent, int32_t* victim, int heads, int threads);             \
  void prefill_column_sums(const float* q, const float* k, float* row_max, float* row_sum, float* column_sum,       \
                           int prompt_len, int n_kv_heads, int group, int head_dim, int threads);               \
  /* REQUIRES: prompt_len <= 8192 and budget >= the protected positions. */                                   \
  void prefill_keep(const float* keys, int heads, int prompt_len, int sinks, int recent, int budget,             \
                    int32_t* keep, int threads);                                                                 \
  /* REQUIRES: threads a multiple of 32 (whole warps) for every kernel but swiglu, rope and */             \
  /* embedding; decode_attention: head_dim <= 128 and n_used + 1 <= 64 * threads for every head. */                                                      \
  void decode_attention(const float* q, const SlotCacheView& cache, const float* k_new, const float* v_new,       \
                        float* out, float* self_weight, int heads, int group, int head_dim, int threads);

namespace emulated {
KVP_DECLARE_LAUNCHERS
}  // namespace emulated

namespace cuda {
KVP_DECLARE_LAUNCHERS  // defined only in CUDA builds (KVP_HAVE_CUDA)
}  // namespace cuda

}  // namespace kvp
