// The decoder's kernels, written once for nvcc and for the CPU emulation (kernels/gpu_compat.h).
// Include with KVP_KERNEL_NS defined (cuda or emulated) so both builds can link into one binary.
// Per-element math lives in the KVP_HD functions of kernels/kernel_math.h, shared with the plain
// C++ references in kernels/reference.h. Float32 activations; one block per row unless stated.
#ifndef KVP_KERNEL_NS
#error "define KVP_KERNEL_NS before including kernels/decoder_kernels.cuh"
#endif

#include <cstdint>

#include "kernels/compressed_layout.h"
#include "kernels/gpu_compat.h"
#include "kernels/kernel_math.h"

namespace kvp::KVP_KERNEL_NS {

inline constexpr int kMaxBlockThreads = 1024;
inline constexpr int kMaxHeadDim = 128;

// Combines every thread's value with `op` (sum or max) over the block — the same order for a given
// block size — and gives every thread the result.
// REQUIRES: blockDim.x a multiple of 32 (or below 32), every thread of the block calls it.
template <typename Op>
KVP_DEVICE inline float block_reduce(float v, Op op) {
  KVP_SHARED float partial[kMaxBlockThreads / 32];
  KVP_SHARED float total;
  for (int m = 16; m >= 1; m /= 2) v = op(v, gpu::shfl_xor(v, m));
  const int lane = static_cast<int>(threadIdx.x) % 32, warp = static_cast<int>(threadIdx.x) / 32;
  const int warps = (static_cast<int>(blockDim.x) + 31) / 32;
  if (lane == 0) partial[warp] = v;
  gpu::sync_threads();
  if (threadIdx.x == 0) {
    float t = partial[0];
    for (int w = 1; w < warps; ++w) t = op(t, partial[w]);
    total = t;
  }
  gpu::sync_threads();
  const float out = total;
  gpu::sync_threads();  // `total` may be reused by the next call
  return out;
}

struct Add {
  KVP_HD float operator()(float a, float b) const { return a + b; }
};
struct Max {
  KVP_HD float operator()(float a, float b) const { return fmaxf(a, b); }
};

KVP_DEVICE inline float block_sum(float v) { return block_reduce(v, Add{}); }
KVP_DEVICE inline float block_max(float v) { return block_reduce(v, Max{}); }

// out[r, :] = table[tokens[r], :]
KVP_GLOBAL void embedding_kernel(const int32_t* tokens, const float* table, float* out, int dim) {
  const int r = static_cast<int>(blockIdx.x);
  const float* src = table + static_cast<int64_t>(tokens[r]) * dim;
  for (int i = static_cast<int>(threadIdx.x); i < dim; i += static_cast<int>(blockDim.x)) {
    out[static_cast<int64_t>(r) * dim + i] = src[i];
  }
}

// y[r] = w * x[r] / rms(x[r])
KVP_GLOBAL void rmsnorm_kernel(const float* x, const float* w, float* y, int n, float eps) {
  const int64_t base = static_cast<int64_t>(blockIdx.x) * n;
  float ss = 0;
  for (int i = static_cast<int>(threadIdx.x); i < n; i += static_cast<int>(blockDim.x)) ss += x[base + i] * x[base + i];
  const float inv = math::inv_rms(block_sum(ss), n, eps);
  for (int i = static_cast<int>(threadIdx.x); i < n; i += static_cast<int>(blockDim.x)) {
    y[base + i] = math::rmsnorm_element(x[base + i], w[i], inv);
  }
}

// Rotates each head's pairs (2i, 2i+1) of row r by its position's angles (tables [seq_len, hd/2]).
KVP_GLOBAL void rope_kernel(float* x, const int32_t* positions, const float* cos_table, const float* sin_table,
                            int n_heads, int head_dim) {
  const int r = static_cast<int>(blockIdx.x), half = head_dim / 2;
  const float* c = cos_table + static_cast<int64_t>(positions[r]) * half;
  const float* s = sin_table + static_cast<int64_t>(positions[r]) * half;
  float* row = x + static_cast<int64_t>(r) * n_heads * head_dim;
  for (int p = static_cast<int>(threadIdx.x); p < n_heads * half; p += static_cast<int>(blockDim.x)) {
    const int h = p / half, i = p % half;
    float* v = row + h * head_dim + 2 * i;
    math::rotate_pair(v[0], v[1], c[i], s[i]);
  }
}

// gate[i] = silu(gate[i]) * up[i] over `count` elements (a 1-D grid).
KVP_GLOBAL void swiglu_kernel(float* gate, const float* up, int64_t count) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < count) gate[i] = math::swiglu(gate[i], up[i]);
}

