// Slot budgets of one sequence's KV cache, per layer and KV head, and the exact bytes they cost.
//
// This is the one place the size of a cache is computed: the planner predicts memory with it and
// the executor allocates with it, so predicted and allocated bytes are equal by construction.
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "planner/policy/kv_compression.h"

namespace kvp {

// Element type of cached keys and values. On-disk names ("f32", "f16") are frozen.
enum class KvDtype { kF32, kF16 };

int kv_dtype_bytes(KvDtype dtype);
std::string_view kv_dtype_name(KvDtype dtype);
Result<KvDtype> parse_kv_dtype(std::string_view name);

// Per slot, besides key and value: original position (int32) and policy score (f32), plus
// aux_floats_per_slot floats a policy declares (VATP keeps each value's L1 norm).
inline constexpr int64_t kSlotMetadataBytes = 8;

struct KvBudgets {
  int n_layers = 0;
  int n_kv_heads = 0;
  int head_dim = 0;
  KvDtype dtype = KvDtype::kF32;
  int aux_floats_per_slot = 0;
  std::vector<int32_t> budget_tokens;  // [n_layers, n_kv_heads]
  // ThinK and Mustafar per layer (kv_compression.h), or empty: every layer dense.
  std::vector<SlotCompression> compression;
  // A ThinK prefill scratch: each head also holds head_dim floats of Σ q² (HeadShape::query_sums).
  bool query_sums = false;

  // Every layer and head gets `budget_tokens` slots.
  static KvBudgets uniform(int n_layers, int n_kv_heads, int head_dim, int32_t budget_tokens,
                           KvDtype dtype = KvDtype::kF32);

  int32_t budget(int layer_idx, int kv_head_idx) const {
    return budget_tokens[static_cast<size_t>(layer_idx) * n_kv_heads + kv_head_idx];
  }
  int64_t total_slots() const;
  // Bytes of one slot of a dense layer: key and value of head_dim elements each,
  // kSlotMetadataBytes, and the policy's aux floats.
  int64_t slot_bytes() const;
  bool compressed() const;
  const SlotCompression& layer_compression(int layer_idx) const;
  // What head (layer_idx, kv_head_idx) holds; its bytes are head_layout(...).bytes.
  HeadShape head_shape(int layer_idx, int kv_head_idx) const;
  int64_t head_bytes(int layer_idx, int kv_head_idx) const;
  // What a head of layer_idx costs: bytes per kept slot, and bytes besides (ThinK's and Mustafar's
  // rings, ThinK's channel order). Exact for budgets that are multiples of 4; at others each part
  // of the layout pads to 4 bytes, at most 3 bytes more per part.
  struct SlotCost {
    int64_t per_slot = 0;
    int64_t per_head = 0;
  };
  SlotCost slot_cost(int layer_idx) const;
  // Bytes of one sequence's cache: Σ head_bytes(), total_slots() * slot_bytes() when dense.
  int64_t kv_bytes() const;

  // The prefill's scratch for a prompt of `prompt_len` tokens (docs/ARCHITECTURE.md, the prefill transient):
  // every head holds the whole prompt until it is cut to budget, or with --prefill-evict chunks
  // of `evict_chunk` rows (> 0) at most its budget plus one chunk. The peak KV of a sequence is
  // kv_bytes() + prefill_scratch(...).kv_bytes(). The scratch is dense; under ThinK it also holds
  // the query sums that choose the channels at the cut.
  KvBudgets prefill_scratch(int prompt_len, int evict_chunk) const;
};

}  // namespace kvp
