// kvplan sweep: what-if over policies × budgets by replaying a trace — no model runs.
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <numeric>
#include <optional>

#include "common/file_util.h"
#include "common/npy.h"
#include "common/progress.h"
#include "planner/calibration.h"
#include "tools/kvplan/task_predict.h"
#include "planner/planner.h"
#include "tools/kvplan/command.h"
#include "tools/kvplan/plan_flags.h"

namespace kvp::cli {
namespace {

struct SweepFlags {
  PlanFlags plan;
  std::string trace;
  std::string policies = "window,h2o,vatp,tova,snapkv,knorm,random";
  std::string budgets = "16,24,32,48,64,96,128,256";
  std::string think_ratios;     // ThinK ratios to cross with every policy and budget ("0,0.4")
  std::string mustafar_ratios;  // Mustafar sparsities (keys and values alike)
  bool greedy = true;
  bool per_head = false;
  bool pyramid = false;
  std::string calibration;
  std::string task_calibration, task_trace;  // predicted task accuracy (task_predict.h)
  std::string plans_out;
  std::string step_energies;  // directory for each configuration's per-step residual energies (.npy)
  bool plots = true;
  std::string out;
  int threads = 0;
};

struct SweepRow {
  std::string policy, allocation;
  int budget;  // average slots per layer and head (the memory level)
  std::vector<int32_t> layer_budgets;  // per layer (greedy-head: the mean over the layer's KV heads)
  int64_t kv_bytes;
  ReplayResult replay;
  Plan plan;
  std::optional<Prediction> prediction;
  std::optional<TaskAccuracy> task;  // with --task-calibration, where the task trace has the policy's scores
};

// A row's budgets for the CSV: per layer, space-separated; a layer whose KV heads differ as its
// heads' budgets joined by '/'.
std::string budgets_text(const Plan& plan) {
  std::vector<std::string> layers;
  for (const std::vector<int32_t>& l : plan.budgets) {
    layers.push_back(std::all_of(l.begin(), l.end(), [&](int32_t b) { return b == l[0]; }) ? std::to_string(l[0])
                                                                                            : fmt::format("{}", fmt::join(l, "/")));
  }
  return fmt::format("{}", fmt::join(layers, " "));
}

std::string python_for_plots() {
  for (const char* p : {"/usr/bin/python3", "/usr/local/bin/python3"}) {
    if (std::filesystem::exists(p)) return p;
  }
  return "python3";
}

// --step-energies: a configuration's residual energy at every decode step as
// DIR/POLICY-ALLOCATION-BUDGET.npy, float32 [sequences, layers, steps] (NaN past a shorter
// sequence's steps and for layers the trace did not record); step m is the m-th recorded query past
// the prompt (position prompt_len + m in a trace without a query stride).
Status write_step_energies(const std::string& dir, const std::string& name, const StepEnergies& e, int n_layers) {
  std::vector<const std::vector<float>*> rows;
  for (const auto& seq : e.values) {
    for (const std::vector<float>& layer : seq) rows.push_back(&layer);
  }
  return write_npy_rows_f32((std::filesystem::path(dir) / (name + ".npy")).string(),
                            {static_cast<int64_t>(e.values.size()), n_layers}, rows);
}

// A policy with ThinK and Mustafar settings: a row label such as vatp+think0.4+mustafar0.5/0.5.
struct Variant {
  std::string name, label;
  PlanCompression compression;
  std::vector<SlotCompression> layers;
};

Status sweep(const SweepFlags& flags) {
  const std::vector<std::string> names = split_list(flags.policies);
  KVP_ASSIGN_OR_RETURN(std::vector<int> budgets, parse_int_list("--budgets", flags.budgets));
  for (const std::string& p : names) KVP_RETURN_IF_ERROR(make_policy(p, PolicyParams{}).status());
  KVP_ASSIGN_OR_RETURN(Trace trace, Trace::open(flags.trace));
  KVP_RETURN_IF_ERROR(check_delta_flags(flags.plan.delta, trace.model().n_layers));
  KVP_RETURN_IF_ERROR(check_delta_layers(flags.plan.delta, trace.layers(), flags.trace));
  // Every policy crossed with every ThinK ratio and Mustafar sparsity asked for (the flags'
  // single --think/--mustafar when no list is given).
  KVP_ASSIGN_OR_RETURN(PlanCompression base, flags.plan.compression(trace.model().head_dim));
  KVP_ASSIGN_OR_RETURN(const std::vector<PlanCompression> compressions,
                       crossed_compressions(base, flags.think_ratios, flags.mustafar_ratios));
  std::vector<Variant> variants;
  std::vector<std::string> policies;  // the row labels, in order
  for (const std::string& name : names) {
    for (const PlanCompression& c : compressions) {
      Variant v{.name = name, .compression = c};
      KVP_ASSIGN_OR_RETURN(v.layers, v.compression.layers(trace.model().n_layers, trace.model().head_dim));
      v.label = name + v.compression.label() + (flags.plan.delta.on() ? "+delta" : "");
      policies.push_back(v.label);
      variants.push_back(std::move(v));
    }
  }
  note_trace_bounds(trace, flags.trace);
  KVP_ASSIGN_OR_RETURN(std::optional<Calibration> calibration,
                       load_calibration_for(flags.calibration, trace, flags.trace));
  std::error_code ec;
  std::filesystem::create_directories(flags.out, ec);
  if (ec) return make_error("{}: cannot create: {}", flags.out, ec.message());
  if (!flags.step_energies.empty()) {
    std::filesystem::create_directories(flags.step_energies, ec);
    if (ec) return make_error("--step-energies: cannot create {}: {}", flags.step_energies, ec.message());
  }
  const int threads = flags.threads > 0 ? flags.threads : default_threads();
  KVP_ASSIGN_OR_RETURN(std::unique_ptr<ReplayEngine> engine, ReplayEngine::create(trace, threads));
  const TraceModelShape& m = trace.model();
  const int32_t longest = engine->max_length();
  std::vector<SweepRow> rows;
  // Each configuration of a batch keeps its step energies when asked; written once the batch is done.
  auto keep_steps = [&](ReplayConfig& c) {
    if (!flags.step_energies.empty()) c.step_energies = std::make_shared<StepEnergies>();
  };
  auto write_steps = [&](const std::vector<ReplayConfig>& configs, size_t first_row) -> Status {
    for (size_t i = 0; i < configs.size() && !flags.step_energies.empty(); ++i) {
      const SweepRow& r = rows[first_row + i];
      KVP_RETURN_IF_ERROR(write_step_energies(flags.step_energies, fmt::format("{}-{}-{}", r.policy, r.allocation, r.budget),
                                              *configs[i].step_energies, m.n_layers));
    }
    return ok_status();
  };
  const bool per_head = flags.per_head && flags.greedy;
  const int per_level = 1 + flags.greedy + flags.pyramid + per_head;
  Progress progress("sweep: configurations", static_cast<int64_t>(variants.size() * budgets.size() * per_level));
  int done = 0;
  engine->set_progress([&](int64_t tasks_done, int64_t tasks) {
    progress.update(done, fmt::format("trace pass {}/{} sequence-layers", tasks_done, tasks));
  });
  const auto start = std::chrono::steady_clock::now();
  for (const Variant& variant : variants) {
    const std::string& name = variant.name;
    std::vector<ErrorCurve> curves(m.n_layers), head_curves(size_t(m.n_layers) * m.n_kv_heads);
    // Per-head budgets need per-head kept sets (not TOVA's one set per layer).
    const bool heads_here = per_head && !make_policy(name, PolicyParams{}).value()->shared_per_layer();
    std::vector<std::pair<int, PolicyParams>> levels;
    std::vector<ReplayConfig> configs;
    const size_t first = rows.size();
    for (int b : budgets) {
      const int budget = std::min<int>(b, longest);
      KVP_ASSIGN_OR_RETURN(PolicyParams params, flags.plan.params_for(name, budget));
      KVP_ASSIGN_OR_RETURN(Plan plan, uniform_plan(plan_model_of(m), name, params, budget, KvDtype::kF32,
                                                   variant.compression));
      configs.push_back({.policy = std::shared_ptr<const Policy>(make_policy(name, params).value()),
                         .budgets = plan.budgets,
                         .head_energy = heads_here,
                         .compression = variant.layers});
      keep_steps(configs.back());
      rows.push_back(SweepRow{.policy = variant.label, .allocation = "uniform", .budget = budget,
                              .layer_budgets = std::vector<int32_t>(m.n_layers, budget),
                              .kv_bytes = plan.kv_bytes_per_sequence, .plan = plan});
      levels.emplace_back(budget, params);
    }
    // Every budget of the policy in one pass over the trace (the prompt prefilled once).
    std::vector<ReplayResult> results = engine->run_batch(configs);
    KVP_RETURN_IF_ERROR(write_steps(configs, first));
    for (size_t i = 0; i < results.size(); ++i) {
      SweepRow& row = rows[first + i];
      row.replay = std::move(results[i]);
      for (int l = 0; l < m.n_layers; ++l) {
        curves[l].budgets.push_back(row.budget);
        curves[l].error.push_back(row.replay.resid_energy[l]);
        for (int h = 0; heads_here && h < m.n_kv_heads; ++h) {
          head_curves[size_t(l) * m.n_kv_heads + h].budgets.push_back(row.budget);
          head_curves[size_t(l) * m.n_kv_heads + h].error.push_back(row.replay.head_resid_energy[l][h]);
        }
      }
    }
    done += static_cast<int>(results.size());
    progress.update(done, fmt::format("{}: uniform budgets", variant.label));
    if (per_head && !heads_here) done += static_cast<int>(levels.size());  // no greedy-head rows for it
    if ((!flags.greedy && !flags.pyramid) || name == "full") continue;
    // Greedy plans at the same memory levels, from the curves just measured; PyramidKV schedules.
    configs.clear();
    const size_t first_greedy = rows.size();
    auto add_allocated = [&](const char* allocation, int budget, const PolicyParams& params,
                             const Result<std::vector<int32_t>>& alloc) {
      if (!alloc.ok()) {  // the smallest level cannot leave room for a different split
        progress.update(++done);
        return;
      }
      Plan plan = allocated_plan(plan_model_of(m), name, params, *alloc, variant.compression);
      std::vector<int32_t> layer_budgets;  // each layer's mean over its KV heads
      for (const std::vector<int32_t>& heads : plan.budgets) {
        layer_budgets.push_back(
            static_cast<int32_t>(std::lround(std::accumulate(heads.begin(), heads.end(), 0.0) / heads.size())));
      }
      configs.push_back({.policy = std::shared_ptr<const Policy>(make_policy(name, params).value()),
                         .budgets = plan.budgets,
                         .compression = variant.layers});
      keep_steps(configs.back());
      rows.push_back(SweepRow{.policy = variant.label, .allocation = allocation, .budget = budget,
                              .layer_budgets = layer_budgets, .kv_bytes = plan.kv_bytes_per_sequence,
                              .plan = std::move(plan)});
    };
    // The smallest budget a level's policy runs with (sinks + recent, + kvcrush's period).
    auto floor_of = [&](const PolicyParams& params) { return make_policy(name, params).value()->min_budget(); };
    auto request_for = [&](int budget, const PolicyParams& params) {
      return AllocationRequest{.n_layers = m.n_layers, .n_kv_heads = m.n_kv_heads,
                               .total_slots = int64_t{budget} * m.n_layers * m.n_kv_heads,
                               .min_budget = floor_of(params), .max_budget = longest};
    };
    if (flags.pyramid) {
      for (const auto& [budget, params] : levels) {
        add_allocated("pyramid", budget, params, allocate(Allocation::kPyramid, request_for(budget, params), {}));
      }
    }
    // The curves' points at or above a level's protected positions, weighted by the calibration.
    auto usable = [&](const std::vector<ErrorCurve>& all, const PolicyParams& params) {
      std::vector<ErrorCurve> out(all.size());
      const int floor = floor_of(params);
      for (size_t u = 0; u < all.size(); ++u) {
        for (size_t i = 0; i < all[u].budgets.size(); ++i) {
          if (all[u].budgets[i] >= floor) {
            out[u].budgets.push_back(all[u].budgets[i]);
            out[u].error.push_back(all[u].error[i]);
          }
        }
      }
      return weighted_curves(std::move(out), calibration ? calibration->layer_weights : std::vector<double>{});
    };
    if (flags.greedy) {
      for (const auto& [budget, params] : levels) {
        add_allocated("greedy", budget, params,
                      allocate(Allocation::kGreedy, request_for(budget, params), usable(curves, params)));
      }
    }
    if (heads_here) {
      for (const auto& [budget, params] : levels) {
        add_allocated("greedy-head", budget, params,
                      allocate(Allocation::kGreedyHead, request_for(budget, params), usable(head_curves, params)));
      }
    }
    results = engine->run_batch(configs);
    KVP_RETURN_IF_ERROR(write_steps(configs, first_greedy));
    for (size_t i = 0; i < results.size(); ++i) rows[first_greedy + i].replay = std::move(results[i]);
    done += static_cast<int>(results.size());
    progress.update(done, fmt::format("{}: allocated plans", variant.label));
  }
  progress.finish(done);
  for (SweepRow& r : rows) {
    r.plan.provenance["tool"] = std::string("kvplan ") + KVP_VERSION;
    r.plan.provenance["trace"] = flags.trace;
    r.plan.provenance["allocation"] = r.allocation;
    record_replay_predictions(r.replay, &r.plan);
    if (calibration) {
      r.prediction = calibration->predict(r.replay.resid_energy,
                                          calibration_policy_key(r.plan.policy, r.plan.params, r.plan.compression));
      add_predictions(*r.prediction, flags.calibration, &r.plan);
    }
  }
  KVP_ASSIGN_OR_RETURN(std::optional<TaskPredictor> tasks,
                       load_task_predictor(flags.task_calibration, flags.task_trace,
                                           rows.empty() ? std::string() : rows[0].plan.model.fingerprint));
  std::set<std::string> task_skipped;  // configurations the task trace cannot replay, and why
  if (tasks) {
    Progress task_progress("sweep: task accuracy", static_cast<int64_t>(rows.size()), true);
    int n_done = 0;
    for (SweepRow& r : rows) {
      auto a = tasks->predict(r.plan);
      if (a.ok()) {
        r.task = *a;
        add_task_prediction(*a, *tasks, &r.plan);
      } else {
        task_skipped.insert(a.error().message());
      }
      task_progress.update(++n_done);
    }
    task_progress.finish(n_done);
  }
  if (!flags.plans_out.empty()) {
    std::filesystem::create_directories(flags.plans_out, ec);
    if (ec) return make_error("{}: cannot create: {}", flags.plans_out, ec.message());
    for (const SweepRow& r : rows) {
      KVP_RETURN_IF_ERROR(r.plan.save(
          (std::filesystem::path(flags.plans_out) / fmt::format("{}-{}-{}.yaml", r.policy, r.allocation, r.budget)).string()));
    }
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  int64_t head_steps = 0;
  for (const SweepRow& r : rows) head_steps += r.replay.head_steps;

  std::string csv = "policy,allocation,budget,layer_budgets,kv_bytes_per_sequence,resid_energy,rel_error,retained_mass,replay_cpu_s";
  if (calibration) {
    csv += ",pred_delta_nll,pred_delta_nll_low,pred_delta_nll_high,pred_top1,pred_top1_low,pred_top1_high,in_calibrated_range";
  }
  if (tasks) csv += ",pred_task_accuracy,pred_task_accuracy_low,pred_task_accuracy_high";
  csv += "\n";
  for (const SweepRow& r : rows) {
    csv += fmt::format("{},{},{},{},{},{:.8f},{:.8f},{:.8f},{:.4f}", r.policy, r.allocation, r.budget,
                       budgets_text(r.plan), r.kv_bytes, r.replay.total_resid_energy(),
                       r.replay.mean_rel_error(), r.replay.mean_retained_mass(), r.replay.cpu_seconds);
    if (r.prediction) {
      const Prediction& p = *r.prediction;
      csv += fmt::format(",{:.6f},{:.6f},{:.6f},{:.6f},{:.6f},{:.6f},{}", p.delta_nll, p.delta_nll_low,
                         p.delta_nll_high, p.top1_agreement, p.top1_low, p.top1_high, p.in_range ? 1 : 0);
    } else if (calibration) {
      csv += ",,,,,,,";
    }
    if (tasks) csv += r.task ? fmt::format(",{:.4f},{:.4f},{:.4f}", r.task->accuracy, r.task->low, r.task->high) : ",,,";
    csv += "\n";
  }
  std::string md = fmt::format(
      "## Sweep of `{}`\n\n{} sequences, {} decode steps per KV head; {} configurations replayed in {:.1f} s "
      "({:.2f} M head-steps/s, {} threads). Errors are open-loop replay predictions: the residual-stream energy "
      "Σ_layers mean ‖W_o(o − ô)‖²/‖x‖², the mean relative attention-output error, and the full-cache attention "
      "mass the kept tokens hold.\n\n### Residual energy (uniform budgets)\n\n",
      flags.trace, engine->n_sequences(), engine->decode_steps(), rows.size(), seconds, head_steps / seconds / 1e6, threads);
  md += policy_budget_table(policies, budgets, [&](const std::string& p, int b) {
    for (const SweepRow& r : rows) {
      if (r.policy == p && r.allocation == "uniform" && r.budget == std::min<int>(b, longest)) {
        return fmt::format("{:.4f}", r.replay.total_resid_energy());
      }
    }
    return std::string("—");
  });
  if (calibration) {
    md += fmt::format("\n### Predicted ΔNLL, nats/token (uniform budgets; calibration `{}`, {:.0f}% intervals; * outside "
                      "the calibrated range)\n\n", flags.calibration, 100 * calibration->coverage);
    md += policy_budget_table(policies, budgets, [&](const std::string& p, int b) {
      for (const SweepRow& r : rows) {
        if (r.policy == p && r.allocation == "uniform" && r.budget == std::min<int>(b, longest) && r.prediction) {
          return fmt::format("{:.4f} [{:.4f}, {:.4f}]{}", r.prediction->delta_nll, r.prediction->delta_nll_low,
                             r.prediction->delta_nll_high, r.prediction->in_range ? "" : "*");
        }
      }
      return std::string("—");
    });
  }
  if (tasks) {
    md += fmt::format("\n### Predicted task accuracy (uniform budgets; `{}` on the {} instances of `{}`, cut {}; 95% "
                      "intervals)\n\n", flags.task_calibration, tasks->trace.instances.size(), flags.task_trace,
                      tasks->trace.cut_point);
    md += policy_budget_table(policies, budgets, [&](const std::string& p, int b) {
      for (const SweepRow& r : rows) {
        if (r.policy == p && r.allocation == "uniform" && r.budget == std::min<int>(b, longest) && r.task) {
          return fmt::format("{:.3f} [{:.2f}, {:.2f}]", r.task->accuracy, r.task->low, r.task->high);
        }
      }
      return std::string("—");
    });
    for (const std::string& why : task_skipped) md += fmt::format("\n— not predicted: {}\n", why);
  }
  if (flags.greedy) {
    auto energy_of = [&](const SweepRow& like, const char* allocation) -> std::string {
      for (const SweepRow& r : rows) {
        if (r.policy == like.policy && r.allocation == allocation && r.budget == like.budget) {
          return fmt::format("{:.4f}", r.replay.total_resid_energy());
        }
      }
      return "—";
    };
    md += fmt::format("\n### Greedy per-layer budgets at the same memory (residual energy; budgets per layer)\n\n"
                      "| policy | budget | uniform | greedy |{} greedy budgets |\n|---|---|---|---|{}---|\n",
                      per_head ? " greedy-head |" : "", per_head ? "---|" : "");
    for (const SweepRow& g : rows) {
      if (g.allocation != "greedy") continue;
      md += fmt::format("| {} | {} | {} | {:.4f} |{} {} |\n", g.policy, g.budget, energy_of(g, "uniform"),
                        g.replay.total_resid_energy(), per_head ? " " + energy_of(g, "greedy-head") + " |" : "",
                        fmt::join(g.layer_budgets, ", "));
    }
  }
  {
    // The front: each configuration no cheaper one beats (predicted ΔNLL with a calibration, else
    // residual energy), in order of memory: at each memory, the predicted best combination.
    std::vector<const SweepRow*> order;
    for (const SweepRow& r : rows) order.push_back(&r);
    auto error_of = [&](const SweepRow* r) { return r->prediction ? r->prediction->delta_nll : r->replay.total_resid_energy(); };
    std::stable_sort(order.begin(), order.end(), [&](const SweepRow* a, const SweepRow* b) {
      return a->kv_bytes != b->kv_bytes ? a->kv_bytes < b->kv_bytes : error_of(a) < error_of(b);
    });
    md += fmt::format("\n### Predicted best at each memory (the Pareto front of KV bytes against {})\n\n"
                      "| KV bytes per sequence | configuration | allocation | budget | {} |\n|---|---|---|---|---|\n",
                      calibration ? "predicted ΔNLL" : "residual energy", calibration ? "predicted ΔNLL" : "energy");
    double best = INFINITY;
    for (const SweepRow* r : order) {
      if (error_of(r) >= best) continue;
      best = error_of(r);
      md += fmt::format("| {} | {} | {} | {} | {:.4f} |\n", r->kv_bytes, r->policy, r->allocation, r->budget, best);
    }
  }
  const std::filesystem::path dir(flags.out);
  KVP_RETURN_IF_ERROR(write_file_atomic((dir / "sweep.csv").string(), csv));
  std::string plot_note;
  if (flags.plots) {
    const std::string cmd = python_for_plots() + " '" + std::string(KVP_SOURCE_DIR) + "/tools/plot_sweep.py' '" +
                            (dir / "sweep.csv").string() + "' '" + flags.out + "' >/dev/null 2>'" +
                            (dir / "plot.log").string() + "'";
    if (std::system(cmd.c_str()) == 0) {
      md += "\n![memory against predicted error](pareto.png)\n\n![per-layer budgets of greedy plans](layer_budgets.png)\n";
      std::filesystem::remove(dir / "plot.log", ec);
      plot_note = ", pareto.png, layer_budgets.png";
    } else {
      plot_note = " (no plots: see plot.log; needs Python with matplotlib, tools/setup.sh installs it)";
    }
  }
  KVP_RETURN_IF_ERROR(write_file_atomic((dir / "sweep.md").string(), md));
  std::printf("%s\nwrote %s/sweep.csv, sweep.md%s\n", md.c_str(), flags.out.c_str(), plot_note.c_str());
  return ok_status();
}

}  // namespace

Command add_sweep_command(CLI::App& app) {
  auto flags = std::make_shared<SweepFlags>();
  CLI::App* sub = app.add_subcommand(
      "sweep", "What-if over policies × budgets by replaying a trace (no model runs): CSV, Markdown and plots");
  flags->plan.add_to(sub, false);
  sub->add_option("--trace", flags->trace, "Trace directory (kvplan record)")->required();
  sub->add_option("--policies", flags->policies, "Policies (default: every evicting policy)");
  sub->add_option("--budgets", flags->budgets, "Average slots per layer and KV head (default 16,24,32,48,64,96,128,256)");
  sub->add_option("--think-ratios", flags->think_ratios,
                  "ThinK ratios crossed with every policy and budget, e.g. 0,0.4 (0: none; default: --think or none)");
  sub->add_option("--mustafar-ratios", flags->mustafar_ratios,
                  "Mustafar sparsities (keys and values) crossed likewise, e.g. 0,0.5 (default: --mustafar or none)");
  sub->add_flag("!--no-greedy", flags->greedy, "Skip the greedy per-layer plans");
  sub->add_flag("--per-head", flags->per_head,
                "Also plan greedy-head (budgets per layer and KV head, from each head's own error curve) at each "
                "memory level, for every policy but tova (one kept set per layer)");
  sub->add_flag("!--no-plots", flags->plots, "Skip the PNG plots");
  sub->add_flag("--pyramid", flags->pyramid, "Also replay PyramidKV per-layer schedules at each memory level");
  sub->add_option("--task-calibration", flags->task_calibration,
                  "task-calibration.yaml (kvplan calibrate --task-trace): also predict each configuration's task "
                  "accuracy on the instances of --task-trace");
  sub->add_option("--task-trace", flags->task_trace, "A task trace (kvplan record --tasks) of the same model");
  sub->add_option("--calibration", flags->calibration,
                  "calib.yaml (kvplan calibrate): predicted ΔNLL and top-1 with intervals for every configuration");
  sub->add_option("--plans-out", flags->plans_out,
                  "Directory to write every configuration as a plan (POLICY-ALLOCATION-BUDGET.yaml) for kvplan eval");
  sub->add_option("--step-energies", flags->step_energies,
                  "Directory for each configuration's residual energy at every decode step, "
                  "POLICY-ALLOCATION-BUDGET.npy (float32 [sequences, layers, steps]; for studies of where along "
                  "the sequence the error falls)");
  sub->add_option("--threads", flags->threads, "Replay threads (default: all cores)");
  sub->add_option("--out", flags->out, "Directory for sweep.csv, sweep.md and the plots")->required();
  return {sub, [flags] { return sweep(*flags); }};
}

}  // namespace kvp::cli