// out[r] = the index of row r's largest value (the lowest such index on ties).
KVP_GLOBAL void argmax_kernel(const float* x, int n, int32_t* out) {
  const int64_t base = static_cast<int64_t>(blockIdx.x) * n;
  float best = -INFINITY;
  int idx = n;  // none yet
  for (int i = static_cast<int>(threadIdx.x); i < n; i += static_cast<int>(blockDim.x)) {
    if (math::better(x[base + i], i, best, idx)) best = x[base + i], idx = i;
  }
  for (int m = 16; m >= 1; m /= 2) {
    const float ob = gpu::shfl_xor(best, m);
    const int oi = gpu::shfl_xor(idx, m);
    if (math::better(ob, oi, best, idx)) best = ob, idx = oi;
  }
  KVP_SHARED float wb[kMaxBlockThreads / 32];
  KVP_SHARED int wi[kMaxBlockThreads / 32];
  const int lane = static_cast<int>(threadIdx.x) % 32, warp = static_cast<int>(threadIdx.x) / 32;
  if (lane == 0) wb[warp] = best, wi[warp] = idx;
  gpu::sync_threads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < (static_cast<int>(blockDim.x) + 31) / 32; ++w) {
      if (math::better(wb[w], wi[w], best, idx)) best = wb[w], idx = wi[w];
    }
    out[blockIdx.x] = idx < n ? idx : 0;
  }
}

// The plan-shaped cache: per (row, KV head) a run of `capacity` slots, keys and values (of type T:
// float or gpu::half) transposed ([head_dim, capacity]), positions, scores and value L1 norms (null
// when the policy keeps none).
template <typename T>
struct SlotCache {
  T* k;
  T* v;
  int32_t* pos;
  float* score;
  float* value_l1;
  const int64_t* offset;    // [rows * n_kv_heads] first slot of each head (its keys at offset * head_dim)
  const int32_t* capacity;  // [rows * n_kv_heads]
  const int32_t* n_used;    // [rows * n_kv_heads]
  // A compressed cache (kernels/compressed_layout.h): each head's keys and values in its block at
  // blocks + block[head]; k and v unused. Null: dense.
  uint8_t* blocks;
  const int64_t* block;
  CompressedShape shape;
  const int32_t* newest;  // decode: [rows * n_kv_heads] the entry's newest position
};

// The new token's metadata in slot j of entry rh: position, value L1 norm (from the dense value,
// computed once, here) and initial score under `score_args` (math::initial_score of its self
// weight). Block-wide: every thread of the block calls it.
template <typename T>
KVP_DEVICE inline void insert_metadata(const SlotCache<T>& cache, int rh, int j, const float* k_new, const float* v_new,
                                       const int32_t* position, const float* self_weight,
                                       const math::ScoreArgs& score_args, int n_kv_heads, int head_dim) {
  const int64_t off = cache.offset[rh];
  float l1 = 0;
  for (int d = static_cast<int>(threadIdx.x); d < head_dim; d += static_cast<int>(blockDim.x)) {
    l1 += fabsf(v_new[static_cast<int64_t>(rh) * head_dim + d]);
  }
  l1 = block_sum(l1);
  if (threadIdx.x == 0) {
    if (cache.value_l1) cache.value_l1[off + j] = l1;
    cache.pos[off + j] = position[rh];
    cache.score[off + j] = math::initial_score(score_args, rh % n_kv_heads, position[rh],
                                               self_weight ? self_weight[rh] : 0.0f, l1,
                                               k_new + static_cast<int64_t>(rh) * head_dim, head_dim, false);
  }
}

// Writes the new token of each (row, KV head) into slot[row * n_kv_heads + h] (skipped when -1) with
// its metadata (insert_metadata). One block per (row, KV head), threads over head_dim.
template <typename T>
KVP_GLOBAL void insert_kernel(SlotCache<T> cache, const float* k_new, const float* v_new, const int32_t* slot,
                              const int32_t* position, const float* self_weight, math::ScoreArgs score_args,
                              int n_kv_heads, int head_dim) {
  const int rh = static_cast<int>(blockIdx.x);
  const int j = slot[rh];
  if (j < 0) return;  // the whole block
  const int cap = cache.capacity[rh];
  const int64_t koff = cache.offset[rh] * head_dim;  // keys and values: head_dim elements per slot
  for (int d = static_cast<int>(threadIdx.x); d < head_dim; d += static_cast<int>(blockDim.x)) {
    cache.k[koff + static_cast<int64_t>(d) * cap + j] = gpu::from_float<T>(k_new[static_cast<int64_t>(rh) * head_dim + d]);
    cache.v[koff + static_cast<int64_t>(d) * cap + j] = gpu::from_float<T>(v_new[static_cast<int64_t>(rh) * head_dim + d]);
  }
  insert_metadata(cache, rh, j, k_new, v_new, position, self_weight, score_args, n_kv_heads, head_dim);
}

