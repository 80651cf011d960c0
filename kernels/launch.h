// Host-side launchers of the decoder kernels, one set per execution target with the same
// signatures: kvp::emulated (the kernel bodies on the CPU, kernels/emu) in every build, and
// kvp::cuda (device pointers, default stream) where nvcc exists. Pointers are to the target's
// memory: host memory for emulated, device memory for cuda.
#pragma once

#include <cstdint>

#include "kernels/compressed_layout.h"
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
  // A compressed cache (ThinK, Mustafar): each entry's keys and values in its head block, at byte
  // blocks + block[entry], of the layer's `shape` (kernels/compressed_layout.h); k and v unused.
  // Null: a dense cache.
  uint8_t* blocks = nullptr;
  const int64_t* block = nullptr;
  CompressedShape shape{};
  // Decode over a compressed cache: each entry's newest position, which sets the full-width windows.
  const int32_t* newest = nullptr;

  bool compressed() const { return blocks != nullptr; }
};

// One decode step's rows, per (row, KV head) entry of the step — `heads` of them, each with its
// group's queries and the new token.
struct DecodeRows {
  const float* q;      // [heads, group, head_dim], post-RoPE
  const float* k_new;  // [heads, head_dim], post-RoPE
  const float* v_new;  // [heads, head_dim]
  float* out;          // [heads, group, head_dim] attention outputs
  float* self_weight;  // [heads] the new token's attention, summed over the group
  int heads;
  int group;
  int head_dim;
};

// Which slots a victim search may take and how it ranks them (decoder_kernels.cuh place_kernel).
struct VictimRule {
  int sinks = 0;          // the first positions, never evicted
  int recent = 0;         // the newest positions, never evicted
  int per_query_key = 0;  // VATP base mean: the key is the score over the queries that saw the slot
  int shared = 1;         // heads per kept set: 1, or n_kv_heads for TOVA's one set per layer
};

// place's answers per (row, KV head): the slot the new token takes, and the position evicted from
// it (-1 for a free slot) with its key.
struct Placement {
  int32_t* slot;
  int32_t* evicted_pos;
  float* evicted_key;
};

// KVCrush's parameters as kvcrush_keep takes them (planner/policy/kvcrush.cc).
struct CrushRule {
  int newest = 0;   // the newest position (protection: sinks, and positions above newest − recent)
  int sinks = 0;
  int recent = 0;
  double ratio = 0; // the share of the selectable rows given to representatives
  int anchor = 0;   // 0 mean, 1 random, 2 alternating (CrushAnchor)
  uint64_t seed = 0;
};

// DELTA at a decode step (planner/policy/delta.h). A selection layer's decode_attention writes each
// slot's largest weight over its group's queries to head_max; delta_select turns each row's entries
// into the pages it chooses; a sparse layer's decode_attention attends only the slots on its row's
// chosen pages (and the new token): the others get logit −inf, no key or value read and weight 0.
struct DeltaPages {
  const uint8_t* chosen = nullptr;  // sparse: [launch rows, chosen_stride], 1 per chosen page; null: every slot
  int chosen_stride = 0;
  int page_size = 16;
  int n_kv_heads = 1;               // entries per row: entry e belongs to row e / n_kv_heads
  float* head_max = nullptr;        // select: [entries, head_max_stride] written for slots [0, n_used); null: none
  int head_max_stride = 0;
};

// DELTA's choice (choose_pages): the top `pages` pages by score, the last `last`, the sinks' pages.
struct DeltaRule {
  int pages = 64;
  int page_size = 16;
  int last = 8;
  int sinks = 0;
};

// One sequence's prompt, as the prefill kernels see it: keys and values of rows [0, prompt_len), and
// the queries of rows [first_query, prompt_len) (a chunk of a longer prompt; 0: all of them). Query
// row i attends key rows 0..i: the rows are in position order.
//
// The launch covers KV heads [first_head, first_head + heads). Queries, outputs and the softmax
// workspace are laid out over all n_kv_heads; keys, values, positions, column sums and the scores'
// outputs are the launched heads' own, from head 0 of the launch: key row j of head h at
// k + j * k_row + (h - first_head) * head_dim. --prefill-evict launches one head at a time over that
// head's scratch (k_row = head_dim), where the rows are the kept tokens then the chunk's.
struct PrefillRows {
  const float* q;  // [prompt_len - first_query, n_kv_heads, group, head_dim], post-RoPE
  const float* k;  // key rows, post-RoPE: [prompt_len, n_kv_heads, head_dim] by default
  const float* v;  // value rows, laid out as k
  float* row_max;  // [prompt_len - first_query, n_kv_heads, group] workspace: each query's largest logit
  float* row_sum;  // [prompt_len - first_query, n_kv_heads, group] workspace: its softmax normaliser
  int prompt_len;
  int n_kv_heads;
  int group;
  int head_dim;
  int first_query = 0;
  // Row stride of the column sums, [heads, column_stride] (0: prompt_len): a chunked prompt
  // keeps one array for the whole prompt. Keys before first_query add this chunk's queries to the
  // sums they hold (or take them alone, ColumnSpan::replace); keys from first_query on are written.
  int column_stride = 0;
  int first_head = 0;
  int heads = 0;                      // 0: n_kv_heads - first_head
  int64_t k_row = 0;                  // elements from one key row to the next; 0: n_kv_heads * head_dim
  const int32_t* positions = nullptr; // each key row's position, [heads, column_stride]; null: its row

