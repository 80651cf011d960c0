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
  KVP_RETURN_IF_ERROR(f.only({"name", "memory_bytes", "bandwidth_bytes_per_s", "peak_flops", "source", "matmul_flops",
                              "matmul_stream_flops", "matmul_stream1_flops", "matmul_stream_call_s",
                              "matmul_stream1_call_s", "matmul_stream32_flops", "matmul_stream32_call_s",
                              "attention_flops", "attention_batch_flops", "evict_slot_s", "sync_s", "delta_copy",
                              "measured_by"}));
  HardwareSpec h;
  KVP_ASSIGN_OR_RETURN(h.name, f.str("name"));
  KVP_ASSIGN_OR_RETURN(h.memory_bytes, f.integer64("memory_bytes", 1, INT64_MAX));
  KVP_ASSIGN_OR_RETURN(h.bandwidth_bytes_per_s, f.number("bandwidth_bytes_per_s"));
  KVP_ASSIGN_OR_RETURN(h.peak_flops, f.number("peak_flops"));
  KVP_ASSIGN_OR_RETURN(h.source, f.str("source"));
  if (h.bandwidth_bytes_per_s <= 0) return f.error("bandwidth_bytes_per_s", "expected a positive number");
  if (h.peak_flops <= 0) return f.error("peak_flops", "expected a positive number");
  struct TypeMap {
    const char* key;
    std::vector<std::pair<std::string, double>>* values;
    bool seconds;  // seconds (>= 0), else FLOP/s (> 0)
  };
  for (auto [key, rates, seconds] : {TypeMap{"matmul_flops", &h.matmul_flops, false},
                                     TypeMap{"matmul_stream_flops", &h.matmul_stream_flops, false},
                                     TypeMap{"matmul_stream1_flops", &h.matmul_stream1_flops, false},
                                     TypeMap{"matmul_stream_call_s", &h.matmul_stream_call_s, true},
                                     TypeMap{"matmul_stream1_call_s", &h.matmul_stream1_call_s, true},
                                     TypeMap{"matmul_stream32_flops", &h.matmul_stream32_flops, false},
                                     TypeMap{"matmul_stream32_call_s", &h.matmul_stream32_call_s, true}}) {
    if (!f.has(key)) continue;
    const YAML::Node m = root[key];
    const std::string name = key;
    if (!m.IsMap()) return f.error(name, seconds ? "expected a map of weight type to seconds" : "expected a map of weight type to FLOP/s");
    for (const auto& kv : m) {
      const std::string type = kv.first.as<std::string>();
      static constexpr std::string_view kTypes[] = {"f32", "f16", "bf16", "q8_0", "q4_k", "q6_k"};
      if (std::find(std::begin(kTypes), std::end(kTypes), type) == std::end(kTypes)) {
        return f.error(name + "." + type, "unknown weight type (f32, f16, bf16, q8_0, q4_k or q6_k)");
      }
      double v = 0;
      try {
        v = kv.second.as<double>();
      } catch (const YAML::Exception&) {
        v = -1;
      }
      if (seconds ? !(v >= 0) : !(v > 0)) {
        return f.error(name + "." + type, seconds ? "expected a number >= 0" : "expected a positive number");
      }
      rates->emplace_back(type, v);
    }
  }
  if (f.has("delta_copy")) {
    const YAML::Node node = root["delta_copy"];
    if (!node.IsScalar() || !YAML::convert<bool>::decode(node, h.delta_copy)) {
      return f.error("delta_copy", "expected true or false");
    }
  }
  for (auto [key, field] : {std::pair{"attention_flops", &h.attention_flops},
                            std::pair{"attention_batch_flops", &h.attention_batch_flops},
                            std::pair{"evict_slot_s", &h.evict_slot_s}, std::pair{"sync_s", &h.sync_s}}) {
    if (!f.has(key)) continue;
    KVP_ASSIGN_OR_RETURN(*field, f.number(key));
    if (*field < 0) return f.error(key, "expected a number >= 0");
  }
  return h;
}

namespace {

double rate_of(const std::vector<std::pair<std::string, double>>& rates, const std::string& weight_type) {
  for (const auto& [type, flops] : rates) {
    if (type == weight_type) return flops;
  }
  return 0;
}

}  // namespace

double HardwareSpec::matmul_stream_flops_for(const std::string& weight_type) const {
  return rate_of(matmul_stream_flops, weight_type);
}

double HardwareSpec::matmul_stream1_flops_for(const std::string& weight_type) const {
  return rate_of(matmul_stream1_flops, weight_type);
}

double HardwareSpec::matmul_stream_call_s_for(const std::string& weight_type) const {
  return rate_of(matmul_stream_call_s, weight_type);
}

