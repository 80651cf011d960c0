// The memory and capacity model (DESIGN §6): exact KV bytes per sequence from budgets, dtype and
// slot metadata; weight and workspace bytes; the largest batch that fits a device at a context
// length; and a roofline decode time per step — full cache and plan side by side.
#pragma once

#include <string>
#include <vector>

#include "common/status.h"
#include "planner/plan/kv_budgets.h"

namespace kvp {

// A model's published shape (configs/models/*.yaml).
struct ModelSpec {
  std::string name;
  int dim = 0, hidden_dim = 0, n_layers = 0, n_heads = 0, n_kv_heads = 0, vocab_size = 0, seq_len = 0;
  bool tied_embeddings = false;
  int head_size = 0;  // when the model states one; 0: dim / n_heads
  std::string source;
  int head_dim() const { return head_size > 0 ? head_size : dim / n_heads; }
  int64_t parameter_count() const;
  static Result<ModelSpec> load(const std::string& path);
};

// A device (configs/hardware/*.yaml).
struct HardwareSpec {
  std::string name;
  int64_t memory_bytes = 0;
  double bandwidth_bytes_per_s = 0;
  double peak_flops = 0;
  std::string source;
  static Result<HardwareSpec> load(const std::string& path);
};

struct CapacityQuery {
  int context_len = 0;               // tokens per sequence
  int weight_bytes_per_param = 2;    // fp16 weights
  int64_t weight_bytes = 0;          // when known exactly (a real model file's tensors): overrides the above
  KvDtype kv_dtype = KvDtype::kF16;
  int aux_floats_per_slot = 0;       // the plan's policy (VATP: 1)
  // Budgets of the plan per layer and KV head; empty: keep `keep_ratio` of the context everywhere.
  std::vector<int32_t> plan_budgets;  // [n_layers * n_kv_heads]
  double keep_ratio = 1.0;
  int64_t runtime_reserve_bytes = int64_t{1} << 30;  // CUDA context, cuBLAS workspace, allocator slack
};

struct CapacitySide {
  int64_t kv_bytes_per_sequence = 0;
  int64_t activation_bytes_per_sequence = 0;
  int64_t max_batch = 0;            // sequences that fit
  double decode_step_s = 0;         // roofline, one token for each of max_batch sequences
  double tokens_per_s = 0;
  bool memory_bound = true;
};

struct CapacityReport {
  int64_t weight_bytes = 0;
  int64_t workspace_bytes = 0;      // runtime reserve
  CapacitySide full, plan;
};

// REQUIRES: query.context_len >= 1; plan_budgets empty or n_layers * n_kv_heads long.
CapacityReport capacity(const ModelSpec& model, const HardwareSpec& hw, const CapacityQuery& query);

// The KV budgets of keeping `keep_ratio` of `context_len` tokens in every head (at least one).
KvBudgets keep_ratio_budgets(const ModelSpec& model, int context_len, double keep_ratio, KvDtype dtype,
                             int aux_floats_per_slot);

// Looks for NAME.yaml under configs/<kind>/ (source tree), or takes NAME as a path.
Result<std::string> find_config(const std::string& kind, const std::string& name);

}  // namespace kvp