// Where the new token of each head goes (one block per head): slot n_used while there is room,
// else the victim's — among slots whose position is neither a sink (< sinks) nor recent
// (> newest − recent), the lowest eviction key (math::eviction_key), the older position on ties;
// when every such key is +inf, the oldest such slot; -1 when there is none. The same rule as the
// CPU executor's choose_victim (planner/policy/policy.cc), so both evict the same token. Writes the
// slot, and the evicted position and key (-1 and 0 when a free slot was taken).
KVP_GLOBAL void place_kernel(const float* score, const int32_t* positions, const int64_t* offset,
                             const int32_t* capacity, const int32_t* n_used, const int32_t* newest, int sinks,
                             int recent, int per_query_key, int shared, int32_t* slot, int32_t* evicted_pos,
                             float* evicted_key) {
  const int h = static_cast<int>(blockIdx.x) * shared;  // the block's first head
  const int64_t off = offset[h];
  const int n = n_used[h];
  if (n < capacity[h]) {
    for (int e = static_cast<int>(threadIdx.x); e < shared; e += static_cast<int>(blockDim.x)) {
      slot[h + e] = n, evicted_pos[h + e] = -1, evicted_key[h + e] = 0.0f;
    }
    return;  // the whole block
  }
  // A shared set (shared > 1 heads holding the same positions in the same slots): a slot's key is
  // the sum of the heads' keys, in head order.
  auto key_of = [&](int j, int32_t p) {
    if (shared == 1) return math::eviction_key(score[off + j], p, newest[h], per_query_key);
    float sum = 0.0f;
    for (int e = 0; e < shared; ++e) sum += math::eviction_key(score[offset[h + e] + j], p, newest[h], per_query_key);
    return sum;
  };
  const int32_t first = sinks, last = newest[h] - recent;
  float best_key = INFINITY;
  int32_t best_pos = 2147483647, best_slot = -1;
  auto take = [&](float k, int32_t p, int32_t j) {
    if (math::evict_before(k, p, best_key, best_pos)) best_key = k, best_pos = p, best_slot = j;
  };
  for (int j = static_cast<int>(threadIdx.x); j < n; j += static_cast<int>(blockDim.x)) {
    const int32_t p = positions[off + j];
    if (p >= first && p <= last) take(key_of(j, p), p, j);
  }
  for (int m = 16; m >= 1; m /= 2) {
    const float k = gpu::shfl_xor(best_key, m);
    const int32_t p = gpu::shfl_xor(best_pos, m);
    const int32_t j = gpu::shfl_xor(best_slot, m);
    take(k, p, j);
  }
  KVP_SHARED float wk[kMaxBlockThreads / 32];
  KVP_SHARED int32_t wp[kMaxBlockThreads / 32], wj[kMaxBlockThreads / 32];
  const int lane = static_cast<int>(threadIdx.x) % 32, warp = static_cast<int>(threadIdx.x) / 32;
  if (lane == 0) wk[warp] = best_key, wp[warp] = best_pos, wj[warp] = best_slot;
  gpu::sync_threads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < (static_cast<int>(blockDim.x) + 31) / 32; ++w) take(wk[w], wp[w], wj[w]);
    for (int e = 0; e < shared; ++e) {  // each head's own key of the victim, as the CPU logs it
      slot[h + e] = best_slot;
      evicted_pos[h + e] = best_slot < 0 ? -1 : best_pos;
      evicted_key[h + e] =
          best_slot < 0 ? 0.0f : math::eviction_key(score[offset[h + e] + best_slot], best_pos, newest[h], per_query_key);
    }
  }
  gpu::sync_threads();  // the shared arrays may be reused by the next block
}

// Prefill, step 1 of 2: causal softmax statistics of each prompt query. One block per (query row i,
// launched KV head); q [P, n_kv_heads, group, head_dim], key row j of launched head hl at
// k + j * k_row + hl * head_dim (launch.h PrefillRows). Writes, per (i, h, g), the largest logit and
// Σ exp(logit − max) over key rows 0..i.
KVP_GLOBAL void prefill_stats_kernel(const float* q, const float* k, float* row_max, float* row_sum, int n_kv_heads,
                                     int group, int head_dim, int first_query, int first_head, int64_t k_row) {
  const int r = static_cast<int>(blockIdx.x), i = first_query + r, hl = static_cast<int>(blockIdx.y);
  const int h = first_head + hl;
  const float scale = math::attention_scale(head_dim);
  for (int g = 0; g < group; ++g) {
    const float* qg = q + ((static_cast<int64_t>(r) * n_kv_heads + h) * group + g) * head_dim;
    auto logit = [&](int j) {
      const float* kj = k + j * k_row + static_cast<int64_t>(hl) * head_dim;
      float dot = 0;
      for (int d = 0; d < head_dim; ++d) dot += qg[d] * kj[d];
      return dot * scale;
    };
    float m = -INFINITY;
    for (int j = static_cast<int>(threadIdx.x); j <= i; j += static_cast<int>(blockDim.x)) m = fmaxf(m, logit(j));
    m = block_max(m);
    float z = 0;
    for (int j = static_cast<int>(threadIdx.x); j <= i; j += static_cast<int>(blockDim.x)) z += expf(logit(j) - m);
    z = block_sum(z);
    if (threadIdx.x == 0) {
      const int64_t at = (static_cast<int64_t>(r) * n_kv_heads + h) * group + g;
      row_max[at] = m, row_sum[at] = z;
    }
  }
}

