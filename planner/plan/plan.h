// plan.yaml: what the executor must enforce — policy, per-layer and per-head budgets, KV dtype —
// for which model, with what the planner predicted and how the plan was made. Versioned; parsed
// strictly (unknown keys are errors). The schema is documented in planner/plan/PLAN_FORMAT.md.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <yaml-cpp/yaml.h>

#include "planner/plan/kv_budgets.h"
#include "planner/policy/policy.h"

namespace kvp {

inline constexpr const char* kPlanFormatName = "kvplan-plan";
// Version 2 adds key_channels and sparsity (ThinK, Mustafar), version 3 delta (DELTA's layer roles);
// a plan is written as the lowest version that holds what it has, and every version is read.
inline constexpr int kPlanFormatVersion = 3;

// The model a plan was made for.
struct PlanModel {
  std::string fingerprint;  // sha256 of the weights file
  int dim = 0;
  int n_layers = 0;
  int n_heads = 0;
  int n_kv_heads = 0;
  int head_dim = 0;
  int vocab_size = 0;
  int seq_len = 0;
};

// The `model:` map of plans and calibrations.
void emit_plan_model(YAML::Emitter& out, const PlanModel& model);
Result<PlanModel> parse_plan_model(const YAML::Node& node, const std::string& path);

// ThinK and Mustafar on the kept tokens (kv_compression.h): ratios per layer, or empty for none.
struct PlanCompression {
  std::vector<double> think_ratio;     // key_channels.ratio: share of key channels dropped
  int think_window = 32;               // key_channels.window: last prompt queries scoring channels
  int think_recent = 32;               // key_channels.recent: newest keys at full width
  std::vector<double> key_sparsity;    // sparsity.keys: share of each key's elements dropped
  std::vector<double> value_sparsity;  // sparsity.values
  int dense_recent = 32;               // sparsity.recent: newest keys and values kept dense

  bool think() const { return !think_ratio.empty(); }
  bool mustafar() const { return !key_sparsity.empty(); }
  bool any() const { return think() || mustafar(); }
  // Per layer, the counts of the ratios (empty when !any()); errors name the plan fields.
  Result<std::vector<SlotCompression>> layers(int n_layers, int head_dim) const;
  // The suffix of a configuration's name: "+think0.4", "+mustafar0.5", "+mustafar_k0.5_v0.3"
  // ("" when none).
  std::string label() const;
  bool operator==(const PlanCompression&) const = default;
};

class YamlFields;
// The key_channels and sparsity maps (PLAN_FORMAT.md) of a plan or a measured.yaml: written when
// the compression has them; read when present, lists of ratios checked against n_layers and
// windows against [1, max_window]. The ratios themselves are checked by PlanCompression::layers.
void emit_compression(YAML::Emitter& out, const PlanCompression& compression);
Status read_compression(const YamlFields& fields, int n_layers, int max_window, PlanCompression* compression);

struct Plan {
  PlanModel model;
  std::string policy;  // a name from policy_names()
  PolicyParams params;  // DELTA's roles (params.delta) are the plan's `delta` map
  KvDtype kv_dtype = KvDtype::kF32;
  std::vector<std::vector<int32_t>> budgets;  // [n_layers][n_kv_heads] slots
  PlanCompression compression;
  // Predictions: kv_bytes_per_sequence is exact; others (accuracy) come with calibration.
  int64_t kv_bytes_per_sequence = 0;
  std::map<std::string, double> predicted;  // e.g. delta_nll, top1_agreement
  // Provenance: free-form strings such as tool, command, trace.
  std::map<std::string, std::string> provenance;

  // The budgets and slot layout the executor allocates (aux floats from the policy).
  KvBudgets kv_budgets() const;
  int32_t min_budget() const;
  int32_t max_budget() const;

  std::string to_yaml() const;
  // Parses and validates the schema, the policy and the budgets (each >= sinks + recent for
  // evicting policies). Errors read "<path>: <field>: expected ..., found ...".
  static Result<Plan> parse(const std::string& yaml_text, const std::string& path);
  static Result<Plan> load(const std::string& path);
  Status save(const std::string& path) const;

  // Refuses a plan made for another model (fingerprint or shape).
  Status check_model(const PlanModel& model, const std::string& plan_path,
                     const std::string& model_path) const;
};

// A plan with the same budget for every layer and head (kv_bytes filled in).
Result<Plan> uniform_plan(const PlanModel& model, const std::string& policy, const PolicyParams& params,
                          int32_t budget_tokens, KvDtype kv_dtype, const PlanCompression& compression = {});

}  // namespace kvp
