// kvplan plan: write a plan.yaml — from a trace (replay error curves and allocation under a memory
// limit), or a uniform plan from flags.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <optional>

#include "common/progress.h"
#include "executor/recorder.h"
#include "planner/calibration.h"
#include "tools/kvplan/task_predict.h"
#include "planner/planner.h"
#include "tools/kvplan/command.h"
#include "tools/kvplan/plan_flags.h"

namespace kvp::cli {
namespace {

struct PlanCommandFlags {
  ModelFlags model;
  PlanFlags plan;
  std::string trace;
  int64_t memory = 0;
  double keep = 0;
  std::string allocation = "greedy";
  std::string calibration;
  std::string task_calibration, task_trace;  // predicted task accuracy (task_predict.h)
  std::string layer_budgets;
  std::string think_ratios, mustafar_ratios;  // candidates for --memory to choose among
  std::string out;
  int threads = 0;
  int prompt_len = 0;      // the prompt the peak is reported for; 0: the trace's, else the model's seq_len
  int prefill_chunk = 512;
};

// --task-calibration with --task-trace: the plan's task accuracy predicted on the trace's instances,
// written into it and printed.
Status add_task_accuracy(const PlanCommandFlags& flags, Plan* plan) {
  KVP_ASSIGN_OR_RETURN(std::optional<TaskPredictor> predictor,
                       load_task_predictor(flags.task_calibration, flags.task_trace, plan->model.fingerprint));
  if (!predictor) return ok_status();
  KVP_ASSIGN_OR_RETURN(TaskAccuracy a, predictor->predict(*plan));
  add_task_prediction(a, *predictor, plan);
  std::printf("predicted task accuracy (%s on %d instances of %s, cut %s): %.3f [%.3f, %.3f]\n",
              flags.task_calibration.c_str(), a.n, flags.task_trace.c_str(), predictor->trace.cut_point.c_str(),
              a.accuracy, a.low, a.high);
  return ok_status();
}

// The prefill transient next to the steady-state bytes: a prompt of `prompt_len` held whole until
// it is cut, or cut after every chunk (--prefill-evict), as the CPU executor holds it.
void print_peak(const Plan& plan, int prompt_len, int chunk) {
  const KvBudgets b = plan.kv_budgets();
  KvBudgets host = b;
  host.dtype = KvDtype::kF32;  // the prefill scratch of the CPU backend
  std::printf("peak KV per sequence while prefilling a %d-token prompt: %lld bytes (held whole), %lld with "
              "--prefill-evict --prefill-chunk %d; %lld steady\n",
              prompt_len, static_cast<long long>(b.kv_bytes() + host.prefill_scratch(prompt_len, 0).kv_bytes()),
              static_cast<long long>(b.kv_bytes() + host.prefill_scratch(prompt_len, chunk).kv_bytes()), chunk,
              static_cast<long long>(b.kv_bytes()));
}

// One plan at the flags' memory limit with `compression`, its replay and (with a calibration) its
// predictions.
struct Candidate {
  PlanOutcome outcome;  // its plan carries the compression
  std::optional<Prediction> prediction;
  std::string memory_description;

