// Attention over a head's cache slots plus the new token, and where the new token goes: the
// arithmetic and the decision that the executor's CPU cache and the planner's replay share, so
// that on the same keys, values and queries they compute the same bits and evict the same tokens.
#pragma once

#include <cstdint>
#include <span>

#include "planner/policy/policy.h"

namespace kvp {

// Slot storage of one KV head: keys and values transposed, element d of slot j at [d * capacity + j].
struct SlotKv {
  const float* k;  // [head_dim, capacity]
  const float* v;  // [head_dim, capacity]
  int capacity;
  int n_used;
  int head_dim;
};

struct SlotAttentionOut {
  float* out;           // [group, head_dim] attention outputs
  float* weights;       // [n_used + 1] softmax weights summed over the group (new token last), or null;
                        // room for n_used + 1 rounded up to a multiple of 16 (whole packets are written)
  float* softmax;       // [group, 2] each query's largest scaled logit m and Σ exp(logit − m), or null:
                        // the log normaliser is m + log(Σ)
  float* scratch;       // [n_used + 1 rounded up to a multiple of 16], 64-byte aligned
};

// For each of the `group` queries q[g] ([group, head_dim]): softmax(q·k / sqrt(head_dim)) over the
// slots and the new token, then the weighted sum of values. The result does not depend on where
// the buffers sit in memory (sums run in a fixed order).
void slot_attention(const float* q, int group, const SlotKv& kv, const float* k_new, const float* v_new,
                    const SlotAttentionOut& result);

// Σ a[i]·b[i] in a fixed order (16 interleaved partial sums, then a fixed tree): vectorises and
// gives the same bits wherever the data is.
float fixed_order_dot(const float* a, const float* b, int n);

// Where a new token at `newest_pos` goes in each head of a layer: slot n_used while there is room,
// else the victim's slot (one victim for the layer when the policy keeps a shared set).
// victim_pos[h] is the evicted position, or -1 when a free slot was taken.
// REQUIRES: every full head has an unprotected slot. `unscored_from`: see choose_victim.
void place_new_token(const Policy& policy, std::span<const SlotArrays> heads, int32_t newest_pos,
                     std::span<int> slot, std::span<int32_t> victim_pos, int32_t unscored_from = kNoUnscored);

}  // namespace kvp
