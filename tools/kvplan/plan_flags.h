// --plan FILE, or a uniform plan from --policy/--budget/--sinks/--recent, for run and eval.
#pragma once

#include <CLI/CLI.hpp>

#include <functional>
#include <optional>
#include <string>

#include "executor/model/model_locator.h"
#include "planner/calibration.h"
#include "planner/plan/plan.h"
#include "traces/trace.h"

namespace kvp::cli {

// --think and --mustafar with their windows (none unless given): on every command that builds a
// plan from flags, and on capacity.
struct CompressionFlags {
  std::optional<double> think;
  int think_window = 32;
  int think_recent = 32;
  std::optional<double> mustafar, mustafar_k, mustafar_v;
  int mustafar_recent = 32;

  void add_to(CLI::App* app);
  bool given() const { return think || mustafar || mustafar_k || mustafar_v; }
  // The flags as a plan's compression (checked against head_dim).
  Result<PlanCompression> compression(int head_dim) const;
};

struct PlanFlags {
  std::string plan_path;
  std::string policy;
  int budget = 0;
  std::optional<int> sinks;
  std::string recent;  // tokens ("16") or a share of the budget ("25%"); empty: the policy's default
  std::string vatp_base = "h2o";
  std::string crush_base = "vatp", crush_anchor = "mean";  // kvcrush
  double crush_ratio = 0.25;
  int crush_period = 8;
  uint64_t seed = 0;
  DeltaParams delta;  // --delta-layers (off when empty), --delta-pages, --delta-page-size, --delta-last
  std::string kv_dtype = "f32";
  CompressionFlags compress;  // ThinK and Mustafar on the kept tokens

  // `with_policy_list`: --policy is not added (eval --grid adds --policies itself).
  void add_to(CLI::App* app, bool with_policy = true);
  bool given() const { return !plan_path.empty() || !policy.empty(); }
  Result<PlanCompression> compression(int head_dim) const { return compress.compression(head_dim); }

  // Sinks, recent and the rest for `policy` at `budget`: flags over the policy's published defaults.
  Result<PolicyParams> params_for(const std::string& policy, int budget) const;
  Result<Plan> uniform(const PlanModel& model, const std::string& policy, int budget) const;
  // Loads --plan (refusing another model's) or builds the uniform plan of the flags.
  Result<Plan> resolve(const PlanModel& model, const std::string& model_path) const;
};

PlanModel plan_model(const ModelConfig& config, const std::string& fingerprint);

// --delta-layers, --delta-pages, --delta-page-size, --delta-last into `delta`.
void add_delta_flags(CLI::App* app, DeltaParams* delta);

// "0,0.4" -> {0, 0.4}: ratios in [0, 1); errors name the flag.
Result<std::vector<double>> parse_ratio_list(const std::string& flag, const std::string& text);

// The compressions crossed from --think-ratios and --mustafar-ratios ("0,0.4"; 0: none; Mustafar's
// sparsity for keys and values alike), ThinK's ratios outermost; a list not given is the base's
// single setting. Windows are the base's.
Result<std::vector<PlanCompression>> crossed_compressions(const PlanCompression& base, const std::string& think_ratios,
                                                          const std::string& mustafar_ratios);

// "1,2,3" -> {1, 2, 3}; errors name the flag.
Result<std::vector<int>> parse_int_list(const std::string& flag, const std::string& text);
std::vector<std::string> split_list(const std::string& text);

// A Markdown table with a row per policy and a column per budget; `cell` gives each entry's text.
std::string policy_budget_table(const std::vector<std::string>& policies, const std::vector<int>& budgets,
                                const std::function<std::string(const std::string& policy, int budget)>& cell);

// Loads --calibration `path` (none when empty), refusing one made for another model than the
// trace's (recorded at `trace_path`).
Result<std::optional<Calibration>> load_calibration_for(const std::string& path, const Trace& trace,
                                                        const std::string& trace_path);

// "0,4,8" or "0-3,10" (record --layers): increasing layer indices; the error names `flag`.
Result<std::vector<int>> parse_layer_list(const std::string& flag, const std::string& text);

// Prints to stderr what a bounded trace (record --layers, --query-stride) leaves the replay to
// estimate; nothing for a trace of every layer and every query.
void note_trace_bounds(const Trace& trace, const std::string& trace_path);

// Worker threads when the user gives none: every core.
int default_threads();

}  // namespace kvp::cli
