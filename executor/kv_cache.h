// One sequence's KV cache in host memory: per layer and KV head, `budget` slots of post-RoPE key,
// value, original position (int32) and policy score (f32), carved from one allocation of exactly
// KvBudgets::kv_bytes() bytes. Budgets may differ per layer and head (ragged). A slot is
// replaced in place on eviction; attention over post-RoPE keys does not depend on slot order.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "planner/plan/kv_budgets.h"

namespace kvp {

struct HeadCache {
  float* k;         // [budget, head_dim]
  float* v;         // [budget, head_dim]
  int32_t* pos;     // [budget] original position of each slot
  float* score;     // [budget] policy score of each slot
  int32_t budget;   // slots allocated
  int32_t* n_used;  // slots filled; the first *n_used are valid
};

class KvCache {
 public:
  // REQUIRES: budgets.dtype == KvDtype::kF32 (the host cache stores f32).
  explicit KvCache(KvBudgets budgets);

  const KvBudgets& budgets() const { return budgets_; }
  HeadCache head(int layer_idx, int kv_head_idx);
  int64_t bytes() const { return budgets_.kv_bytes(); }

 private:
  KvBudgets budgets_;
  std::unique_ptr<std::byte[]> arena_;  // kv_bytes() bytes
  std::vector<size_t> head_offset_;     // [n_layers * n_kv_heads] byte offset of each head
  std::vector<int32_t> n_used_;         // [n_layers * n_kv_heads]
};

}  // namespace kvp
