#include "planner/plan/kv_budgets.h"

#include <algorithm>
#include <numeric>

namespace kvp {

int kv_dtype_bytes(KvDtype dtype) {
  switch (dtype) {
    case KvDtype::kF32: return 4;
    case KvDtype::kF16: return 2;
  }
  KVP_CHECK(false, "unknown KvDtype {}", static_cast<int>(dtype));
}

std::string_view kv_dtype_name(KvDtype dtype) {
  switch (dtype) {
    case KvDtype::kF32: return "f32";
    case KvDtype::kF16: return "f16";
  }
  KVP_CHECK(false, "unknown KvDtype {}", static_cast<int>(dtype));
}

Result<KvDtype> parse_kv_dtype(std::string_view name) {
  if (name == "f32") return KvDtype::kF32;
  if (name == "f16") return KvDtype::kF16;
  return make_error("kv dtype: expected f32 or f16, found '{}'", name);
}

KvBudgets KvBudgets::uniform(int n_layers, int n_kv_heads, int head_dim, int32_t budget_tokens,
                             KvDtype dtype) {
  KvBudgets b{.n_layers = n_layers, .n_kv_heads = n_kv_heads, .head_dim = head_dim, .dtype = dtype};
  b.budget_tokens.assign(static_cast<size_t>(n_layers) * n_kv_heads, budget_tokens);
  return b;
}

int64_t KvBudgets::total_slots() const {
  return std::accumulate(budget_tokens.begin(), budget_tokens.end(), int64_t{0});
}

int64_t KvBudgets::slot_bytes() const {
  return 2 * int64_t{head_dim} * kv_dtype_bytes(dtype) + kSlotMetadataBytes + 4 * aux_floats_per_slot;
}

KvBudgets KvBudgets::prefill_scratch(int prompt_len, int evict_chunk) const {
  KvBudgets b = *this;
  for (int32_t& t : b.budget_tokens) t = evict_chunk > 0 ? std::min(prompt_len, t + evict_chunk) : prompt_len;
  return b;
}

}  // namespace kvp
