#include "planner/capacity.h"

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "common/file_util.h"
#include "common/yaml_fields.h"

namespace kvp {

int64_t ModelSpec::parameter_count() const {
  const int64_t d = dim, h = hidden_dim, hd = head_dim();
  const int64_t per_layer = 2 * d + d * n_heads * hd + 2 * d * n_kv_heads * hd + n_heads * hd * d + 3 * d * h;
  const int64_t embedding = int64_t{vocab_size} * d;
  return embedding + n_layers * per_layer + d + (tied_embeddings ? 0 : embedding);
}

Result<ModelSpec> ModelSpec::load(const std::string& path) {
  KVP_ASSIGN_OR_RETURN(std::string text, read_file_text(path));
  KVP_ASSIGN_OR_RETURN(YAML::Node root, parse_yaml_map(text, path));
  const YamlFields f(root, path, "");
  KVP_RETURN_IF_ERROR(f.only({"name", "dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len",
                              "tied_embeddings", "source"}));
  ModelSpec m;
  KVP_ASSIGN_OR_RETURN(m.name, f.str("name"));
  KVP_ASSIGN_OR_RETURN(m.dim, f.integer("dim", 1, 1 << 20));
  KVP_ASSIGN_OR_RETURN(m.hidden_dim, f.integer("hidden_dim", 1, 1 << 22));
  KVP_ASSIGN_OR_RETURN(m.n_layers, f.integer("n_layers", 1, 4096));
  KVP_ASSIGN_OR_RETURN(m.n_heads, f.integer("n_heads", 1, 4096));
  KVP_ASSIGN_OR_RETURN(m.n_kv_heads, f.integer("n_kv_heads", 1, m.n_heads));
  KVP_ASSIGN_OR_RETURN(m.vocab_size, f.integer("vocab_size", 1, 1 << 22));
  KVP_ASSIGN_OR_RETURN(m.seq_len, f.integer("seq_len", 1, 1 << 24));
  KVP_ASSIGN_OR_RETURN(std::string tied, f.str("tied_embeddings"));
  if (tied != "true" && tied != "false") return f.error("tied_embeddings", "expected true or false");
  m.tied_embeddings = tied == "true";
  KVP_ASSIGN_OR_RETURN(m.source, f.str("source"));
  if (m.dim % m.n_heads != 0) return f.error("n_heads", fmt::format("expected a divisor of dim {}", m.dim));
  if (m.n_heads % m.n_kv_heads != 0) return f.error("n_kv_heads", "expected a divisor of n_heads");
  return m;
}

Result<HardwareSpec> HardwareSpec::load(const std::string& path) {
  KVP_ASSIGN_OR_RETURN(std::string text, read_file_text(path));
  KVP_ASSIGN_OR_RETURN(YAML::Node root, parse_yaml_map(text, path));
  const YamlFields f(root, path, "");
  KVP_RETURN_IF_ERROR(f.only({"name", "memory_bytes", "bandwidth_bytes_per_s", "peak_flops", "source"}));
  HardwareSpec h;
  KVP_ASSIGN_OR_RETURN(h.name, f.str("name"));
  KVP_ASSIGN_OR_RETURN(h.memory_bytes, f.integer64("memory_bytes", 1, INT64_MAX));
  KVP_ASSIGN_OR_RETURN(h.bandwidth_bytes_per_s, f.number("bandwidth_bytes_per_s"));
  KVP_ASSIGN_OR_RETURN(h.peak_flops, f.number("peak_flops"));
  KVP_ASSIGN_OR_RETURN(h.source, f.str("source"));
  if (h.bandwidth_bytes_per_s <= 0) return f.error("bandwidth_bytes_per_s", "expected a positive number");
  if (h.peak_flops <= 0) return f.error("peak_flops", "expected a positive number");
  return h;
}

KvBudgets keep_ratio_budgets(const ModelSpec& m, int context_len, double keep_ratio, KvDtype dtype,
                             int aux_floats_per_slot) {
  const int32_t budget = std::max<int32_t>(1, static_cast<int32_t>(std::lround(keep_ratio * context_len)));
  KvBudgets b = KvBudgets::uniform(m.n_layers, m.n_kv_heads, m.head_dim(), std::min(budget, context_len), dtype);
  b.aux_floats_per_slot = aux_floats_per_slot;
  return b;
}

namespace {

CapacitySide side(const ModelSpec& m, const HardwareSpec& hw, int64_t weights, int64_t reserve, const KvBudgets& kv,
                  int context_len) {
  CapacitySide s;
  s.kv_bytes_per_sequence = kv.kv_bytes();
  // Per-sequence activations of a decode step in fp32: residual, norms, q/k/v, attention output,
  // the two SwiGLU halves, logits, and the attention scores of one head row.
  s.activation_bytes_per_sequence =
      4 * (3 * int64_t{m.dim} + 2 * int64_t{m.n_kv_heads} * m.head_dim() + 2 * int64_t{m.hidden_dim} + m.vocab_size +
           context_len);
  const int64_t free = hw.memory_bytes - weights - reserve;
  s.max_batch = free > 0 ? free / (s.kv_bytes_per_sequence + s.activation_bytes_per_sequence) : 0;
  if (s.max_batch == 0) return s;
  // Roofline of one decode step for max_batch sequences: every weight and every cached byte is
  // read once; FLOPs are the weight products plus attention over the cached slots.
  const double attended_slots = static_cast<double>(kv.total_slots());
  const double bytes = double(weights) + double(s.max_batch) * double(s.kv_bytes_per_sequence);
  const double flops = double(s.max_batch) * (2.0 * m.parameter_count() +
                                              4.0 * attended_slots * m.head_dim() * (m.n_heads / m.n_kv_heads));
  const double t_mem = bytes / hw.bandwidth_bytes_per_s, t_flop = flops / hw.peak_flops;
  s.decode_step_s = std::max(t_mem, t_flop);
  s.memory_bound = t_mem >= t_flop;
  s.tokens_per_s = double(s.max_batch) / s.decode_step_s;
  return s;
}

}  // namespace

CapacityReport capacity(const ModelSpec& m, const HardwareSpec& hw, const CapacityQuery& q) {
  KVP_CHECK(q.context_len >= 1);
  CapacityReport r;
  r.weight_bytes = q.weight_bytes > 0 ? q.weight_bytes : m.parameter_count() * q.weight_bytes_per_param;
  r.workspace_bytes = q.runtime_reserve_bytes;
  const KvBudgets full = keep_ratio_budgets(m, q.context_len, 1.0, q.kv_dtype, 0);
  KvBudgets plan = keep_ratio_budgets(m, q.context_len, q.keep_ratio, q.kv_dtype, q.aux_floats_per_slot);
  if (!q.plan_budgets.empty()) {
    KVP_CHECK(q.plan_budgets.size() == size_t(m.n_layers) * m.n_kv_heads);
    plan.budget_tokens = q.plan_budgets;
  }
  r.full = side(m, hw, r.weight_bytes, r.workspace_bytes, full, q.context_len);
  r.plan = side(m, hw, r.weight_bytes, r.workspace_bytes, plan, q.context_len);
  return r;
}

Result<std::string> find_config(const std::string& kind, const std::string& name) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (fs::is_regular_file(name, ec)) return name;
  const fs::path dir = fs::path(KVP_SOURCE_DIR) / "configs" / kind;
  const fs::path candidate = dir / (name + ".yaml");
  if (fs::is_regular_file(candidate, ec)) return candidate.string();
  std::string known;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    if (e.path().extension() == ".yaml") known += (known.empty() ? "" : ", ") + e.path().stem().string();
  }
  return make_error("--{}: no file '{}' and no {}/{}.yaml (known: {})", kind == "models" ? "model-config" : "hardware",
                    name, kind, name, known);
}

}  // namespace kvp