  int launched_heads() const { return heads > 0 ? heads : n_kv_heads - first_head; }
  int64_t key_row_stride() const { return k_row > 0 ? k_row : static_cast<int64_t>(n_kv_heads) * head_dim; }
  int column_row_stride() const { return column_stride > 0 ? column_stride : prompt_len; }
};

// Which queries a key's column sum counts: rows >= first_row that come at or after the key
// (own_row) or strictly after it.
struct ColumnSpan {
  int first_row = 0;
  bool own_row = true;
  bool replace = false;  // keys before first_query take this chunk's sum in place of theirs (tova)
};

// `rule` is a math::ScoreRule (kernels/score_rule.h).
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
  /* y[rows, out] (+)= x[rows, in] · Wᵀ for q8_0 weights w ([out, in / 32] blocks of 34 bytes). */               \
  /* REQUIRES: in a multiple of 32. */                                                                          \
  void q8_0_gemv(const void* w, int out, int in, const float* x, float* y, int rows, bool accumulate,          \
                 int threads);                                                                                    \
  /* insert, prefill_gather and decode_attention also take a compressed cache (SlotCacheView::blocks): */  \
  /* tokens are stored in their short forms (ThinK's channels, Mustafar's largest magnitudes, the rest */     \
  /* to the rings) and attended as the CPU's compressed_slot_attention does. */                            \
  /* Each entry's new token into slot[entry] (skipped when -1) at position[entry], with its value norm */      \
  /* and its score under score_args; entry e is KV head e % n_kv_heads. */                                     \
  void insert(const DecodeRows& rows, const SlotCacheView& cache, const int32_t* slot, const int32_t* position,  \
              const math::ScoreArgs& score_args, int n_kv_heads, int threads);                                   \
  /* newest: [heads] each entry's newest position. */                                                          \
  void place(const SlotCacheView& cache, const int32_t* newest, const VictimRule& rule, const Placement& out,     \
             int heads, int threads);                                                                             \
  void prefill_column_sums(const PrefillRows& p, float* column_sum, int threads);                                \
  /* Outputs of every prompt row ([prompt_len, n_kv_heads, group, head_dim]), and when column_sum */          \
  /* ([n_kv_heads, prompt_len]) is not null each key's attention from the queries `span` counts. */          \
  void prefill_attention(const PrefillRows& p, float* out, float* column_sum, ColumnSpan span, int threads);     \
  /* Each prompt token's score, value norm and eviction key, [n_kv_heads, prompt_len] each. */                 \
  void prefill_scores(const PrefillRows& p, const float* column_sum, float* score, float* value_l1, float* key,  \
                      const math::ScoreArgs& score_args, int threads);                                            \
  /* out[j] = sum over the rows of x [rows, n] in row order. */                                                \
  void sum_rows(const float* x, int rows, int n, float* out, int threads);                                       \
  /* REQUIRES: prompt_len <= 8192 and budget >= the protected positions. */                                   \
  void prefill_keep(const float* keys, int heads, int prompt_len, int sinks, int recent, int budget,             \
                    int32_t* keep, int threads);                                                                 \
  /* The kept positions (keep[h * keep_stride + slot], -1 for none) into each KV head's slots. */              \
  void prefill_gather(const PrefillRows& p, const SlotCacheView& cache, const float* score, const float* value_l1, \
                      const int32_t* keep, int keep_stride, int threads);                                        \
  /* dst[r * dst_stride + e] = src[r * src_stride + e] for r < rows, e < width (floats). */                  \
  void copy_rows(const float* src, int64_t src_stride, float* dst, int64_t dst_stride, int rows, int width,       \
                 int threads);                                                                                    \
  /* --prefill-evict's cut in place of one head's scratch: rows keep[s] to s for s < n_keep (keep */          \
  /* increasing): key and value rows of head_dim, positions and column sums. */                              \
  void prefill_compact(float* k, float* v, int32_t* positions, float* column_sum, const int32_t* keep, int n_keep, \
                       int head_dim, int threads);                                                               \
  /* ThinK's query scores of the launched heads, out[hl * head_dim + d] = Σ q_d² over the group's */         \
  /* queries of the rows whose position (first_pos + row) is at least from_pos, added to out (set */          \
  /* when `replace`). */                                                                                     \
  void query_sums(const PrefillRows& p, int first_pos, int from_pos, bool replace, float* out, int threads);     \
  /* ThinK's channels of each launched head of a compressed cache, into its block: channel c scores */       \
  /* query_sums[hl * head_dim + c] · Σ k_c² over the kept rows (keep as for prefill_gather), the */         \
  /* shape's key_channels highest kept (the lower channel on ties). */                                        \
  void think_channels(const PrefillRows& p, const float* query_sums, const SlotCacheView& cache,                \
                      const int32_t* keep, int keep_stride, int threads);                                        \
  /* REQUIRES: threads a multiple of 32 (whole warps) for every kernel but swiglu, rope, to_half and */      \
  /* embedding; decode_attention: head_dim <= 128, group <= 8, and `weights` a workspace of */                \
  /* [heads, group, weights_stride] floats with weights_stride > every entry's n_used. `delta`: DELTA's */    \
  /* masks and maxima (DeltaPages; {} for none; a dense cache only). */                                        \
  void decode_attention(const DecodeRows& rows, const SlotCacheView& cache, float* weights, int weights_stride,  \
                        int rule, const DeltaPages& delta, int threads);                                         \
  /* DELTA's chosen pages of `rows` rows, each of n_kv_heads entries of `cache` (n_used, positions) with */      \
  /* their head_max ([entries, head_max_stride], a selection layer's decode_attention) and newest[entry]: */   \
  /* chosen [rows, chosen_stride] (> every newest / page_size). Workspace: pos_weight [rows, pos_stride] */    \
  /* (pos_stride >= every newest), page_score [rows, chosen_stride]. One block per row. */                     \
  void delta_select(const SlotCacheView& cache, const float* head_max, int head_max_stride, const int32_t* newest,  \
                    int rows, int n_kv_heads, const DeltaRule& rule, float* pos_weight, int pos_stride,          \
                    float* page_score, uint8_t* chosen, int chosen_stride, int threads);                         \
  /* KVCrush's kept rows of one layer's shared set (kernels/kvcrush_kernels.cuh): keys [heads, key_stride] */ \
  /* over rows [0, n), positions [n] (null: the row), keep [budget] out, work [2 n] int32 workspace. */       \
  /* REQUIRES: heads <= 32. */                                                                              \
  void kvcrush_keep(const float* keys, int heads, int key_stride, int n, const int32_t* positions, const CrushRule& rule, \
                    int budget, int32_t* work, int32_t* keep, int threads);                                     \
  /* Each of `heads` dense heads' eviction keys of slots [0, n) (keys [heads, key_stride]). */                \
  void slot_keys(const SlotCacheView& cache, int heads, int n, int newest, int per_query_key, float* keys,       \
                 int key_stride, int threads);                                                                   \
  /* Each of `heads` dense heads cut in place: slot keep[s] to s for s < n_keep (keep increasing). */          \
  void slot_compact(const SlotCacheView& cache, int heads, const int32_t* keep, int n_keep, int head_dim, int threads);

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
  KVP_LAUNCHER_FIELD(argmax) KVP_LAUNCHER_FIELD(sample) KVP_LAUNCHER_FIELD(to_half) KVP_LAUNCHER_FIELD(q8_0_gemv) KVP_LAUNCHER_FIELD(insert) KVP_LAUNCHER_FIELD(place)
  KVP_LAUNCHER_FIELD(prefill_attention) KVP_LAUNCHER_FIELD(prefill_scores) KVP_LAUNCHER_FIELD(sum_rows)
  KVP_LAUNCHER_FIELD(prefill_keep)
  KVP_LAUNCHER_FIELD(prefill_gather) KVP_LAUNCHER_FIELD(decode_attention) KVP_LAUNCHER_FIELD(copy_rows)
  KVP_LAUNCHER_FIELD(prefill_compact) KVP_LAUNCHER_FIELD(query_sums) KVP_LAUNCHER_FIELD(think_channels)
  KVP_LAUNCHER_FIELD(kvcrush_keep) KVP_LAUNCHER_FIELD(slot_keys) KVP_LAUNCHER_FIELD(slot_compact)
  KVP_LAUNCHER_FIELD(delta_select)
#undef KVP_LAUNCHER_FIELD
};

namespace emulated {
extern const Launchers kLaunchers;
}  // namespace emulated
namespace cuda {
extern const Launchers kLaunchers;  // defined only in CUDA builds (KVP_HAVE_CUDA)
}  // namespace cuda

}  // namespace kvp