// Prefill, step 2 of 2: each prompt key's accumulated attention, Σ over the group's softmax weights
// of the queries i >= first_row that come at or after it (i >= j, or i > j without its own row) —
// the H2O/VATP prefill score (every row), TOVA's (the last row), SnapKV's (its observation window)
// — without writing the P × P matrix. One block per (key column j, KV head h); the queries are
// summed in a fixed order (per thread, then the block's tree), so the result does not depend on
// timing. Keys before first_query add the sum to theirs, or with `replace` take it alone.
KVP_GLOBAL void prefill_column_sums_kernel(const float* q, const float* k, const float* row_max, const float* row_sum,
                                           float* column_sum, int prompt_len, int n_kv_heads, int group, int head_dim,
                                           int first_row, int own_row, int first_query, int column_stride,
                                           int first_head, int64_t k_row, int replace) {
  const int j = static_cast<int>(blockIdx.x), hl = static_cast<int>(blockIdx.y), h = first_head + hl;
  const float scale = math::attention_scale(head_dim);
  const float* kj = k + j * k_row + static_cast<int64_t>(hl) * head_dim;
  float part = 0;
  int from = own_row ? j : j + 1;
  from = from > first_row ? from : first_row;
  from = from > first_query ? from : first_query;
  for (int i = from + static_cast<int>(threadIdx.x); i < prompt_len; i += static_cast<int>(blockDim.x)) {
    for (int g = 0; g < group; ++g) {
      const int64_t at = (static_cast<int64_t>(i - first_query) * n_kv_heads + h) * group + g;
      const float* qg = q + at * head_dim;
      float dot = 0;
      for (int d = 0; d < head_dim; ++d) dot += qg[d] * kj[d];
      part += expf(dot * scale - row_max[at]) / row_sum[at];
    }
  }
  const float total = block_sum(part);
  if (threadIdx.x == 0) {
    float& sum = column_sum[static_cast<int64_t>(hl) * column_stride + j];
    sum = j < first_query && !replace ? sum + total : total;
  }
}

// The prompt positions each head keeps (one block per head): every protected position (sinks and
// the recent window of the last prompt position) and, of the rest, the highest keys — the newer
// position first on ties — up to `budget`, in position order (keep[h * budget + slot]; -1 pads).
// The CPU executor's select_prefill_kept, by ranks: a candidate is kept when fewer than the free
// slots outrank it. O(P²) comparisons per head, no sort.
// out[j] = Σ_r x[r, j] over `rows` rows of n, summed in row order (the CPU's shared-set keys: the
// layer's heads' keys per slot). A 1-D grid over j.
KVP_GLOBAL void sum_rows_kernel(const float* x, int rows, int n, float* out) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= n) return;
  float s = 0.0f;
  for (int r = 0; r < rows; ++r) s += x[static_cast<int64_t>(r) * n + j];
  out[j] = s;
}

KVP_GLOBAL void prefill_keep_kernel(const float* keys, int prompt_len, int sinks, int recent, int budget,
                                    int32_t* keep) {
  const int h = static_cast<int>(blockIdx.x);
  const float* key = keys + static_cast<int64_t>(h) * prompt_len;
  const int newest = prompt_len - 1;
  auto protected_pos = [&](int p) { return p < sinks || p > newest - recent; };
  int n_protected = 0;
  for (int p = 0; p < prompt_len; ++p) n_protected += protected_pos(p) ? 1 : 0;
  const int free_slots = budget - n_protected;
  KVP_SHARED int32_t kept_flag[8192];
  for (int j = static_cast<int>(threadIdx.x); j < prompt_len; j += static_cast<int>(blockDim.x)) {
    int flag = 1;
    if (prompt_len > budget && !protected_pos(j)) {
      int rank = 0;
      for (int c = 0; c < prompt_len; ++c) {
        if (c != j && !protected_pos(c) && (key[c] > key[j] || (key[c] == key[j] && c > j))) ++rank;
      }
      flag = rank < free_slots ? 1 : 0;
    }
    kept_flag[j] = flag;
  }
  gpu::sync_threads();
  if (threadIdx.x == 0) {
    int slot = 0;
    for (int p = 0; p < prompt_len && slot < budget; ++p) {
      if (kept_flag[p]) keep[static_cast<int64_t>(h) * budget + slot++] = p;
    }
    while (slot < budget) keep[static_cast<int64_t>(h) * budget + slot++] = -1;
  }
  gpu::sync_threads();
}

