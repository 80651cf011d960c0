// From a trace to a plan: replay error curves, allocation under a memory limit, and the plan with
// its replay predictions.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "planner/allocation.h"
#include "planner/plan/plan.h"
#include "planner/replay.h"

namespace kvp {

PlanModel plan_model_of(const TraceModelShape& m);

// A plan of allocate()'s budgets — one per layer (every KV head of a layer alike), or one per layer
// and KV head ([layer * n_kv_heads + head]) — with f32 KV and its bytes filled in.
Plan allocated_plan(const PlanModel& model, const std::string& policy, const PolicyParams& params,
                    const std::vector<int32_t>& budgets, const PlanCompression& compression = {});

// Candidate budgets for error curves: a geometric ladder from min_budget to max_budget.
std::vector<int32_t> candidate_budgets(int32_t min_budget, int32_t max_budget);

struct PlanRequest {
  std::string policy;
  PolicyParams params;
  Allocation allocation = Allocation::kGreedy;
  int64_t total_slots = 0;  // per sequence, over layers and KV heads
  std::string memory_description;  // how the limit was given, for provenance
  // Greedy minimises Σ_l layer_weights[l] · E_l(b_l): a calibration's layer weights make it
  // minimise predicted ΔNLL rather than raw residual energy. Empty: every layer weighs 1.
  std::vector<double> layer_weights;
  PlanCompression compression;  // ThinK and Mustafar on the kept tokens, replayed with every budget
};

// Scales each layer's curves by its weight (for greedy on calibrated error); empty weights: as is.
// `curves` holds one curve per layer, or (greedy-head) one per layer and KV head in layer order.
std::vector<ErrorCurve> weighted_curves(std::vector<ErrorCurve> curves, const std::vector<double>& layer_weights);

struct PlanOutcome {
  Plan plan;
  ReplayResult replay;             // of the chosen budgets
  std::vector<ErrorCurve> curves;  // per layer (greedy), per layer and KV head (greedy-head)
};

// Per-layer error curves (residual-stream energy) from uniform replays at `budgets`.
std::vector<ErrorCurve> layer_error_curves(const ReplayEngine& engine, const std::shared_ptr<const Policy>& policy,
                                           const std::vector<int32_t>& budgets,
                                           const std::function<void(int)>& progress = {},
                                           const std::vector<SlotCompression>& compression = {});

// Per layer and KV head ([layer * n_kv_heads + head]): each head's own residual energy from the
// same uniform replays (ReplayResult::head_resid_energy).
std::vector<ErrorCurve> head_error_curves(const ReplayEngine& engine, const std::shared_ptr<const Policy>& policy,
                                          const std::vector<int32_t>& budgets,
                                          const std::function<void(int)>& progress = {},
                                          const std::vector<SlotCompression>& compression = {});

Result<PlanOutcome> make_plan(const ReplayEngine& engine, const std::string& trace_dir, const PlanRequest& request,
                              const std::function<void(int)>& progress = {});

// Fills plan.predicted with a replay's aggregate errors.
void record_replay_predictions(const ReplayResult& r, Plan* plan);

}  // namespace kvp