  // What the choice among combinations minimises: the calibrated ΔNLL, else the replay's residual
  // energy (which ranks them as the measured ΔNLL does, docs/RESULTS.md).
  double rank_key() const { return prediction ? prediction->delta_nll : outcome.replay.total_resid_energy(); }
};

Result<Candidate> plan_candidate(const PlanCommandFlags& flags, ReplayEngine& engine, const Trace& trace,
                                 const std::optional<Calibration>& calibration, const PolicyParams& params,
                                 const Policy& policy, Allocation allocation, const PlanCompression& compression) {
  const TraceModelShape& m = trace.model();
  const int32_t longest = engine.max_length();
  KVP_ASSIGN_OR_RETURN(std::vector<SlotCompression> layers, compression.layers(1, m.head_dim));
  // A head's bytes per slot and besides (the rings), with each part's padding to 4 bytes at most 3
  // more for any budget.
  KvBudgets one = KvBudgets::uniform(1, 1, m.head_dim, 1);
  one.aux_floats_per_slot = policy.aux_floats_per_slot();
  one.compression = layers;
  const KvBudgets::SlotCost cost = one.slot_cost(0);
  const int64_t per_slot = cost.per_slot;
  const int64_t per_head = std::max<int64_t>(0, cost.per_head) + (layers.empty() ? 0 : 3 * 12);
  const int64_t heads = int64_t{m.n_layers} * m.n_kv_heads;
  Candidate out;
  PlanRequest request{.policy = flags.plan.policy, .params = params, .allocation = allocation, .compression = compression};
  if (flags.memory > 0) {
    request.total_slots = std::max<int64_t>(0, flags.memory - heads * per_head) / per_slot;
    request.memory_description = fmt::format("{} bytes per sequence", flags.memory);
    if (compression.any()) request.memory_description += " (" + compression.label().substr(1) + ")";
  } else if (flags.keep > 0) {
    request.total_slots = static_cast<int64_t>(std::floor(flags.keep * heads * longest));
    request.memory_description = fmt::format("keep {} of {} positions", flags.keep, longest);
  } else {
    request.total_slots = heads * flags.plan.budget;
    request.memory_description = fmt::format("{} tokens per layer and head on average", flags.plan.budget);
  }
  out.memory_description = request.memory_description;
  const bool greedy = allocation == Allocation::kGreedy || allocation == Allocation::kGreedyHead;
  if (calibration && greedy) request.layer_weights = calibration->layer_weights;
  {
    const int n_curves = greedy
                             ? static_cast<int>(candidate_budgets(policy.min_budget(), longest).size())
                             : 0;
    Progress progress(fmt::format("plan: replaying budgets ({}{})", flags.plan.policy, compression.label()), n_curves);
    int curves_done = 0;
    engine.set_progress([&](int64_t tasks_done, int64_t tasks) {
      progress.update(curves_done, fmt::format("trace pass {}/{} sequence-layers", tasks_done, tasks));
    });
    KVP_ASSIGN_OR_RETURN(out.outcome, make_plan(engine, flags.trace, request, [&](int done) {
                           progress.update(curves_done = done);
                         }));
    progress.finish(n_curves);
  }
  if (calibration) {
    out.prediction = calibration->predict(out.outcome.replay.resid_energy,
                                          calibration_policy_key(flags.plan.policy, params, compression));
  }
  return out;
}

Status plan_from_trace(const PlanCommandFlags& flags) {
  KVP_ASSIGN_OR_RETURN(Allocation allocation, parse_allocation(flags.allocation));
  const int limits = (flags.memory > 0) + (flags.keep > 0) + (flags.plan.budget > 0);
  if (limits != 1) {
    return make_error("--memory BYTES, --keep RATIO or --budget TOKENS: give exactly one memory limit, found {}", limits);
  }
  if (flags.keep < 0 || flags.keep > 1) return make_error("--keep: expected a ratio in (0, 1], found {}", flags.keep);
  const bool choose = !flags.think_ratios.empty() || !flags.mustafar_ratios.empty();
  if (choose && flags.memory <= 0) {
    return make_error("--think-ratios/--mustafar-ratios: the combinations are compared at equal bytes, so give --memory");
  }
  if (choose) {  // the lists checked before the trace is read
    KVP_RETURN_IF_ERROR(crossed_compressions(PlanCompression{}, flags.think_ratios, flags.mustafar_ratios).status());
  }
  KVP_ASSIGN_OR_RETURN(Trace trace, Trace::open(flags.trace));
  note_trace_bounds(trace, flags.trace);
  KVP_ASSIGN_OR_RETURN(std::optional<Calibration> calibration,
                       load_calibration_for(flags.calibration, trace, flags.trace));
  KVP_ASSIGN_OR_RETURN(std::unique_ptr<ReplayEngine> engine, ReplayEngine::create(trace, flags.threads > 0 ? flags.threads : default_threads()));
  const TraceModelShape& m = trace.model();
  const int32_t longest = engine->max_length();
  // The budget the policy's default sinks and recent are taken at: the one given, or on average the
  // one the limit buys (--memory: dense slots with the policy's per-slot floats).
  int32_t nominal_budget = flags.plan.budget > 0 ? flags.plan.budget
                           : flags.keep > 0      ? static_cast<int32_t>(std::lround(flags.keep * longest))
                                                 : 64;
  if (flags.memory > 0) {
    KVP_ASSIGN_OR_RETURN(PolicyParams at_64, flags.plan.params_for(flags.plan.policy, 64));
    KVP_ASSIGN_OR_RETURN(auto provisional, make_policy(flags.plan.policy, at_64));
    KvBudgets one = KvBudgets::uniform(1, 1, m.head_dim, 1);
    one.aux_floats_per_slot = provisional->aux_floats_per_slot();
    const int64_t slots = flags.memory / (one.slot_cost(0).per_slot * m.n_layers * m.n_kv_heads);
    nominal_budget = static_cast<int32_t>(std::clamp<int64_t>(slots, 1, longest));
  }
  KVP_ASSIGN_OR_RETURN(PolicyParams params, flags.plan.params_for(flags.plan.policy, nominal_budget));
  KVP_RETURN_IF_ERROR(check_delta_flags(params.delta, m.n_layers));
  KVP_RETURN_IF_ERROR(check_delta_layers(params.delta, trace.layers(), flags.trace));
  KVP_ASSIGN_OR_RETURN(auto policy, make_policy(flags.plan.policy, params));
  KVP_ASSIGN_OR_RETURN(PlanCompression base, flags.plan.compression(m.head_dim));
  KVP_ASSIGN_OR_RETURN(const std::vector<PlanCompression> compressions,
                       crossed_compressions(base, flags.think_ratios, flags.mustafar_ratios));
  // With candidate lists: every combination planned at the same bytes, the lowest rank_key kept.
  std::optional<Candidate> best;
  for (const PlanCompression& c : compressions) {
    KVP_ASSIGN_OR_RETURN(Candidate cand,
                         plan_candidate(flags, *engine, trace, calibration, params, *policy, allocation, c));
    if (choose) {
      std::printf("candidate %s%s: %lld KV bytes per sequence, residual energy %.5f", flags.plan.policy.c_str(),
                  c.label().c_str(), static_cast<long long>(cand.outcome.plan.kv_bytes_per_sequence),
                  cand.outcome.replay.total_resid_energy());
      if (cand.prediction) std::printf(", predicted ΔNLL %.4f", cand.prediction->delta_nll);
      std::printf("\n");
    }
    if (!best || cand.rank_key() < best->rank_key()) best = std::move(cand);
  }
  const Candidate& chosen = *best;
  Plan plan = chosen.outcome.plan;
  const PlanOutcome& outcome = chosen.outcome;
  plan.provenance["tool"] = std::string("kvplan ") + KVP_VERSION;
  if (choose) {
    plan.provenance["chosen"] =
        fmt::format("lowest {} of {} combinations of --think-ratios '{}' and --mustafar-ratios '{}' at {} bytes",
                    chosen.prediction ? "predicted delta_nll" : "replay residual energy", compressions.size(),
                    flags.think_ratios, flags.mustafar_ratios, flags.memory);
    std::printf("chose %s%s (%s)\n", flags.plan.policy.c_str(),
                plan.compression.any() ? plan.compression.label().c_str() : " without compression",
                plan.provenance["chosen"].c_str());
  }
  if (chosen.prediction) add_predictions(*chosen.prediction, flags.calibration, &plan);
  KVP_RETURN_IF_ERROR(add_task_accuracy(flags, &plan));
  KVP_RETURN_IF_ERROR(plan.save(flags.out));
  std::string per_layer;
  for (const auto& l : plan.budgets) {
    // A layer's budget, or its heads' budgets in brackets when they differ.
    std::string layer = std::to_string(l[0]);
    if (std::any_of(l.begin(), l.end(), [&](int32_t b) { return b != l[0]; })) {
      layer.clear();
      for (int32_t b : l) layer += (layer.empty() ? "[" : " ") + std::to_string(b);
      layer += "]";
    }
    per_layer += (per_layer.empty() ? "" : ", ") + layer;
  }
  std::printf("wrote %s: %s, %s allocation, budgets per layer [%s], %lld KV bytes per sequence (limit: %s)\n",
              flags.out.c_str(), plan.policy.c_str(), flags.allocation.c_str(), per_layer.c_str(),
              static_cast<long long>(plan.kv_bytes_per_sequence), chosen.memory_description.c_str());
  print_peak(plan, flags.prompt_len > 0 ? flags.prompt_len : trace.prompt_len(0), flags.prefill_chunk);
  std::printf("replay: residual energy %.5f, relative output error %.4f, retained attention mass %.4f\n",
              outcome.replay.total_resid_energy(), outcome.replay.mean_rel_error(), outcome.replay.mean_retained_mass());
  if (const auto& prediction = chosen.prediction) {
    std::printf("predicted (%s, %.0f%% intervals): ΔNLL %.4f [%.4f, %.4f] nats/token, top-1 agreement %.4f [%.4f, %.4f]%s\n",
                flags.calibration.c_str(), 100 * calibration->coverage, prediction->delta_nll, prediction->delta_nll_low,
                prediction->delta_nll_high, prediction->top1_agreement, prediction->top1_low, prediction->top1_high,
                prediction->in_range ? "" : " — OUTSIDE the calibrated range: extrapolated");
  }
  return ok_status();
}

// Budgets given per layer (e.g. one layer pruned, the others whole: a sensitivity probe for
// calibration). Sinks and recent default to the policy's published values at the smallest budget.
Status plan_layer_budgets(const PlanCommandFlags& flags) {
  if (flags.plan.budget > 0) return make_error("--layer-budgets and --budget: give one");
  KVP_ASSIGN_OR_RETURN(std::vector<int> layers, parse_int_list("--layer-budgets", flags.layer_budgets));
  KVP_ASSIGN_OR_RETURN(LoadedModel model, load_model(flags.model.model, flags.model.tokenizer, flags.model.load_options()));
  KVP_ASSIGN_OR_RETURN(std::string fingerprint, model_fingerprint(model));
  const ModelConfig& c = model.weights.config();
  if (static_cast<int>(layers.size()) != c.n_layers) {
    return make_error("--layer-budgets: expected {} budgets (one per layer), found {}", c.n_layers, layers.size());
  }
  const int smallest = *std::min_element(layers.begin(), layers.end());
  KVP_ASSIGN_OR_RETURN(Plan p, flags.plan.uniform(plan_model(c, fingerprint), flags.plan.policy, smallest));
  for (int l = 0; l < c.n_layers; ++l) {
    if (layers[l] < 1 || layers[l] > c.seq_len) {
      return make_error("--layer-budgets: layer {}: expected 1..{} slots, found {}", l, c.seq_len, layers[l]);
    }
    p.budgets[l].assign(c.n_kv_heads, layers[l]);
  }
  p.kv_bytes_per_sequence = p.kv_budgets().kv_bytes();
  p.provenance["source"] = "per-layer budgets from flags";
  p.provenance["tool"] = std::string("kvplan ") + KVP_VERSION;
  KVP_RETURN_IF_ERROR(add_task_accuracy(flags, &p));
  KVP_RETURN_IF_ERROR(p.save(flags.out));
  std::printf("wrote %s: policy %s (sinks %d, recent %d), budgets per layer [%s], %lld KV bytes per sequence\n",
              flags.out.c_str(), p.policy.c_str(), p.params.sinks, p.params.recent,
              fmt::format("{}", fmt::join(layers, ", ")).c_str(), static_cast<long long>(p.kv_bytes_per_sequence));
  print_peak(p, flags.prompt_len > 0 ? flags.prompt_len : c.seq_len, flags.prefill_chunk);
  return ok_status();
}

Status plan(const PlanCommandFlags& flags) {
  if (flags.plan.policy.empty()) return make_error("--policy: needed (full, window, h2o, vatp, tova, snapkv, knorm, random)");
  if (!flags.trace.empty()) return plan_from_trace(flags);
  if (!flags.layer_budgets.empty()) return plan_layer_budgets(flags);
  if (flags.plan.budget <= 0) {
    return make_error("--budget: expected the slots per layer and KV head (or give --trace with --memory or --keep)");
  }
  KVP_ASSIGN_OR_RETURN(LoadedModel model, load_model(flags.model.model, flags.model.tokenizer, flags.model.load_options()));
  KVP_ASSIGN_OR_RETURN(std::string fingerprint, model_fingerprint(model));
  KVP_ASSIGN_OR_RETURN(Plan p, flags.plan.uniform(plan_model(model.weights.config(), fingerprint), flags.plan.policy,
                                                  flags.plan.budget));
  p.provenance["tool"] = std::string("kvplan ") + KVP_VERSION;
  KVP_RETURN_IF_ERROR(add_task_accuracy(flags, &p));
  KVP_RETURN_IF_ERROR(p.save(flags.out));
  std::printf("wrote %s: policy %s (sinks %d, recent %d), %d slots per layer and KV head, %lld KV bytes per sequence\n",
              flags.out.c_str(), p.policy.c_str(), p.params.sinks, p.params.recent, flags.plan.budget,
              static_cast<long long>(p.kv_bytes_per_sequence));
  print_peak(p, flags.prompt_len > 0 ? flags.prompt_len : model.weights.config().seq_len, flags.prefill_chunk);
  return ok_status();
}

}  // namespace

Command add_plan_command(CLI::App& app) {
  auto flags = std::make_shared<PlanCommandFlags>();
  CLI::App* sub = app.add_subcommand(
      "plan",
      "Write a plan.yaml: with --trace, per-layer budgets chosen by replaying the trace under a memory limit "
      "(--memory, --keep or --budget); without, a uniform plan from --policy and --budget");
  flags->model.add_to(sub, false);
  flags->plan.add_to(sub);
  sub->add_option("--trace", flags->trace, "Trace directory to replay (kvplan record)");
  sub->add_option("--prompt-len", flags->prompt_len,
                  "Prompt length the prefill's peak KV is reported for (default: the trace's, else the model's seq_len)");
  sub->add_option("--prefill-chunk", flags->prefill_chunk, "Chunk of the --prefill-evict peak reported (default 512)")
      ->check(CLI::PositiveNumber);
  sub->add_option("--memory", flags->memory, "KV bytes per sequence the plan may use");
  sub->add_option("--keep", flags->keep, "Share of the full cache (of the trace's longest sequence) to keep, e.g. 0.5");
  sub->add_option("--allocation", flags->allocation,
                  "greedy (per-layer budgets from replay error curves), greedy-head (per layer and KV head, from "
                  "each head's own error curve; not for tova, which keeps one set per layer), uniform or "
                  "pyramid (default greedy)");
  sub->add_option("--layer-budgets", flags->layer_budgets,
                  "Without --trace: slots per layer, comma-separated (every head of a layer alike)");
  sub->add_option("--calibration", flags->calibration,
                  "calib.yaml (kvplan calibrate): predict ΔNLL and top-1 agreement with intervals");
  sub->add_option("--task-calibration", flags->task_calibration,
                  "task-calibration.yaml (kvplan calibrate --task-trace): predict the plan's task accuracy with an "
                  "interval on the instances of --task-trace");
  sub->add_option("--task-trace", flags->task_trace,
                  "A task trace (kvplan record --tasks) of the same model: the instances --task-calibration predicts on");
  sub->add_option("--think-ratios", flags->think_ratios,
                  "With --memory: ThinK ratios to choose among, e.g. 0,0.4 (0: none), crossed with --mustafar-ratios; "
                  "each combination is planned at the same bytes and the one with the lowest predicted ΔNLL "
                  "(--calibration), else the lowest replay residual energy, is written");
  sub->add_option("--mustafar-ratios", flags->mustafar_ratios,
                  "With --memory: Mustafar sparsities (keys and values) to choose among, e.g. 0,0.5");
  sub->add_option("--threads", flags->threads, "Replay threads (default: all cores)");
  sub->add_option("--out", flags->out, "plan.yaml to write")->required();
  return {sub, [flags] { return plan(*flags); }};
}

}  // namespace kvp::cli