// Prefill attention outputs (with the statistics of prefill_stats_kernel): out[i, h, g] = Σ_{j ≤ i}
// softmax weight · v_j. One block per (query row i, launched KV head); threads stride over keys, each
// keeps a partial output that the block sums per element. v laid out as k.
KVP_GLOBAL void prefill_attention_kernel(const float* q, const float* k, const float* v, const float* row_max,
                                         const float* row_sum, float* out, int n_kv_heads, int group, int head_dim,
                                         int first_query, int first_head, int64_t k_row) {
  const int r = static_cast<int>(blockIdx.x), i = first_query + r, hl = static_cast<int>(blockIdx.y);
  const int h = first_head + hl;
  const float scale = math::attention_scale(head_dim);
  for (int g = 0; g < group; ++g) {
    const int64_t at = (static_cast<int64_t>(r) * n_kv_heads + h) * group + g;
    const float* qg = q + at * head_dim;
    float part[kMaxHeadDim];
    for (int d = 0; d < head_dim; ++d) part[d] = 0;
    for (int j = static_cast<int>(threadIdx.x); j <= i; j += static_cast<int>(blockDim.x)) {
      const float* kj = k + j * k_row + static_cast<int64_t>(hl) * head_dim;
      const float* vj = v + j * k_row + static_cast<int64_t>(hl) * head_dim;
      float dot = 0;
      for (int d = 0; d < head_dim; ++d) dot += qg[d] * kj[d];
      const float w = expf(dot * scale - row_max[at]) / row_sum[at];
      for (int d = 0; d < head_dim; ++d) part[d] += w * vj[d];
    }
    for (int d = 0; d < head_dim; ++d) {
      const float o = block_sum(part[d]);
      if (threadIdx.x == 0) out[at * head_dim + d] = o;
    }
  }
}

// Each prompt token's value L1 norm, score under `rule` (from its accumulated attention
// column_sum[hl, j], null when the rule needs none) and eviction key at the prompt's newest row.
// One block per (key row j, launched KV head hl); outputs [heads, P]; column sums and positions
// [heads, column_stride]. snap_kernel 0 pools nothing (--prefill-evict's cuts before the last).
KVP_GLOBAL void prefill_scores_kernel(const float* k, const float* v, const float* column_sum, float* score,
                                      float* value_l1, float* key, int prompt_len, int head_dim,
                                      math::ScoreArgs score_args, int first_head, int64_t k_row,
                                      const int32_t* positions, int column_stride) {
  const int j = static_cast<int>(blockIdx.x), hl = static_cast<int>(blockIdx.y), h = first_head + hl;
  const float* vj = v + j * k_row + static_cast<int64_t>(hl) * head_dim;
  const float* kj = k + j * k_row + static_cast<int64_t>(hl) * head_dim;
  float l1 = 0;
  for (int d = static_cast<int>(threadIdx.x); d < head_dim; d += static_cast<int>(blockDim.x)) l1 += fabsf(vj[d]);
  l1 = block_sum(l1);
  if (threadIdx.x == 0) {
    const int64_t at = static_cast<int64_t>(hl) * prompt_len + j;
    const float* sums = column_sum ? column_sum + static_cast<int64_t>(hl) * column_stride : nullptr;
    const int32_t* pos = positions ? positions + static_cast<int64_t>(hl) * column_stride : nullptr;
    const int32_t pj = pos ? pos[j] : j, newest = pos ? pos[prompt_len - 1] : prompt_len - 1;
    float s = math::initial_score(score_args, h, pj, sums ? sums[j] : 0.0f, l1, kj, head_dim, true);
    if (score_args.rule == math::kScoreWindowAttention) {  // max-pooled over its neighbours' sums
      const int half = score_args.snap_kernel / 2 > 0 ? score_args.snap_kernel / 2 : 0;
      for (int c = j - half > 0 ? j - half : 0; c <= j + half && c < prompt_len; ++c) s = fmaxf(s, sums[c]);
    }
    score[at] = s;
    value_l1[at] = l1;
    key[at] = math::eviction_key(s, pj, newest, score_args.per_query_key);
  }
}

