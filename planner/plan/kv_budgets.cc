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

bool KvBudgets::compressed() const {
  return std::any_of(compression.begin(), compression.end(), [](const SlotCompression& c) { return c.compressed(); });
}

const SlotCompression& KvBudgets::layer_compression(int layer_idx) const {
  static const SlotCompression kDense{};
  return compression.empty() ? kDense : compression.at(layer_idx);
}

HeadShape KvBudgets::head_shape(int layer_idx, int kv_head_idx) const {
  return HeadShape{.budget = budget(layer_idx, kv_head_idx), .head_dim = head_dim,
                   .elem_bytes = kv_dtype_bytes(dtype), .aux_floats = aux_floats_per_slot,
                   .compression = layer_compression(layer_idx),
                   .query_sums = query_sums && layer_compression(layer_idx).think_queries > 0};
}

int64_t KvBudgets::head_bytes(int layer_idx, int kv_head_idx) const {
  return static_cast<int64_t>(head_layout(head_shape(layer_idx, kv_head_idx)).bytes);
}

KvBudgets::SlotCost KvBudgets::slot_cost(int layer_idx) const {
  HeadShape shape = head_shape(layer_idx, 0);
  auto bytes_at = [&](int32_t slots) {
    shape.budget = slots;
    return static_cast<int64_t>(head_layout(shape).bytes);
  };
  const int64_t at64 = bytes_at(64), per_slot = (bytes_at(128) - at64) / 64;
  return SlotCost{.per_slot = per_slot, .per_head = at64 - 64 * per_slot};
}

int64_t KvBudgets::kv_bytes() const {
  if (!compressed() && !query_sums) return total_slots() * slot_bytes();
  int64_t total = 0;
  for (int l = 0; l < n_layers; ++l) {
    for (int h = 0; h < n_kv_heads; ++h) total += head_bytes(l, h);
  }
  return total;
}

KvBudgets KvBudgets::prefill_scratch(int prompt_len, int evict_chunk) const {
  KvBudgets b = *this;
  // Dense, with ThinK's query window where a layer sums the queries (think_queries 0: none).
  b.query_sums = std::any_of(compression.begin(), compression.end(),
                             [&](const SlotCompression& c) { return c.thin(head_dim); });
  for (SlotCompression& c : b.compression) c = SlotCompression{.think_queries = c.thin(head_dim) ? c.think_queries : 0};
  if (!b.query_sums) b.compression.clear();
  for (int32_t& t : b.budget_tokens) t = evict_chunk > 0 ? std::min(prompt_len, t + evict_chunk) : prompt_len;
  return b;
}

}  // namespace kvp
