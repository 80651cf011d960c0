#include "planner/planner.h"

#include <algorithm>

namespace kvp {

PlanModel plan_model_of(const TraceModelShape& m) {
  return PlanModel{.fingerprint = m.fingerprint, .dim = m.dim, .n_layers = m.n_layers, .n_heads = m.n_heads,
                   .n_kv_heads = m.n_kv_heads, .head_dim = m.head_dim, .vocab_size = m.vocab_size,
                   .seq_len = m.seq_len};
}

std::vector<int32_t> candidate_budgets(int32_t min_budget, int32_t max_budget) {
  static const int32_t kLadder[] = {4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024,
                                    1536, 2048, 3072, 4096, 6144, 8192, 12288, 16384, 24576, 32768};
  std::vector<int32_t> out = {std::max(min_budget, 1)};
  for (int32_t b : kLadder) {
    if (b > out.back() && b < max_budget) out.push_back(b);
  }
  if (max_budget > out.back()) out.push_back(max_budget);
  return out;
}

std::vector<ErrorCurve> layer_error_curves(const ReplayEngine& engine, const std::shared_ptr<const Policy>& policy,
                                           const std::vector<int32_t>& budgets,
                                           const std::function<void(int)>& progress) {
  const TraceModelShape& m = engine.model();
  std::vector<ErrorCurve> curves(m.n_layers);
  std::vector<ReplayConfig> configs;
  for (int32_t b : budgets) {
    configs.push_back({.policy = policy,
                       .budgets = std::vector<std::vector<int32_t>>(m.n_layers, std::vector<int32_t>(m.n_kv_heads, b))});
  }
  const std::vector<ReplayResult> results = engine.run_batch(configs);
  for (size_t i = 0; i < budgets.size(); ++i) {
    for (int l = 0; l < m.n_layers; ++l) {
      curves[l].budgets.push_back(budgets[i]);
      curves[l].error.push_back(results[i].resid_energy[l]);
    }
  }
  if (progress) progress(static_cast<int>(budgets.size()));
  return curves;
}

void record_replay_predictions(const ReplayResult& r, Plan* plan) {
  plan->predicted["replay_resid_energy"] = r.total_resid_energy();
  plan->predicted["replay_rel_error"] = r.mean_rel_error();
  plan->predicted["replay_retained_mass"] = r.mean_retained_mass();
}

Plan layer_plan(const PlanModel& model, const std::string& policy, const PolicyParams& params,
                const std::vector<int32_t>& layer_budgets) {
  Plan plan;
  plan.model = model;
  plan.policy = policy;
  plan.params = params;
  plan.kv_dtype = KvDtype::kF32;
  for (int32_t b : layer_budgets) plan.budgets.push_back(std::vector<int32_t>(model.n_kv_heads, b));
  plan.kv_bytes_per_sequence = plan.kv_budgets().kv_bytes();
  return plan;
}

std::vector<ErrorCurve> weighted_curves(std::vector<ErrorCurve> curves, const std::vector<double>& layer_weights) {
  if (layer_weights.empty()) return curves;
  KVP_CHECK(layer_weights.size() == curves.size(), "{} layer weights for {} layers", layer_weights.size(), curves.size());
  for (size_t l = 0; l < curves.size(); ++l) {
    for (double& e : curves[l].error) e *= layer_weights[l];
  }
  return curves;
}

Result<PlanOutcome> make_plan(const ReplayEngine& engine, const std::string& trace_dir, const PlanRequest& req,
                              const std::function<void(int)>& progress) {
  const TraceModelShape& m = engine.model();
  KVP_ASSIGN_OR_RETURN(auto policy_impl, make_policy(req.policy, req.params));
  std::shared_ptr<const Policy> policy(std::move(policy_impl));
  const int32_t longest = engine.max_length();  // budgets beyond it are never needed
  const int32_t min_budget = policy->evicts() ? std::max(1, req.params.sinks + req.params.recent) : longest;
  PlanOutcome out;
  if (req.allocation == Allocation::kGreedy) {
    out.curves = layer_error_curves(engine, policy, candidate_budgets(min_budget, longest), progress);
  }
  KVP_ASSIGN_OR_RETURN(std::vector<int32_t> budgets,
                       allocate(req.allocation,
                                {.n_layers = m.n_layers, .n_kv_heads = m.n_kv_heads, .total_slots = req.total_slots,
                                 .min_budget = min_budget, .max_budget = longest},
                                weighted_curves(out.curves, req.layer_weights)));
  out.plan = layer_plan(plan_model_of(m), req.policy, req.params, budgets);
  Plan& plan = out.plan;
  out.replay = engine.run({.policy = policy, .budgets = plan.budgets});
  record_replay_predictions(out.replay, &plan);
  plan.provenance["trace"] = trace_dir;
  plan.provenance["allocation"] = allocation_name(req.allocation);
  plan.provenance["memory_limit"] = req.memory_description;
  return out;
}

}  // namespace kvp
