// kvplan calibrate: fit the map from replay error to measured accuracy (planner/calibration.h) over
// configurations that `kvplan eval` measured, replaying each of them on a trace of the same model.
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>

#include "common/progress.h"
#include "planner/calibration.h"
#include "planner/planner.h"
#include "tools/kvplan/command.h"
#include "tools/kvplan/plan_flags.h"

namespace kvp::cli {
namespace {

struct CalibrateFlags {
  std::string trace;
  std::vector<std::string> measured;
  std::string out;
  int threads = 0;
  bool json = false;
};

std::string budget_summary(const std::vector<std::vector<int32_t>>& budgets) {
  std::vector<int32_t> layers;
  for (const auto& l : budgets) layers.push_back(l.empty() ? 0 : l[0]);
  if (std::adjacent_find(layers.begin(), layers.end(), std::not_equal_to<>()) == layers.end()) {
    return fmt::format("uniform {}", layers.empty() ? 0 : layers[0]);
  }
  return fmt::format("layers {}", fmt::join(layers, "/"));
}

Status calibrate(const CalibrateFlags& flags) {
  KVP_ASSIGN_OR_RETURN(Trace trace, Trace::open(flags.trace));
  note_trace_bounds(trace, flags.trace);
  const TraceModelShape& shape = trace.model();
  const PlanModel model = plan_model_of(shape);
  struct Item {
    Measured m;
    ReplayConfig config;
  };
  std::vector<Item> items;
  for (const std::string& path : flags.measured) {
    KVP_ASSIGN_OR_RETURN(Measured m, Measured::load(path));
    if (m.model_fingerprint != model.fingerprint) {
      return make_error("{}: model_fingerprint: measured on the model of sha256 {}, the trace {} is of {}", path,
                        m.model_fingerprint, flags.trace, model.fingerprint);
    }
    if (m.prompt_len != trace.prompt_len(0)) {
      return make_error("{}: data.prompt_len: measured with a {}-token prompt, the trace prefills {}: record the "
                        "trace with the same --prompt-len", path, m.prompt_len, trace.prompt_len(0));
    }
    if (static_cast<int>(m.budgets.size()) != shape.n_layers) {
      return make_error("{}: config.budgets: {} layers, the model has {}", path, m.budgets.size(), shape.n_layers);
    }
    KVP_ASSIGN_OR_RETURN(PolicyParams params, measured_params(m, path));
    if (const auto e = delta_param_error(params.delta, shape.n_layers)) {
      return make_error("{}: config.detail: delta_{}: {}", path, e->field, e->message);
    }
    KVP_RETURN_IF_ERROR(check_delta_layers(params.delta, trace.layers(), flags.trace));
    KVP_ASSIGN_OR_RETURN(auto policy, make_policy(m.policy, params));
    if (!policy->evicts() && !params.delta.on()) continue;  // the full cache has no error to calibrate
    Result<std::vector<SlotCompression>> compression = m.compression.layers(shape.n_layers, shape.head_dim);
    if (!compression.ok()) return compression.error().with_context(path);
    items.push_back({m, ReplayConfig{.policy = std::shared_ptr<const Policy>(std::move(policy)),
                                     .budgets = m.budgets,
                                     .compression = std::move(*compression)}});
  }
  // Consecutive configurations of one policy share the prompt prefill.
  std::stable_sort(items.begin(), items.end(), [](const Item& a, const Item& b) { return a.m.policy < b.m.policy; });
  KVP_ASSIGN_OR_RETURN(std::unique_ptr<ReplayEngine> engine, ReplayEngine::create(trace, flags.threads > 0 ? flags.threads : default_threads()));
  std::vector<ReplayConfig> configs;
  for (const Item& it : items) configs.push_back(it.config);
  std::vector<ReplayResult> replays;
  {
    Progress progress("calibrate: replaying measured configurations", 1);
    engine->set_progress([&](int64_t tasks_done, int64_t tasks) {
      progress.update(0, fmt::format("trace pass {}/{} sequence-layers", tasks_done, tasks));
    });
    replays = engine->run_batch(configs);
    progress.finish(1);
  }
  std::vector<CalibrationPoint> points;
  for (size_t i = 0; i < items.size(); ++i) {
    const Measured& m = items[i].m;
    const std::string variant = calibration_policy_key(m.policy, configs[i].policy->params(), m.compression);
    points.push_back(CalibrationPoint{.label = fmt::format("{} {}", variant, budget_summary(m.budgets)),
                                      .policy = variant,
                                      .kv_bytes_per_sequence = m.kv_bytes_per_sequence,
                                      .layer_energy = replays[i].resid_energy,
                                      .delta_nll = m.delta_nll,
                                      .top1_agreement = m.top1_agreement});
  }
  KVP_ASSIGN_OR_RETURN(Calibration calib, fit_calibration(model, std::move(points)));
  calib.trace = flags.trace;
  KVP_RETURN_IF_ERROR(calib.save(flags.out));
  const CalibrationFit& f = calib.fit;
  if (flags.json) {
    nlohmann::json j = {{"out", flags.out},
                        {"n_points", f.n_points},
                        {"layer_weights", calib.layer_weights},
                        {"nll_power", calib.nll_power},
                        {"spearman", f.spearman},
                        {"spearman_leave_one_out", f.spearman_loo},
                        {"spearman_leave_policy_out", f.spearman_lopo},
                        {"delta_nll_mae_leave_one_out", f.delta_nll_mae_loo},
                        {"delta_nll_spread", f.delta_nll_spread},
                        {"top1_mae_leave_one_out", f.top1_mae_loo}};
    std::printf("%s\n", j.dump(2).c_str());
    return ok_status();
  }
  std::printf("| configuration | measured ΔNLL | predicted (leave one out) | measured top-1 |\n|---|---|---|---|\n");
  for (size_t i = 0; i < calib.points.size(); ++i) {
    const CalibrationPoint& p = calib.points[i];
    std::printf("| %s | %.4f | %.4f | %.4f |\n", p.label.c_str(), p.delta_nll, calib.points_predicted_loo[i],
                p.top1_agreement);
  }
  std::printf("\nwrote %s: %d configurations; ΔNLL = (Σ w_l E_l)^%.3f with layer weights [%s]\n", flags.out.c_str(),
              f.n_points, calib.nll_power, fmt::format("{:.3g}", fmt::join(calib.layer_weights, ", ")).c_str());
  std::printf("fit: Spearman %.3f in sample, %.3f leave-one-out, %.3f leave-one-policy-out; ΔNLL error %.4f nats "
              "leave-one-out (%.1f%% of the %.4f spread); top-1 error %.4f\n",
              f.spearman, f.spearman_loo, f.spearman_lopo, f.delta_nll_mae_loo,
              100 * f.delta_nll_mae_loo / std::max(f.delta_nll_spread, 1e-12), f.delta_nll_spread, f.top1_mae_loo);
  return ok_status();
}

}  // namespace

Command add_calibrate_command(CLI::App& app) {
  auto flags = std::make_shared<CalibrateFlags>();
  CLI::App* sub = app.add_subcommand(
      "calibrate",
      "Fit the map from replay error to measured ΔNLL and top-1 agreement over configurations measured by "
      "`kvplan eval`, replayed on a trace of the same model; writes calib.yaml for plan, sweep and check");
  sub->add_option("--trace", flags->trace, "Trace directory (kvplan record) of the same model and prompt length")
      ->required();
  sub->add_option("--measured", flags->measured, "measured.yaml files written by kvplan eval (one per configuration)")
      ->required()
      ->expected(1, -1);
  sub->add_option("--out", flags->out, "calib.yaml to write")->required();
  sub->add_option("--threads", flags->threads, "Replay threads (default: all cores)");
  sub->add_flag("--json", flags->json, "Machine-readable summary");
  return {sub, [flags] { return calibrate(*flags); }};
}

}  // namespace kvp::cli
