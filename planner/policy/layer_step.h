// One token through one layer's KV-head caches, and the prefill of a prompt: the step of DESIGN §4
// written once, for the executor's CPU cache and the planner's replay alike.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include <Eigen/Core>

#include "planner/policy/slot_attention.h"

namespace kvp {

// One KV head's cache: `budget` slots of key and value (transposed in blocks of 16 slots: element d
// of slot j at slot_element(budget, head_dim, d, j), slot_attention.h), original position, score and
// the policy's aux float.
struct HeadSlots {
  float* k;         // [budget x head_dim], blocked
  float* v;         // [budget x head_dim], blocked
  int32_t* pos;     // [budget]
  float* score;     // [budget]
  float* aux;       // [budget], or null
  int32_t budget;
  int32_t* n_used;  // the first *n_used slots are valid
  int head_dim;

  SlotArrays slots() const {
    return SlotArrays{.n_used = *n_used, .budget = budget, .pos = pos, .score = score, .aux = aux};
  }
  SlotKv kv() const { return SlotKv{.k = k, .v = v, .capacity = budget, .n_used = *n_used, .head_dim = head_dim}; }
  void store(int slot, const float* key, const float* value, int32_t position) const {
    for (int d = 0; d < head_dim; ++d) {
      const size_t at = slot_element(budget, head_dim, d, slot);
      k[at] = key[d];
      v[at] = value[d];
    }
    pos[slot] = position;
  }
};

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
};

// Reusable buffers of layer_step, sized for `max_slots` + 1 keys.
struct StepScratch {
  explicit StepScratch(int max_slots);
  std::vector<float, Eigen::aligned_allocator<float>> scores;  // 64-byte aligned, padded (slot_attention)
  std::vector<float> weights;
  std::vector<float> self_weight;
  std::vector<SlotArrays> views;
  std::vector<int> slot;
  std::vector<int32_t> victim;
};

// Attends each query head over its KV head's slots plus the token itself (writing `attn_out`,
// [n_heads, head_dim], and when given `softmax`, [n_heads, 2] as SlotAttentionOut), updates the scores, and inserts the token
// into a free slot or the victim's.
void layer_step(const Policy& policy, std::span<const HeadSlots> heads, const TokenRow& row, int group,
                float* attn_out, float* softmax, StepScratch& scratch, const EvictFn& on_evict);

// Keeps, of `prompt` (heads holding positions 0..n-1 in order, prefilled by layer_step with
// prompt_len n), what the policy selects within each of `dest`'s budgets, in position order.
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
void prefill_row(const Policy& policy, std::span<const HeadSlots> scratch, std::span<const HeadSlots> dest,
                 std::span<const int32_t> budgets, const TokenRow& row, int group, float* attn_out, StepScratch& sc,
                 int evict_chunk, const EvictFn& on_cut);

void cut_prefill(const Policy& policy, std::span<const HeadSlots> prompt, std::span<const HeadSlots> dest,
                 const EvictFn& on_evict);

}  // namespace kvp
