// Attention over a head's cache slots plus the new token, and where the new token goes: the
// arithmetic and the decision that the executor's CPU cache and the planner's replay share, so
// that on the same keys, values and queries they compute the same bits and evict the same tokens.
#pragma once

#include <cstdint>
#include <span>

#include "planner/policy/policy.h"

namespace kvp {

// Slot storage of one KV head's keys or values, `capacity` slots of head_dim floats, transposed in
// blocks of 16 slots: block b (slots 16b .. 16b + 15) holds its head_dim rows of 16 floats one after
// another, and the last block of a capacity that is not a multiple of 16 holds rows of
// capacity % 16. The same bytes as a plain [head_dim, capacity] array, and 16 slots' elements d
// still sit in one packet; but a block is head_dim x 64 contiguous bytes whatever the capacity. Plain
// rows lie capacity x 4 B apart and fall on the same cache sets when that is a multiple of 4 KiB:
// attention over 1024-4096 slots ran 1.3-1.8x slower so (docs/PERFORMANCE.md).
inline constexpr int kSlotBlock = 16;
inline constexpr int kMaxSlotHeadDim = 1024;  // slot_attention's largest head_dim (ModelConfig's limit)
// Elements d of slots j0 .. j0 + 15 (j0 a multiple of 16; fewer in the last block).
inline size_t slot_block_row(int capacity, int head_dim, int d, int j0) {
  const int width = capacity - j0 < kSlotBlock ? capacity - j0 : kSlotBlock;
  return static_cast<size_t>(j0) * head_dim + static_cast<size_t>(d) * width;
}
// Element d of slot j.
inline size_t slot_element(int capacity, int head_dim, int d, int j) {
  const int j0 = j / kSlotBlock * kSlotBlock;
  return slot_block_row(capacity, head_dim, d, j0) + (j - j0);
}

// Slot storage of one KV head: keys and values in the blocked layout above.
struct SlotKv {
  const float* k;  // [capacity x head_dim], blocked
  const float* v;  // [capacity x head_dim], blocked
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
  float* head_max = nullptr;  // [n_used + 1] the largest weight any of the group's queries gives each slot
                              // (new token last), or null; padded as `weights` (DELTA's selection)
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
