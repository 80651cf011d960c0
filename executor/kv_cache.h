// One sequence's KV cache in host memory: per layer and KV head, `budget` slots of post-RoPE key,
// value, original position (int32) and policy score (f32), carved from one allocation of exactly
// KvBudgets::kv_bytes() bytes. Budgets may differ per layer and head (ragged). A slot is
// replaced in place on eviction; attention over post-RoPE keys does not depend on slot order.
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <vector>

#include "planner/plan/kv_budgets.h"
#include "planner/policy/layer_step.h"

namespace kvp {

// A head's view of the cache (planner/policy/layer_step.h): keys and values transposed in blocks of
// 16 slots (slot_attention.h SlotKv), so the attention products vectorise across tokens.
using HeadCache = HeadSlots;

class KvCache {
 public:
  // REQUIRES: budgets.dtype == KvDtype::kF32 (the host cache stores f32) and
  // budgets.aux_floats_per_slot <= 1.
  explicit KvCache(KvBudgets budgets);

  // Storage of a cache, kept for another of at most `bytes` (reusing memory already faulted in:
  // a fresh allocation of gigabytes costs seconds of page zeroing).
  struct Arena {
    struct Free {
      void operator()(std::byte* p) const;
    };
    std::unique_ptr<std::byte[], Free> data;
    size_t bytes = 0;
  };
  // A cache in `arena` when it is large enough (else in a new allocation).
  KvCache(KvBudgets budgets, Arena arena);
  // Gives up the cache's storage (the cache is then unusable).
  Arena release() && { return std::move(arena_); }

  const KvBudgets& budgets() const { return budgets_; }
  HeadCache head(int layer_idx, int kv_head_idx);
  int64_t bytes() const { return budgets_.kv_bytes(); }
  // Empties every head (the allocation stays).
  void clear() { std::fill(n_used_.begin(), n_used_.end(), 0); }

 private:
  KvBudgets budgets_;
  Arena arena_;  // at least kv_bytes() bytes, 64-byte aligned
  std::vector<size_t> head_offset_;     // [n_layers * n_kv_heads] byte offset of each head
  std::vector<int32_t> n_used_;         // [n_layers * n_kv_heads]
};

}  // namespace kvp
