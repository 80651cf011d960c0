// One token through one layer's KV-head caches, and the prefill of a prompt: the step of docs/METHODS.md
// written once, for the executor's CPU cache and the planner's replay alike.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include <Eigen/Core>

#include "common/aligned_vector.h"
#include "planner/policy/kv_compression.h"
#include "planner/policy/slot_attention.h"

namespace kvp {

// One KV head's cache: `budget` slots of key and value (transposed in blocks of 16 slots: element d
// of slot j at slot_element(budget, head_dim, d, j), slot_attention.h), original position, score and
// the policy's aux float.
//
// A compressed head (ThinK, Mustafar: kv_compression.h) holds its keys and values in the short
// forms of `compression`, with the rings and masks of that layout; store() and layer_step handle
// both kinds.
struct HeadSlots {
  float* k;         // [budget x head_dim], blocked (compressed: HeadLayout::k)
  float* v;         // [budget x head_dim], blocked (compressed: HeadLayout::v)
  int32_t* pos;     // [budget]
  float* score;     // [budget]
  float* aux;       // [budget], or null
  int32_t budget;
  int32_t* n_used;  // the first *n_used slots are valid
  int head_dim;
  SlotCompression compression{};  // dense unless compression.compressed()
  float* k_drop = nullptr;        // the parts of HeadLayout a compressed head has, else null
  float* k_resid = nullptr;
  float* v_resid = nullptr;
  int32_t* channels = nullptr;
  uint8_t* k_mask = nullptr;
  uint8_t* v_mask = nullptr;
  float* query_sums = nullptr;    // a ThinK prefill scratch: [head_dim] Σ q² of the last prompt queries
  int think_queries = 0;          // ... of the last this many

  bool compressed() const { return compression.compressed(); }