// Writes the kept prompt positions of each KV head (keep[h * keep_stride + slot], -1 for none) into
// its cache slots: key and value transposed, position, score and value norm. One block per launched
// head (cache.offset and capacity per launched head), threads over the slot's elements; key rows as
// in prefill_stats_kernel, positions [heads, column_stride] (null: the row).
template <typename T>
KVP_GLOBAL void prefill_gather_kernel(SlotCache<T> cache, const float* k, const float* v, const float* score,
                                      const float* value_l1, const int32_t* keep, int keep_stride, int prompt_len,
                                      int head_dim, int64_t k_row, const int32_t* positions, int column_stride) {
  const int h = static_cast<int>(blockIdx.x);
  const int64_t off = cache.offset[h];
  const int cap = cache.capacity[h];
  const int64_t koff = off * head_dim;
  const int n_keep = cap < keep_stride ? cap : keep_stride;
  for (int e = static_cast<int>(threadIdx.x); e < n_keep * head_dim; e += static_cast<int>(blockDim.x)) {
    const int s = e / head_dim, d = e % head_dim;
    const int32_t p = keep[static_cast<int64_t>(h) * keep_stride + s];
    if (p < 0) continue;
    const int64_t src = p * k_row + static_cast<int64_t>(h) * head_dim + d;
    cache.k[koff + static_cast<int64_t>(d) * cap + s] = gpu::from_float<T>(k[src]);
    cache.v[koff + static_cast<int64_t>(d) * cap + s] = gpu::from_float<T>(v[src]);
    if (d == 0) {
      const int64_t at = static_cast<int64_t>(h) * prompt_len + p;
      cache.pos[off + s] = positions ? positions[static_cast<int64_t>(h) * column_stride + p] : p;
      cache.score[off + s] = score[at];
      if (cache.value_l1) cache.value_l1[off + s] = value_l1[at];
    }
  }
}

// dst[r * dst_stride + e] = src[r * src_stride + e]: one block per row, threads over its elements.
KVP_GLOBAL void copy_rows_kernel(const float* src, int64_t src_stride, float* dst, int64_t dst_stride, int width) {
  const int64_t r = blockIdx.x;
  for (int e = static_cast<int>(threadIdx.x); e < width; e += static_cast<int>(blockDim.x)) {
    dst[r * dst_stride + e] = src[r * src_stride + e];
  }
}

// A cut in place of one head's prompt scratch (rows of head_dim keys and values, positions, column
// sums): row keep[s] moves to row s for s < n_keep, in increasing s. keep is increasing, so
// keep[s] >= s and the source row is not yet overwritten; one block, a barrier per row.
KVP_GLOBAL void prefill_compact_kernel(float* k, float* v, int32_t* positions, float* column_sum, const int32_t* keep,
                                       int n_keep, int head_dim) {
  for (int s = 0; s < n_keep; ++s) {
    const int64_t p = keep[s];
    if (p != s) {
      for (int d = static_cast<int>(threadIdx.x); d < head_dim; d += static_cast<int>(blockDim.x)) {
        k[s * head_dim + d] = k[p * head_dim + d];
        v[s * head_dim + d] = v[p * head_dim + d];
      }
      if (threadIdx.x == 0) {
        positions[s] = positions[p];
        column_sum[s] = column_sum[p];
      }
    }
    gpu::sync_threads();
  }
}

// out[i] = x[i] rounded to binary16 (the input of half-precision matrix products), a 1-D grid.
// y[r, o] (+)= W[o, :] · x[r, :] for q8_0 weights: rows of blocks of 32 (binary16 scale d, 32 int8 q;
// weight d·q). One warp per output row; lane l takes blocks l, l + 32, ...: each block's 32 products
// summed in order and scaled once, the lanes' sums combined by a shuffle tree (a fixed order).
// REQUIRES: in a multiple of 32; blockDim.x a multiple of 32.
KVP_GLOBAL void q8_0_gemv_kernel(const uint8_t* w, int out, int in, const float* x, float* y, int rows, int accumulate) {
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const int o = static_cast<int>(blockIdx.x) * (static_cast<int>(blockDim.x) / 32) + static_cast<int>(threadIdx.x) / 32;
  if (o >= out) return;  // a whole warp: no barrier follows, only this warp's shuffles
  const int blocks = in / 32;
  const uint8_t* row = w + static_cast<int64_t>(o) * blocks * 34;
  for (int r = 0; r < rows; ++r) {
    const float* xr = x + static_cast<int64_t>(r) * in;
    float s = 0.0f;
    for (int b = lane; b < blocks; b += 32) {
      const uint8_t* blk = row + static_cast<int64_t>(b) * 34;
      const float d = math::half_bits_to_float(static_cast<uint32_t>(blk[0]) | static_cast<uint32_t>(blk[1]) << 8);
      float t = 0.0f;
      for (int i = 0; i < 32; ++i) t += static_cast<float>(static_cast<int8_t>(blk[2 + i])) * xr[b * 32 + i];
      s += d * t;
    }
    for (int m = 16; m >= 1; m /= 2) s += gpu::shfl_xor(s, m);
    if (lane == 0) {
      float& dst = y[static_cast<int64_t>(r) * out + o];
      dst = accumulate ? dst + s : s;
    }
  }
}

