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
#include "tools/kvplan/task_predict.h"
#include "common/file_util.h"

namespace kvp::cli {
namespace {

struct CalibrateFlags {
  std::string trace;
  std::vector<std::string> measured;
  std::string out;
  int threads = 0;
  bool json = false;
  // Task accuracy (task_calibration.h): task traces with eval --tasks' outcomes, pairwise.
  std::vector<std::string> task_traces, outcomes, holdout_traces, holdout_outcomes;
  std::string report;
};

// The task traces and outcomes of `traces` and `outcomes`, pairwise, as observations.
Result<std::vector<TaskObservation>> load_observations(const std::vector<std::string>& traces,
                                                       const std::vector<std::string>& outcomes, const char* flag,
                                                       std::string* fingerprint, std::string* sources, double* max_gap) {
  if (traces.size() != outcomes.size()) {
    return make_error("{}: {} task traces and {} outcomes files: give them in pairs, in the same order", flag,
                      traces.size(), outcomes.size());
  }
  std::vector<TaskObservation> all;
  for (size_t i = 0; i < traces.size(); ++i) {
    KVP_ASSIGN_OR_RETURN(TaskTrace trace, TaskTrace::load(traces[i]));
    if (fingerprint->empty()) *fingerprint = trace.model_fingerprint;
    if (trace.model_fingerprint != *fingerprint) {
      return make_error("{}: model_fingerprint: another model than the first task trace's", traces[i]);
    }
    double gap = 0;
    KVP_ASSIGN_OR_RETURN(std::vector<TaskObservation> obs, task_observations(trace, traces[i], outcomes[i], &gap));
    *max_gap = std::max(*max_gap, gap);
    if (gap > 1e-3) {
      std::fprintf(stderr, "warning: %s: the replay keeps a share of needle tokens up to %.4f off what %s measured "
                   "(configurations rebuilt differently?)\n", traces[i].c_str(), gap, outcomes[i].c_str());
    }
    if (sources) *sources += fmt::format("{}{} + {}", sources->empty() ? "" : "; ", traces[i], outcomes[i]);
    all.insert(all.end(), obs.begin(), obs.end());
  }
  return all;
}

std::string check_markdown(const std::string& title, const TaskPredictionCheck& c) {
  std::string md = fmt::format("### {}\n\n{} configurations: mean absolute error {:.3f}; intervals cover {:.0f}%; "
                               "Spearman across policies at one memory {:.2f} (mean of {} memories with a ranking); "
                               "predicted best measured best or within noise at {:.0f}% of {} memories\n\n",
                               title, c.configs.size(), c.mae, 100 * c.coverage, c.spearman, c.n_ranked,
                               100 * c.best_rate, c.memories.size());
  md += "| length | budget | configurations | Spearman | predicted best | its measured | measured best | noise | |\n"
        "|---:|---:|---:|---:|---|---:|---|---:|---|\n";
  for (const TaskMemoryRow& m : c.memories) {
    md += fmt::format("| {} | {} | {} | {} | {} | {:.3f} | {} ({:.3f}) | {:.3f} | {} |\n", m.length, m.budget,
                      m.n_configs, m.measured_tied ? "tied" : fmt::format("{:.2f}", m.spearman), m.predicted_best,
                      m.predicted_best_measured, m.measured_best, m.measured_best_accuracy, m.noise,
                      m.best_ok ? "ok" : "missed");
  }
  md += "\n| configuration | length | n | predicted | interval | measured | |\n|---|---:|---:|---:|---|---:|---|\n";
  for (const TaskPredictionRow& r : c.configs) {
    const bool in = r.measured >= r.predicted.low - 1e-12 && r.measured <= r.predicted.high + 1e-12;
    md += fmt::format("| {} | {} | {} | {:.3f} | [{:.3f}, {:.3f}] | {:.3f} | {} |\n", r.config, r.length, r.n,
                      r.predicted.accuracy, r.predicted.low, r.predicted.high, r.measured, in ? "" : "outside");
  }
  return md + "\n";
}

nlohmann::json check_json(const TaskPredictionCheck& c) {
  nlohmann::json j = {{"configs", c.configs.size()}, {"mae", c.mae}, {"coverage", c.coverage}, {"spearman", c.spearman},
                      {"memories_ranked", c.n_ranked}, {"best_rate", c.best_rate}, {"memories", c.memories.size()}};
  for (const TaskPredictionRow& r : c.configs) {
    j["rows"].push_back({{"config", r.config}, {"policy", r.policy}, {"length", r.length}, {"budget", r.budget}, {"n", r.n},
                         {"measured", r.measured}, {"predicted", r.predicted.accuracy},
                         {"interval", {r.predicted.low, r.predicted.high}}});
  }
  return j;
}

// calibrate --task-trace: fits task_calibration.yaml, checks it on held-out instances (the folds)
// and on --holdout pairs (another length), prints and optionally writes the report.
Status calibrate_tasks(const CalibrateFlags& flags) {
  if (!flags.trace.empty() || !flags.measured.empty()) {
    return make_error("--task-trace and --trace/--measured: a calibration is of task accuracy or of ΔNLL; run twice");
  }
  std::string fingerprint, sources;
  double gap = 0;  // the replay's needle share against the closed loop's, worst row
  KVP_ASSIGN_OR_RETURN(std::vector<TaskObservation> obs,
                       load_observations(flags.task_traces, flags.outcomes, "--task-trace/--outcomes", &fingerprint,
                                         &sources, &gap));
  std::vector<double> held;
  KVP_ASSIGN_OR_RETURN(TaskCalibration cal, fit_task_calibration(obs, fingerprint, &held));
  cal.sources = sources;
  const TaskPredictionCheck folds = check_task_predictions(cal, obs, held);
  std::optional<TaskPredictionCheck> holdout;
  if (!flags.holdout_traces.empty() || !flags.holdout_outcomes.empty()) {
    std::string fp = fingerprint;
    KVP_ASSIGN_OR_RETURN(std::vector<TaskObservation> hobs,
                         load_observations(flags.holdout_traces, flags.holdout_outcomes, "--holdout-trace/--holdout-outcomes",
                                           &fp, nullptr, &gap));
    std::vector<double> p;
    for (const TaskObservation& o : hobs) p.push_back(cal.instance_probability(o.features));
    holdout = check_task_predictions(cal, hobs, p);
  }
  KVP_RETURN_IF_ERROR(cal.save(flags.out));
  std::string md = fmt::format("## Task accuracy predicted from task traces\n\nCalibrated on {} observations ({} "
                               "instances, {} configurations, lengths {}): features {}, chosen by held-out log-loss "
                               "among\n\n| features | held-out log-loss |\n|---|---:|\n",
                               cal.n_observations, cal.n_instances, cal.n_configs, fmt::join(cal.lengths, ", "),
                               cal.feature_label());
  for (const TaskCandidate& c : cal.candidates) md += fmt::format("| {} | {:.4f} |\n", c.name, c.cv_log_loss);
  md += fmt::format("\ncoefficients {:.3f}, rescue rate {:.3f}, configuration error beyond the binomial {:.3f}; the "
                    "replay keeps the share of needle tokens the closed loop kept (largest difference {:.4f})\n\n",
                    fmt::join(cal.coef, ", "), cal.rescue_rate, cal.model_sd, gap);
  md += check_markdown("Held-out instances (5 folds by instance, the calibration's lengths)", folds);
  if (holdout) md += check_markdown("Held-out length (--holdout-trace)", *holdout);
  if (!flags.report.empty()) KVP_RETURN_IF_ERROR(write_file_atomic(flags.report, md));
  if (flags.json) {
    nlohmann::json j = {{"out", flags.out}, {"features", cal.feature_label()}, {"coef", cal.coef},
                        {"rescue_rate", cal.rescue_rate}, {"model_sd", cal.model_sd}, {"replay_needle_gap", gap},
                        {"held_out_instances", check_json(folds)}};
    if (holdout) j["held_out_length"] = check_json(*holdout);
    std::printf("%s\n", j.dump(2).c_str());
  } else {
    std::printf("%swrote %s%s\n", md.c_str(), flags.out.c_str(),
                flags.report.empty() ? "" : fmt::format(" and {}", flags.report).c_str());
  }
  return ok_status();
}

std::string budget_summary(const std::vector<std::vector<int32_t>>& budgets) {
  std::vector<int32_t> layers;
  for (const auto& l : budgets) layers.push_back(l.empty() ? 0 : l[0]);
  if (std::adjacent_find(layers.begin(), layers.end(), std::not_equal_to<>()) == layers.end()) {
    return fmt::format("uniform {}", layers.empty() ? 0 : layers[0]);
  }
  return fmt::format("layers {}", fmt::join(layers, "/"));
}

Status calibrate(const CalibrateFlags& flags) {
  if (!flags.task_traces.empty() || !flags.outcomes.empty()) return calibrate_tasks(flags);
  if (flags.trace.empty() || flags.measured.empty()) {
    return make_error("calibrate: give --trace with --measured (ΔNLL), or --task-trace with --outcomes (task accuracy)");
  }
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
      "`kvplan eval`, replayed on a trace of the same model; writes calib.yaml for plan, sweep and check. With "
      "--task-trace: the predictor of task accuracy from task traces and eval --tasks outcomes");
  sub->add_option("--trace", flags->trace, "Trace directory (kvplan record) of the same model and prompt length");
  sub->add_option("--measured", flags->measured, "measured.yaml files written by kvplan eval (one per configuration)")
      ->expected(1, -1);
  sub->add_option("--task-trace", flags->task_traces,
                  "Task accuracy instead: task traces (kvplan record --tasks), each paired with the --outcomes of the "
                  "same tasks file; writes a task calibration for plan and sweep --task-calibration")
      ->expected(1, -1);
  sub->add_option("--outcomes", flags->outcomes, "outcomes.csv files of kvplan eval --tasks, one per --task-trace")
      ->expected(1, -1);
  sub->add_option("--holdout-trace", flags->holdout_traces,
                  "Task traces kept out of the fit (another length) on which the predictions are checked")
      ->expected(1, -1);
  sub->add_option("--holdout-outcomes", flags->holdout_outcomes, "outcomes.csv, one per --holdout-trace")->expected(1, -1);
  sub->add_option("--report", flags->report, "With --task-trace: write the fit and the checks as Markdown here");
  sub->add_option("--out", flags->out, "calib.yaml (--task-trace: task-calibration.yaml) to write")->required();
  sub->add_option("--threads", flags->threads, "Replay threads (default: all cores)");
  sub->add_flag("--json", flags->json, "Machine-readable summary");
  return {sub, [flags] { return calibrate(*flags); }};
}

}  // namespace kvp::cli