  SlotArrays slots() const {
    return SlotArrays{.n_used = *n_used, .budget = budget, .pos = pos, .score = score, .aux = aux};
  }
  SlotKv kv() const { return SlotKv{.k = k, .v = v, .capacity = budget, .n_used = *n_used, .head_dim = head_dim}; }
  // Writes a token into `slot` (a compressed head: its short forms, and its ring entries).
  void store(int slot, const float* key, const float* value, int32_t position) const {
    if (compressed()) return store_compressed(slot, key, value, position);
    for (int d = 0; d < head_dim; ++d) {
      const size_t at = slot_element(budget, head_dim, d, slot);
      k[at] = key[d];
      v[at] = value[d];
    }
    pos[slot] = position;
  }
  void store_compressed(int slot, const float* key, const float* value, int32_t position) const;
};

// Carves a head of `shape` from `base` (head_layout(shape).bytes bytes, 4-byte aligned).
HeadSlots carve_head(std::byte* base, const HeadShape& shape, int32_t* n_used);
// A freshly carved head's compression state: ThinK's channels all kept, in order, until a prompt's
// cut chooses them, and the query sums zero.
void reset_compression_state(const HeadSlots& head);

// attention of slot_attention over a compressed head: the newest tokens (positions above
// newest_pos − window, newest_pos the query's) at full width from the rings, the others in their
// short forms. The same outputs as slot_attention where nothing is dropped (up to rounding).
// Sparse keys and values are expanded 8 elements at a time (AVX2; the reference where the build
// lacks it).
void compressed_slot_attention(const float* q, int group, const HeadSlots& head, int32_t newest_pos,
                               const float* k_new, const float* v_new, const SlotAttentionOut& result);
// The same with a bit test per sparse element: the reference the vector form is tested against.
void compressed_slot_attention_reference(const float* q, int group, const HeadSlots& head, int32_t newest_pos,
                                         const float* k_new, const float* v_new, const SlotAttentionOut& result);

// ThinK's channels of a head at the prompt's cut: score_c = query_sums[c] · Σ over `kept` slots of
// `from` of k_c², the key_channels highest kept (ties: the lower channel), written to `channels`
// (kept ascending, then the dropped ascending).
void think_channels(const HeadSlots& from, std::span<const int> kept, int key_channels, int32_t* channels);

// Mustafar's elements of a vector: bit i of `mask` set for the `keep` largest |x[i]| of x[0, n)
// (ties: the lower index).
void magnitude_mask(const float* x, int n, int keep, uint8_t* mask);

// Called for every evicted token: KV head, its position and its eviction key.
using EvictFn = std::function<void(int kv_head_idx, int32_t evicted_pos, float key)>;

// The row of one token, all heads of one layer.
struct TokenRow {
  const float* q;   // [n_heads, head_dim], post-RoPE; null: no query (a trace recorded with a
                    // query stride): the token enters the cache with no attention computed or scored
  const float* k;   // [n_kv_heads, head_dim], post-RoPE
  const float* v;   // [n_kv_heads, head_dim]
  int32_t pos;
  int layer_idx;
  int prompt_len;   // > 0 while prefilling that many positions
  int kv_head_first = 0;  // the KV head of heads[0] (when a step runs a subset of the layer's heads)
  // Replay of a strided trace: positions at or after this one are not yet scored by a recorded
  // query and are evicted last (choose_victim).
  int32_t unscored_from = kNoUnscored;
  // DELTA (delta.h), under a policy whose params carry layer roles: this decode row's state across
  // the layers of its step; a selection layer writes the chosen pages, a sparse layer attends only
  // them. Null: every layer attends in full. A selection layer's step must hold all the layer's KV
  // heads (its page scores take the maximum over all query heads).
  DeltaRow* delta = nullptr;
};

// Reusable buffers of layer_step, sized for `max_slots` + 1 keys.
struct StepScratch {
  explicit StepScratch(int max_slots);
  Aligned64Vector<float> scores;  // 64-byte aligned, padded (slot_attention)
  std::vector<float> weights;
  std::vector<float> self_weight;
  std::vector<SlotArrays> views;
  std::vector<int> slot;
  std::vector<int32_t> victim;
  // DELTA: the largest weight per slot over a group's queries (selection), and a sparse layer's
  // chosen slots gathered into the blocked layout with their weights.
  std::vector<float> head_max, gather_weights;
  Aligned64Vector<float> gather_k, gather_v;
  std::vector<int> gathered;
  int64_t attended = 0;  // keys attended by the decode rows through this scratch (new tokens counted)
};

// Attention of one KV head of a DELTA sparse layer over its slots on the pages `delta` chose plus the
// new token: those slots gathered into `sc` (the blocked layout, slot order kept), slot_attention
// over them, and, when `result.weights` is given, the weights scattered back to [n_used + 1] with 0
// for the slots not attended. Every slot chosen: slot_attention over the head itself (the same
// bits as a full layer). Returns the keys attended (the new token included).
int sparse_slot_attention(const float* q, int group, const HeadSlots& head, const float* k_new, const float* v_new,
                          const SlotAttentionOut& result, const DeltaRow& delta, StepScratch& sc);

// Another policy scoring the same slots into arrays of its own, as it would score them in its own
// prefill (init_slot and observe; the slots and their positions are the stepped policy's): a
// shared prefill scores one pass over a prompt for every policy of a grid (kvplan eval --tasks).
// score[h] and aux[h] ([budget] each; aux[h] may be null) belong to the step's head h.
struct ScoreObserver {
  const Policy* policy;
  std::span<float* const> score;
  std::span<float* const> aux;
};

// Attends each query head over its KV head's slots plus the token itself (writing `attn_out`,
// [n_heads, head_dim], and when given `softmax`, [n_heads, 2] as SlotAttentionOut), updates the scores, and inserts the token
// into a free slot or the victim's.
// `observers` score alongside `policy`, which must then keep every slot (it never evicts here).
void layer_step(const Policy& policy, std::span<const HeadSlots> heads, const TokenRow& row, int group,
                float* attn_out, float* softmax, StepScratch& scratch, const EvictFn& on_evict,
                std::span<const ScoreObserver> observers = {});

// The choice of cut_slots, without moving anything: per head of `views` (one layer's heads, slots
// holding increasing positions, the newest `newest_pos`), the slots kept within budgets[h], in slot
// order. `finish`: finish_prefill runs on the views first (it may rewrite their scores). The task
// replay (task_trace.h) cuts recorded scores through this.
std::vector<std::vector<int>> select_cut(const Policy& policy, std::span<SlotArrays> views,
                                         std::span<const int32_t> budgets, int32_t newest_pos, bool finish);

// Keeps, of `from` (heads whose slots hold increasing positions, the newest `newest_pos`), what the
// policy selects within budgets[h] slots of `to`, in position order. `to` may be `from` itself (a
// cut in place: the kept slots move down). `finish`: the prompt's last cut (finish_prefill runs
// first). --prefill-evict cuts a prompt this way after each chunk.
void cut_slots(const Policy& policy, std::span<const HeadSlots> from, std::span<const HeadSlots> to,
               std::span<const int32_t> budgets, int32_t newest_pos, bool finish, const EvictFn& on_evict);

// One prompt row of a prompt of row.prompt_len positions (prefilled in position order) through
// `scratch` (the prompt so far: every position, or with --prefill-evict chunks of `evict_chunk`
// rows at most budgets[h] + evict_chunk), then the cut its position calls for: after the prompt's
// last position, what the policy keeps within budgets[h] into `dest`; after the last row of an
// --prefill-evict chunk, in place in `scratch`, from the scores so far. The executor's CPU cache
// and the planner's replay both prefill through this, so they cut the same tokens.
// `observers` score the scratch's slots alongside `policy` (layer_step).
void prefill_row(const Policy& policy, std::span<const HeadSlots> scratch, std::span<const HeadSlots> dest,
                 std::span<const int32_t> budgets, const TokenRow& row, int group, float* attn_out, StepScratch& sc,
                 int evict_chunk, const EvictFn& on_cut, std::span<const ScoreObserver> observers = {});

// Keeps, of `prompt` (heads holding positions 0..n-1 in order, prefilled by layer_step with
// prompt_len n), what the policy selects within each of `dest`'s budgets, in position order.
void cut_prefill(const Policy& policy, std::span<const HeadSlots> prompt, std::span<const HeadSlots> dest,
                 const EvictFn& on_evict);

}  // namespace kvp