KVP_GLOBAL void to_half_kernel(const float* x, gpu::half* out, int64_t count) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < count) out[i] = gpu::from_float<gpu::half>(x[i]);
}

inline constexpr int kMaxGroup = 8;

// The dense cache's slots as decode_attention_body reads them: keys and values [head_dim, capacity].
template <typename T>
struct DenseSlots {
  const T* k;
  const T* v;
  int cap;
  int head_dim;

  KVP_DEVICE int query_channel(int i) const { return i; }
  // dot[g] = Σ_d qs[g, d] · k_d of slot j.
  KVP_DEVICE void logits(int j, const float* qs, int group, float* dot) const {
    for (int g = 0; g < group; ++g) dot[g] = 0;
    for (int d = 0; d < head_dim; ++d) {
      const float k_d = gpu::to_float(k[static_cast<int64_t>(d) * cap + j]);
      for (int g = 0; g < group; ++g) dot[g] += qs[g * head_dim + d] * k_d;
    }
  }
  KVP_DEVICE float value(int j, int d) const { return gpu::to_float(v[static_cast<int64_t>(d) * cap + j]); }
};

// Decode attention of one (row, KV head) block over `slots` (DenseSlots, or CompressedSlots of
// kernels/compressed_kernels.cuh) plus the new token, for its `group` query heads: out =
// softmax(q·k / sqrt(hd)) · v. The softmax weights, summed over the group, update each slot's score
// in place under `rule` (added for H2O, times the slot's value norm for VATP, replacing it for
// TOVA: no N×N write), and the new token's summed weight goes to self_weight[row * n_kv_heads + h].
//
// Keys and values are each read once per block, for all the group's queries together:
//   A. threads stride over slots (dense keys are [head_dim, capacity], so neighbouring threads read
//      neighbouring floats) and write every query's logit to `weights` ([group, weights_stride] per
//      block, global memory), with per-query maxima; the query is held in the slots' channel order;
//   B. the same threads turn their logits into exp(logit − max) and sum them per query;
//   C. threads take one output element d each (and, with more threads than elements, a share of the
//      slots) and walk value row d — its floats contiguous — accumulating every query's output;
//   D. each slot's weights, normalised and summed over the group in query order, go to its score.
// The extra traffic is the weights: 3 × group floats per slot against 2 × head_dim key and value
// elements.
//
// DELTA (DeltaPages): a sparse layer's slots off its row's chosen pages take logit −inf (neither key
// nor value read, weight and score update 0); a selection layer's block writes each slot's largest
// normalised weight over the group to head_max.
template <typename T, typename Slots>
KVP_DEVICE void decode_attention_body(const float* q, const SlotCache<T>& cache, const Slots& slots, const float* k_new,
                                      const float* v_new, float* out, float* self_weight, float* weights,
                                      int weights_stride, int rule, int group, int head_dim,
                                      const DeltaPages& delta = DeltaPages{}) {
  const int rh = static_cast<int>(blockIdx.x);
  const int64_t off = cache.offset[rh];
  const int n = cache.n_used[rh];
  const uint8_t* chosen =
      delta.chosen ? delta.chosen + static_cast<int64_t>(rh / delta.n_kv_heads) * delta.chosen_stride : nullptr;
  auto masked = [&](int j) { return chosen && !chosen[cache.pos[off + j] / delta.page_size]; };
  const float scale = math::attention_scale(head_dim);
  const float* qh = q + static_cast<int64_t>(rh) * group * head_dim;
  const float* kn = k_new + static_cast<int64_t>(rh) * head_dim;
  const float* vn = v_new + static_cast<int64_t>(rh) * head_dim;
  const int tid = static_cast<int>(threadIdx.x), nt = static_cast<int>(blockDim.x);
  float* w = weights + static_cast<int64_t>(rh) * group * weights_stride;  // [group, weights_stride]
  KVP_SHARED float qs[kMaxGroup * kMaxHeadDim];
  for (int e = tid; e < group * head_dim; e += nt) {
    qs[e] = qh[(e / head_dim) * head_dim + slots.query_channel(e % head_dim)];
  }
  gpu::sync_threads();

  // A. Logits, keys read once; the new token's at full width in the query's own order.
  float m[kMaxGroup], z[kMaxGroup], inv_z[kMaxGroup];
  for (int g = 0; g < group; ++g) m[g] = -INFINITY;
  for (int j = tid; j <= n; j += nt) {
    float dot[kMaxGroup];
    if (j < n && masked(j)) {
      for (int g = 0; g < group; ++g) w[static_cast<int64_t>(g) * weights_stride + j] = -INFINITY;
      continue;
    }
    if (j < n) {
      slots.logits(j, qs, group, dot);
    } else {
      for (int g = 0; g < group; ++g) dot[g] = 0;
      for (int d = 0; d < head_dim; ++d) {
        for (int g = 0; g < group; ++g) dot[g] += qh[g * head_dim + d] * kn[d];
      }
    }
    for (int g = 0; g < group; ++g) {
      const float logit = dot[g] * scale;
      w[static_cast<int64_t>(g) * weights_stride + j] = logit;
      m[g] = fmaxf(m[g], logit);
    }
  }
  for (int g = 0; g < group; ++g) m[g] = block_max(m[g]);
  // B. exp(logit − max) and the normalisers.
  for (int g = 0; g < group; ++g) z[g] = 0;
  for (int j = tid; j <= n; j += nt) {
    for (int g = 0; g < group; ++g) {
      float& e = w[static_cast<int64_t>(g) * weights_stride + j];
      e = expf(e - m[g]);
      z[g] += e;
    }
  }
  for (int g = 0; g < group; ++g) z[g] = block_sum(z[g]), inv_z[g] = 1.0f / z[g];
  gpu::sync_threads();  // every slot's exp visible to every thread

  // C. Outputs, values read once: thread e takes element d = e % head_dim over its part of the slots.
  const int parts = nt >= head_dim ? nt / head_dim : 1;
  const int per_part = (n + 1 + parts - 1) / parts;
  KVP_SHARED float partial[kMaxBlockThreads * kMaxGroup];  // [part, group, head_dim]
  for (int e = tid; e < parts * head_dim; e += nt) {
    const int d = e % head_dim, part = e / head_dim;
    float o[kMaxGroup];
    for (int g = 0; g < group; ++g) o[g] = 0;
    const int end = (part + 1) * per_part < n + 1 ? (part + 1) * per_part : n + 1;
    for (int j = part * per_part; j < end; ++j) {
      if (j < n && masked(j)) continue;  // weight 0
      const float v = j < n ? slots.value(j, d) : vn[d];
      for (int g = 0; g < group; ++g) o[g] += w[static_cast<int64_t>(g) * weights_stride + j] * v;
    }
    for (int g = 0; g < group; ++g) partial[(part * group + g) * head_dim + d] = o[g];
  }
  gpu::sync_threads();
  for (int e = tid; e < group * head_dim; e += nt) {
    const int g = e / head_dim, d = e % head_dim;
    float o = 0;
    for (int part = 0; part < parts; ++part) o += partial[(part * group + g) * head_dim + d];
    out[(static_cast<int64_t>(rh) * group + g) * head_dim + d] = o * inv_z[g];
  }

  // D. Scores: the group's normalised weights summed in query order (the CPU's order).
  auto summed_weight = [&](int j) {
    float s = 0;
    for (int g = 0; g < group; ++g) s += w[static_cast<int64_t>(g) * weights_stride + j] * inv_z[g];
    return s;
  };
  if (math::accumulates_attention(rule)) {
    for (int j = tid; j < n; j += nt) {
      const float a = summed_weight(j);
      cache.score[off + j] += rule == math::kScoreValueAttention ? a * cache.value_l1[off + j] : a;
    }
  } else if (rule == math::kScoreLastAttention) {
    for (int j = tid; j < n; j += nt) cache.score[off + j] = summed_weight(j);
  }
  if (tid == 0) self_weight[rh] = summed_weight(n);
  if (delta.head_max) {
    float* hm = delta.head_max + static_cast<int64_t>(rh) * delta.head_max_stride;
    for (int j = tid; j < n; j += nt) {
      float top = 0;
      for (int g = 0; g < group; ++g) top = fmaxf(top, w[static_cast<int64_t>(g) * weights_stride + j] * inv_z[g]);
      hm[j] = top;
    }
  }
  gpu::sync_threads();  // the shared arrays may be reused by the next block
}

template <typename T>
KVP_GLOBAL void decode_attention_kernel(SlotCache<T> cache, const float* q, const float* k_new, const float* v_new,
                                        float* out, float* self_weight, float* weights, int weights_stride, int rule,
                                        int group, int head_dim, DeltaPages delta) {
  const int rh = static_cast<int>(blockIdx.x);
  const int64_t koff = cache.offset[rh] * head_dim;
  const DenseSlots<T> slots{cache.k + koff, cache.v + koff, cache.capacity[rh], head_dim};
  decode_attention_body(q, cache, slots, k_new, v_new, out, self_weight, weights, weights_stride, rule, group,
                        head_dim, delta);
}

}  // namespace kvp::KVP_KERNEL_NS

#include "kernels/sample_kernels.cuh"
#include "kernels/compressed_kernels.cuh"
#include "kernels/kvcrush_kernels.cuh"
#include "kernels/delta_kernels.cuh"