double HardwareSpec::matmul_stream1_call_s_for(const std::string& weight_type) const {
  return rate_of(matmul_stream1_call_s, weight_type);
}

double HardwareSpec::matmul_stream32_flops_for(const std::string& weight_type) const {
  return rate_of(matmul_stream32_flops, weight_type);
}

double HardwareSpec::matmul_stream32_call_s_for(const std::string& weight_type) const {
  return rate_of(matmul_stream32_call_s, weight_type);
}

double HardwareSpec::attention_flops_at(double kv_heads) const {
  if (attention_flops <= 0) return peak_flops;
  if (attention_batch_flops <= 0) return attention_flops;
  // Measured at 4 and at 128 KV heads per fork/join: log-linear in both between, clamped outside.
  const double t = std::clamp((std::log2(std::max(kv_heads, 1.0)) - 2.0) / 5.0, 0.0, 1.0);
  return std::exp((1.0 - t) * std::log(attention_flops) + t * std::log(attention_batch_flops));
}

double HardwareSpec::matmul_flops_for(const std::string& weight_type) const {
  const double rate = rate_of(matmul_flops, weight_type);
  return rate > 0 ? rate : peak_flops;
}

int64_t sequences_in_pool(int64_t pool, int64_t steady, int64_t scratch) {
  KVP_CHECK(steady > 0 && scratch >= 0);
  return pool < steady + scratch ? 0 : (pool - scratch) / steady;
}

int32_t keep_ratio_budget(int context_len, double keep_ratio) {
  const int32_t budget = std::max<int32_t>(1, static_cast<int32_t>(std::lround(keep_ratio * context_len)));
  return std::min(budget, context_len);
}

KvBudgets keep_ratio_budgets(const ModelSpec& m, int context_len, double keep_ratio, KvDtype dtype,
                             int aux_floats_per_slot) {
  KvBudgets b = KvBudgets::uniform(m.n_layers, m.n_kv_heads, m.head_dim(), keep_ratio_budget(context_len, keep_ratio), dtype);
  b.aux_floats_per_slot = aux_floats_per_slot;
  return b;
}

