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

namespace {

// Uniform replays at every candidate budget, in one batch.
std::vector<ReplayResult> uniform_replays(const ReplayEngine& engine, const std::shared_ptr<const Policy>& policy,
                                          const std::vector<int32_t>& budgets, bool head_energy,
                                          const std::vector<SlotCompression>& compression) {
  const TraceModelShape& m = engine.model();
  std::vector<ReplayConfig> configs;
  for (int32_t b : budgets) {
    configs.push_back({.policy = policy,
                       .budgets = std::vector<std::vector<int32_t>>(m.n_layers, std::vector<int32_t>(m.n_kv_heads, b)),
                       .head_energy = head_energy,
                       .compression = compression});
  }
  return engine.run_batch(configs);
}

}  // namespace

std::vector<ErrorCurve> layer_error_curves(const ReplayEngine& engine, const std::shared_ptr<const Policy>& policy,
                                           const std::vector<int32_t>& budgets,
                                           const std::function<void(int)>& progress,
                                           const std::vector<SlotCompression>& compression) {
  const std::vector<ReplayResult> results = uniform_replays(engine, policy, budgets, false, compression);
  std::vector<ErrorCurve> curves(engine.model().n_layers);
  for (size_t i = 0; i < budgets.size(); ++i) {
    for (size_t l = 0; l < curves.size(); ++l) {
      curves[l].budgets.push_back(budgets[i]);
      curves[l].error.push_back(results[i].resid_energy[l]);
    }
  }
  if (progress) progress(static_cast<int>(budgets.size()));
  return curves;
}

std::vector<ErrorCurve> head_error_curves(const ReplayEngine& engine, const std::shared_ptr<const Policy>& policy,
                                          const std::vector<int32_t>& budgets,
                                          const std::function<void(int)>& progress,
                                          const std::vector<SlotCompression>& compression) {
  const std::vector<ReplayResult> results = uniform_replays(engine, policy, budgets, true, compression);
  const int L = engine.model().n_layers, KVH = engine.model().n_kv_heads;
  std::vector<ErrorCurve> curves(size_t(L) * KVH);
  for (size_t i = 0; i < budgets.size(); ++i) {
    for (int l = 0; l < L; ++l) {
      for (int h = 0; h < KVH; ++h) {
        curves[size_t(l) * KVH + h].budgets.push_back(budgets[i]);
        curves[size_t(l) * KVH + h].error.push_back(results[i].head_resid_energy[l][h]);
      }
    }
  }
  if (progress) progress(static_cast<int>(budgets.size()));
  return curves;
}

void record_replay_predictions(const ReplayResult& r, Plan* plan) {
  plan->predicted["replay_resid_energy"] = r.total_resid_energy();
  plan->predicted["replay_rel_error"] = r.mean_rel_error();
  plan->predicted["replay_retained_mass"] = r.mean_retained_mass();
  // Keys attended per layer, KV head and decode step: what a step reads (DELTA's sparse layers fewer).
  double attended = 0;
  for (double a : r.attended) attended += a;
  if (!r.attended.empty()) plan->predicted["replay_attended_per_head_step"] = attended / double(r.attended.size());
}

Plan allocated_plan(const PlanModel& model, const std::string& policy, const PolicyParams& params,
                    const std::vector<int32_t>& budgets, const PlanCompression& compression) {
  const bool per_head = budgets.size() == size_t(model.n_layers) * model.n_kv_heads;
  KVP_CHECK(per_head || budgets.size() == size_t(model.n_layers), "{} budgets for {} layers x {} KV heads",
            budgets.size(), model.n_layers, model.n_kv_heads);
  Plan plan;
  plan.model = model;
  plan.policy = policy;
  plan.params = params;
  plan.kv_dtype = KvDtype::kF32;
  plan.compression = compression;
  for (int l = 0; l < model.n_layers; ++l) {
    plan.budgets.push_back(per_head ? std::vector<int32_t>(budgets.begin() + size_t(l) * model.n_kv_heads,
                                                           budgets.begin() + size_t(l + 1) * model.n_kv_heads)
                                    : std::vector<int32_t>(model.n_kv_heads, budgets[l]));
  }
  plan.kv_bytes_per_sequence = plan.kv_budgets().kv_bytes();
  return plan;
}

std::vector<ErrorCurve> weighted_curves(std::vector<ErrorCurve> curves, const std::vector<double>& layer_weights) {
  if (layer_weights.empty()) return curves;
  KVP_CHECK(!layer_weights.empty() && curves.size() % layer_weights.size() == 0, "{} layer weights for {} curves",
            layer_weights.size(), curves.size());
  const size_t per_layer = curves.size() / layer_weights.size();
  for (size_t u = 0; u < curves.size(); ++u) {
    for (double& e : curves[u].error) e *= layer_weights[u / per_layer];
  }
  return curves;
}

Result<PlanOutcome> make_plan(const ReplayEngine& engine, const std::string& trace_dir, const PlanRequest& req,
                              const std::function<void(int)>& progress) {
  const TraceModelShape& m = engine.model();
  KVP_ASSIGN_OR_RETURN(auto policy_impl, make_policy(req.policy, req.params));
  std::shared_ptr<const Policy> policy(std::move(policy_impl));
  const int32_t longest = engine.max_length();  // budgets beyond it are never needed
  const int32_t min_budget = policy->evicts() ? std::max(1, policy->min_budget()) : longest;
  const bool per_head = req.allocation == Allocation::kGreedyHead;
  if (per_head && policy->shared_per_layer()) {
    return make_error("--allocation greedy-head: policy {} keeps one set of positions per layer, so the heads of a "
                      "layer need equal budgets; use greedy", req.policy);
  }
  KVP_ASSIGN_OR_RETURN(const std::vector<SlotCompression> compression, req.compression.layers(m.n_layers, m.head_dim));
  PlanOutcome out;
  if (req.allocation == Allocation::kGreedy) {
    out.curves = layer_error_curves(engine, policy, candidate_budgets(min_budget, longest), progress, compression);
  } else if (per_head) {
    out.curves = head_error_curves(engine, policy, candidate_budgets(min_budget, longest), progress, compression);
  }
  KVP_ASSIGN_OR_RETURN(std::vector<int32_t> budgets,
                       allocate(req.allocation,
                                {.n_layers = m.n_layers, .n_kv_heads = m.n_kv_heads, .total_slots = req.total_slots,
                                 .min_budget = min_budget, .max_budget = longest},
                                weighted_curves(out.curves, req.layer_weights)));
  out.plan = allocated_plan(plan_model_of(m), req.policy, req.params, budgets, req.compression);
  Plan& plan = out.plan;
  out.replay = engine.run({.policy = policy, .budgets = plan.budgets, .compression = compression});
  record_replay_predictions(out.replay, &plan);
  plan.provenance["trace"] = trace_dir;
  plan.provenance["allocation"] = allocation_name(req.allocation);
  plan.provenance["memory_limit"] = req.memory_description;
  return out;
}

}  // namespace kvp