namespace {

// Parameters multiplied per token: every matrix, the classifier included (for tied embeddings the
// table itself). A step reads their share of the weight bytes: all but the norms and an untied
// embedding table, of which it reads one row per token.
int64_t matmul_parameters(const ModelSpec& m) {
  const int64_t d = m.dim, h = m.hidden_dim, hd = m.head_dim();
  const int64_t per_layer = d * m.n_heads * hd + 2 * d * m.n_kv_heads * hd + m.n_heads * hd * d + 3 * d * h;
  return m.n_layers * per_layer + int64_t{m.vocab_size} * d;
}

CapacitySide side(const ModelSpec& m, const HardwareSpec& hw, const CapacityQuery& q, int64_t weights,
                  const KvBudgets& kv, bool evicts, const DeltaParams& delta) {
  CapacitySide s;
  s.kv_bytes_per_sequence = kv.kv_bytes();
  const int prompt_len = q.prompt_len > 0 ? q.prompt_len : q.context_len;
  s.peak_kv_bytes_per_sequence = s.kv_bytes_per_sequence + kv.prefill_scratch(prompt_len, q.prefill_evict_chunk).kv_bytes();
  // Per-sequence activations of a decode step in fp32: residual, norms, q/k/v, attention output,
  // the two SwiGLU halves, logits, and the attention scores of one head row.
  s.activation_bytes_per_sequence =
      4 * (3 * int64_t{m.dim} + 2 * int64_t{m.n_kv_heads} * m.head_dim() + 2 * int64_t{m.hidden_dim} + m.vocab_size +
           q.context_len);
  const int64_t free = hw.memory_bytes - weights - q.runtime_reserve_bytes;
  s.max_batch = free > 0 ? free / (s.kv_bytes_per_sequence + s.activation_bytes_per_sequence) : 0;
  s.max_batch_at_peak = free > 0 ? free / (s.peak_kv_bytes_per_sequence + s.activation_bytes_per_sequence) : 0;
  s.batch = q.batch > 0 ? q.batch : s.max_batch;
  if (s.batch == 0) return s;
  const double B = double(s.batch);
  // A decode step runs its phases one after another (docs/ARCHITECTURE.md):
  // weight products: every matrix byte is read once for the batch, and 2 FLOPs per parameter and row
  // are done at the kernels' compute-bound rate; the slower of the two.
  const int64_t params = m.parameter_count(), mm_params = matmul_parameters(m);
  const double bytes_read = double(weights) * double(mm_params) / double(params);
  const double t_w_mem = bytes_read / hw.bandwidth_bytes_per_s;
  const double per_row = 2.0 * double(mm_params);
  const double cached = hw.matmul_flops_for(q.weight_type), streamed = hw.matmul_stream_flops_for(q.weight_type);
  // Matrices a step multiplies: 7 per layer and the classifier, each in one call (fork/join).
  const double n_matrices = 7.0 * m.n_layers + 1.0;
  const bool call_costs = !hw.matmul_stream_call_s.empty();
  if (streamed > 0) {
    // The first pass over each matrix streams it from memory with up to 4 rows; the rest of the
    // batch finds it in cache. Each matrix's call adds its fixed cost where it was measured.
    // 1..4 rows: a + b·rows through the 1-row and 4-row rates when both were measured.
    const double t4 = 4.0 * per_row / streamed + n_matrices * hw.matmul_stream_call_s_for(q.weight_type);
    const double streamed1 = hw.matmul_stream1_flops_for(q.weight_type);
    const double t1 = streamed1 > 0 ? per_row / streamed1 + n_matrices * hw.matmul_stream1_call_s_for(q.weight_type)
                                    : t4 / 4.0;
    const double first = B >= 4.0 ? t4 : t1 + (B - 1.0) * (t4 - t1) / 3.0;
    // The streamed rates are the weight products measured streaming from memory with the same
    // kernels, so they already include the memory's speed; the bandwidth figure (a plain read,
    // noisier: 39-80 GB/s in one hour on one VM) does not bound them again. Rows past 4: the slope
    // from 4 to 32 rows streamed where that was measured, else the in-cache rate.
    const double streamed32 = hw.matmul_stream32_flops_for(q.weight_type);
    const double per_extra_row =
        streamed32 > 0
            ? (32.0 * per_row / streamed32 + n_matrices * hw.matmul_stream32_call_s_for(q.weight_type) - t4) / 28.0
            : per_row / cached;
    s.weights_s = first + std::max(0.0, B - 4.0) * std::max(0.0, per_extra_row);
    s.memory_bound = t_w_mem >= first && B <= 4.0;
  } else {
    const double t_w_flop = B * per_row / cached;
    s.weights_s = std::max(t_w_mem, t_w_flop);
    s.memory_bound = t_w_mem >= t_w_flop;
  }
  // attention: each sequence's attended bytes read once (DELTA's sparse layers attend only the chosen
  // pages' share of their slots), 4·head_dim FLOPs per query head and attended slot, DELTA's copy of
  // the chosen tokens where the backend makes one (written at the read bandwidth), and an evicting
  // policy's bookkeeping per KV-head slot (over every slot).
  const double slots = double(kv.total_slots());
  double attended = slots, gathered = 0;
  if (delta.on()) {
    attended = 0;
    for (int l = 0; l < kv.n_layers; ++l) {
      for (int h = 0; h < kv.n_kv_heads; ++h) {
        const int64_t b = kv.budget(l, h);
        const bool sparse = delta.role(l) == kDeltaSparse;
        const double keys = sparse ? double(delta_sparse_keys(delta, q.sinks, b, q.context_len) - 1) : double(b);
        attended += keys;
        gathered += hw.delta_copy && sparse && keys < double(b) ? keys : 0.0;  // every slot chosen: no copy
      }
    }
  }
  const double bytes_per_slot = slots > 0 ? double(s.kv_bytes_per_sequence) / slots : 0.0;
  s.attended_slots_per_step = attended;
  s.kv_bytes_read_per_step = bytes_per_slot * attended;
  s.kv_bytes_copied_per_step = bytes_per_slot * gathered;
  const double group = double(m.n_heads / m.n_kv_heads);
  // Each layer shares batch x n_kv_heads heads out to the threads in one fork/join.
  const double attention_flops = hw.attention_flops_at(B * m.n_kv_heads);
  s.attention_s = std::max(B * s.kv_bytes_read_per_step / hw.bandwidth_bytes_per_s,
                           B * 4.0 * attended * m.head_dim() * group / attention_flops) +
                  B * s.kv_bytes_copied_per_step / hw.bandwidth_bytes_per_s +
                  (evicts ? B * slots * hw.evict_slot_s : 0.0);
  // fork/joins: attention per layer, and the 7 matrix products per layer and the classifier where
  // their call costs were not measured.
  s.overhead_s = hw.sync_s * (double(m.n_layers) + (call_costs ? 0.0 : n_matrices));
  s.decode_step_s = s.weights_s + s.attention_s + s.overhead_s;
  s.tokens_per_s = B / s.decode_step_s;
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
  plan.compression = q.compression;
  r.full = side(m, hw, q, r.weight_bytes, full, false, {});
  r.plan = side(m, hw, q, r.weight_bytes, plan, q.keep_ratio < 1.0 || !q.plan_budgets.empty() || plan.compressed(),
                q.delta);
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
