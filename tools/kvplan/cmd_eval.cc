// kvplan eval: measure a plan (or a grid of uniform plans) against the full cache, closed loop.
#include <nlohmann/json.hpp>

#include <cstdio>
#include <filesystem>

#include "common/file_util.h"
#include "common/npy.h"
#include "common/progress.h"
#include "executor/cpu/cpu_backend.h"
#include "executor/evaluator.h"
#include "executor/generator.h"
#include "executor/recorder.h"
#include "executor/tasks/task_eval.h"
#include "tools/kvplan/command.h"
#include "tools/kvplan/plan_flags.h"

namespace kvp::cli {
namespace {

struct EvalFlags {
  ModelFlags model;
  PlanFlags plan;
  std::string corpus;
  int prompt_len = 64;
  int batch = 16;
  int prefill_chunk = 512;
  bool prefill_evict = false;
  std::string out;
  std::string eviction_log;
  std::string positions;  // per-position ΔNLL (.npy): a file, or with --grid/--plans a directory
  bool json = false;
  bool grid = false;
  std::vector<std::string> plans;
  std::string policies = "full,window,h2o,vatp,tova,snapkv,knorm,random";
  std::string budgets = "16,32,64,128,256";
  // --tasks
  std::string tasks;
  std::vector<double> keep;           // keep ratios of a single policy
  std::string compressions = "0.25,0.5,0.75,0.875";  // --grid over tasks: kvpress's compression ratios
  std::string cut = "agnostic";       // agnostic, aware or both
  std::string trace_out;              // --tasks: also write a task trace at the first cut
};

Measured describe(const Plan& plan, const std::string& source, const std::string& corpus) {
  Measured m;
  m.model_fingerprint = plan.model.fingerprint;
  m.policy = plan.policy;
  m.sinks = plan.params.sinks;
  m.recent = plan.params.recent;
  m.policy_detail = policy_detail(plan.policy, plan.params);
  m.budgets = plan.budgets;
  m.compression = plan.compression;
  m.kv_dtype = std::string(kv_dtype_name(plan.kv_dtype));
  m.plan_source = source;
  m.corpus = corpus;
  m.predicted_kv_bytes_per_sequence = plan.kv_bytes_per_sequence;
  m.predicted = plan.predicted;
  return m;
}

Result<Measured> measure(Decoder& decoder, const Corpus& corpus, const EvalReference& ref, const Plan& plan,
                         const std::string& source, const EvalFlags& flags,
                         std::vector<EvictionRecord>* log, Progress* progress, const std::string& positions_path) {
  KVP_ASSIGN_OR_RETURN(auto policy, make_policy(plan.policy, plan.params));
  int longest = 0;
  for (const auto& s : corpus.sequences) longest = std::max(longest, static_cast<int>(s.size()));
  if (!policy->evicts() && plan.min_budget() < longest) {
    return make_error("plan: policy full keeps every token, but its budget {} is below the corpus's "
                      "longest sequence ({} tokens)", plan.min_budget(), longest);
  }
  Measured m = describe(plan, source, corpus.source);
  std::vector<std::vector<float>> by_position;
  if (flags.prefill_evict) {
    m.policy_detail += fmt::format("{}prefill_evict={}", m.policy_detail.empty() ? "" : " ", flags.prefill_chunk);
  }
  evaluate(decoder, corpus, ref,
           EvalConfig{.budgets = plan.kv_budgets(), .policy = std::shared_ptr<const Policy>(std::move(policy)),
                      .prefill_chunk = flags.prefill_chunk, .prefill_evict = flags.prefill_evict},
           EvalOptions{.prompt_len = flags.prompt_len, .batch = flags.batch}, &m, log,
           [&](int done) { if (progress) progress->update(done); }, positions_path.empty() ? nullptr : &by_position);
  KVP_CHECK(m.kv_bytes_per_sequence == m.predicted_kv_bytes_per_sequence,
            "allocated {} KV bytes per sequence, the plan predicted {}", m.kv_bytes_per_sequence,
            m.predicted_kv_bytes_per_sequence);
  if (!positions_path.empty()) {
    std::vector<const std::vector<float>*> rows;
    for (const std::vector<float>& seq : by_position) rows.push_back(&seq);
    KVP_RETURN_IF_ERROR(write_npy_rows_f32(positions_path, {static_cast<int64_t>(rows.size())}, rows));
  }
  return m;
}

// --grid and --plans: the output directories, measured/ and --positions's.
Status make_output_dirs(const EvalFlags& flags) {
  std::error_code ec;
  std::filesystem::create_directories(std::filesystem::path(flags.out) / "measured", ec);
  if (ec) return make_error("{}: cannot create: {}", flags.out, ec.message());
  if (!flags.positions.empty()) std::filesystem::create_directories(flags.positions, ec);
  if (ec) return make_error("--positions: cannot create {}: {}", flags.positions, ec.message());
  return ok_status();
}

// Where --positions puts a configuration's file when it names a directory (--grid, --plans).
std::string positions_file(const EvalFlags& flags, const std::string& name) {
  return flags.positions.empty() ? std::string() : (std::filesystem::path(flags.positions) / (name + ".npy")).string();
}

nlohmann::json metrics_json(const Measured& m) {
  return {{"policy", m.policy}, {"sinks", m.sinks}, {"recent", m.recent}, {"detail", m.policy_detail},
          {"compression", m.compression.label().empty() ? "" : m.compression.label().substr(1)}, {"budgets", m.budgets}, {"delta_nll", m.delta_nll}, {"nll_full", m.nll_full},
          {"nll_pruned", m.nll_pruned}, {"top1_agreement", m.top1_agreement}, {"kl", m.kl},
          {"greedy_agreement_tokens", m.greedy_agreement_tokens},
          {"greedy_agreement_fraction", m.greedy_agreement_fraction},
          {"kv_bytes_per_sequence", m.kv_bytes_per_sequence},
          {"predicted_kv_bytes_per_sequence", m.predicted_kv_bytes_per_sequence},
          {"n_predicted_tokens", m.n_predicted_tokens}, {"tokens_per_s", m.tokens_per_s},
          {"attended_per_head_step", m.attended_per_head_step}};
}

Status write_eviction_log(const std::string& path, const std::vector<EvictionRecord>& log) {
  std::string csv = "seq,step,layer,head,evicted_pos,score\n";
  for (const EvictionRecord& e : log) {
    csv += fmt::format("{},{},{},{},{},{}\n", e.seq_idx, e.step, e.layer_idx, e.kv_head_idx, e.evicted_pos, e.score);
  }
  return write_file_atomic(path, csv);
}

struct Context {
  LoadedModel model;
  PlanModel plan_model;
  Corpus corpus;
};

Result<Context> load_context(const EvalFlags& flags) {
  KVP_ASSIGN_OR_RETURN(LoadedModel model, load_model(flags.model.model, flags.model.tokenizer, flags.model.load_options()));
  KVP_ASSIGN_OR_RETURN(std::string fingerprint, model_fingerprint(model));
  const ModelConfig& c = model.weights.config();
  KVP_ASSIGN_OR_RETURN(Corpus corpus, load_corpus(flags.corpus, model.tokenizer, c.seq_len));
  if (flags.prompt_len < 1) return make_error("--prompt-len: expected at least 1, found {}", flags.prompt_len);
  for (size_t i = 0; i < corpus.sequences.size(); ++i) {
    if (static_cast<int>(corpus.sequences[i].size()) <= flags.prompt_len) {
      return make_error("{}: sequence {} has {} tokens; --prompt-len {} leaves nothing to evaluate",
                        flags.corpus, i, corpus.sequences[i].size(), flags.prompt_len);
    }
  }
  if (flags.batch < 1) return make_error("--batch: expected at least 1, found {}", flags.batch);
  PlanModel pm = plan_model(c, fingerprint);
  return Context{std::move(model), std::move(pm), std::move(corpus)};
}

Status eval_one(const EvalFlags& flags) {
  KVP_ASSIGN_OR_RETURN(Context ctx, load_context(flags));
  KVP_ASSIGN_OR_RETURN(Plan plan, flags.plan.resolve(ctx.plan_model, ctx.model.files.model_path));
  CpuBackend backend(ctx.model.weights, flags.model.threads);
  Decoder decoder(backend);
  const EvalOptions options{.prompt_len = flags.prompt_len, .batch = flags.batch};
  const EvalReference ref = compute_reference(decoder, ctx.corpus, options);
  std::vector<EvictionRecord> log;
  Progress progress("eval: sequences", static_cast<int64_t>(ctx.corpus.sequences.size()), !flags.json);
  KVP_ASSIGN_OR_RETURN(Measured m, measure(decoder, ctx.corpus, ref, plan,
                                           flags.plan.plan_path.empty() ? "flags" : flags.plan.plan_path, flags,
                                           flags.eviction_log.empty() ? nullptr : &log, &progress, flags.positions));
  progress.finish(static_cast<int64_t>(ctx.corpus.sequences.size()));
  const std::string out = flags.out.empty() ? "measured.yaml" : flags.out;
  KVP_RETURN_IF_ERROR(m.save(out));
  if (!flags.eviction_log.empty()) KVP_RETURN_IF_ERROR(write_eviction_log(flags.eviction_log, log));
  if (flags.json) {
    nlohmann::json j = metrics_json(m);
    j["measured_yaml"] = out;
    std::printf("%s\n", j.dump(2).c_str());
    return ok_status();
  }
  const int64_t full_bytes = full_cache_budgets(ctx.model.weights.config(), ctx.model.weights.config().seq_len).kv_bytes();
  std::printf("plan:    %s, policy %s%s (sinks %d, recent %d%s%s), budgets %d..%d slots\n", m.plan_source.c_str(),
              m.policy.c_str(), m.compression.label().c_str(), m.sinks, m.recent, m.policy_detail.empty() ? "" : ", ",
              m.policy_detail.c_str(), plan.min_budget(), plan.max_budget());
  std::printf("corpus:  %s, %d sequences, prompt %d, %lld predicted tokens\n\n", m.corpus.c_str(), m.n_sequences,
              m.prompt_len, static_cast<long long>(m.n_predicted_tokens));
  std::printf("%-34s %s\n", "metric", "value");
  std::printf("%-34s %.5f\n", "delta NLL (nats/token)", m.delta_nll);
  std::printf("%-34s %.5f / %.5f\n", "NLL full / pruned (nats/token)", m.nll_full, m.nll_pruned);
  std::printf("%-34s %.4f\n", "top-1 agreement", m.top1_agreement);
  std::printf("%-34s %.5f\n", "KL(full || pruned) (nats/token)", m.kl);
  std::printf("%-34s %.1f tokens (%.1f%% of the continuation)\n", "greedy agreement", m.greedy_agreement_tokens,
              100 * m.greedy_agreement_fraction);
  std::printf("%-34s %lld (predicted %lld; full cache at seq_len %lld)\n", "KV bytes per sequence",
              static_cast<long long>(m.kv_bytes_per_sequence), static_cast<long long>(m.predicted_kv_bytes_per_sequence),
              static_cast<long long>(full_bytes));
  std::printf("%-34s %.0f\n", "decode tokens/s (teacher-forced)", m.tokens_per_s);
  std::printf("%-34s %.1f keys (the new token counted)\n", "attended per layer, head and step",
              m.attended_per_head_step);
  std::printf("\nwrote %s%s%s\n", out.c_str(), flags.eviction_log.empty() ? "" : " and ", flags.eviction_log.c_str());
  return ok_status();
}

// Several plan files against one full-cache reference: measured/<plan name>.yaml and plans.csv.
Status eval_plans(const EvalFlags& flags) {
  if (flags.out.empty()) return make_error("--out: eval --plans needs a directory to write plans.csv and measured/");
  KVP_ASSIGN_OR_RETURN(Context ctx, load_context(flags));
  std::vector<Plan> plans;
  for (const std::string& path : flags.plans) {
    KVP_ASSIGN_OR_RETURN(Plan plan, Plan::load(path));
    KVP_RETURN_IF_ERROR(plan.check_model(ctx.plan_model, path, ctx.model.files.model_path));
    plans.push_back(std::move(plan));
  }
  KVP_RETURN_IF_ERROR(make_output_dirs(flags));
  CpuBackend backend(ctx.model.weights, flags.model.threads);
  Decoder decoder(backend);
  const EvalReference ref = compute_reference(decoder, ctx.corpus, EvalOptions{.prompt_len = flags.prompt_len,
                                                                                  .batch = flags.batch});
  std::string csv = "plan,policy,kv_bytes_per_sequence,delta_nll,top1_agreement,kl,pred_delta_nll,"
                    "pred_delta_nll_low,pred_delta_nll_high,pred_top1,pred_top1_low,pred_top1_high\n";
  Progress progress("eval --plans", static_cast<int64_t>(plans.size()), !flags.json);
  nlohmann::json all = nlohmann::json::array();
  for (size_t i = 0; i < plans.size(); ++i) {
    const std::string name = std::filesystem::path(flags.plans[i]).stem().string();
    KVP_ASSIGN_OR_RETURN(Measured m, measure(decoder, ctx.corpus, ref, plans[i], flags.plans[i], flags, nullptr, nullptr,
                                             positions_file(flags, name)));
    KVP_RETURN_IF_ERROR(m.save((std::filesystem::path(flags.out) / "measured" / (name + ".yaml")).string()));
    auto pred = [&](const char* key) {
      const auto it = plans[i].predicted.find(key);
      return it == plans[i].predicted.end() ? std::string() : fmt::format("{:.6f}", it->second);
    };
    csv += fmt::format("{},{},{},{:.6f},{:.6f},{:.6f},{},{},{},{},{},{}\n", name, m.policy, m.kv_bytes_per_sequence,
                       m.delta_nll, m.top1_agreement, m.kl, pred("delta_nll"), pred("delta_nll_low"),
                       pred("delta_nll_high"), pred("top1_agreement"), pred("top1_agreement_low"),
                       pred("top1_agreement_high"));
    all.push_back(metrics_json(m));
    all.back()["plan"] = flags.plans[i];
    progress.update(static_cast<int64_t>(i + 1), fmt::format("{}: dNLL {:.4f}", name, m.delta_nll));
  }
  progress.finish(static_cast<int64_t>(plans.size()));
  KVP_RETURN_IF_ERROR(write_file_atomic((std::filesystem::path(flags.out) / "plans.csv").string(), csv));
  if (flags.json) {
    std::printf("%s\n", all.dump(2).c_str());
  } else {
    std::printf("measured %zu plans on %s: wrote %s/plans.csv and %s/measured/*.yaml\n", plans.size(),
                ctx.corpus.source.c_str(), flags.out.c_str(), flags.out.c_str());
  }
  return ok_status();
}

std::string markdown_table(const std::string& title, const std::vector<std::string>& policies,
                           const std::vector<int>& budgets, const std::map<std::pair<std::string, int>, Measured>& grid,
                           const std::function<std::string(const Measured&)>& cell) {
  return "### " + title + "\n\n" + policy_budget_table(policies, budgets, [&](const std::string& p, int b) {
           auto it = grid.find({p, b});
           return it == grid.end() ? std::string("—") : cell(it->second);
         }) + "\n";
}

Status eval_grid(const EvalFlags& flags) {
  if (flags.out.empty()) return make_error("--out: eval --grid needs a directory to write grid.csv and grid.md");
  const std::vector<std::string> policies = split_list(flags.policies);
  KVP_ASSIGN_OR_RETURN(std::vector<int> budgets, parse_int_list("--budgets", flags.budgets));
  for (const std::string& p : policies) KVP_RETURN_IF_ERROR(make_policy(p, PolicyParams{}).status());
  KVP_ASSIGN_OR_RETURN(Context ctx, load_context(flags));
  KVP_RETURN_IF_ERROR(make_output_dirs(flags));

  CpuBackend backend(ctx.model.weights, flags.model.threads);
  Decoder decoder(backend);
  const EvalOptions options{.prompt_len = flags.prompt_len, .batch = flags.batch};
  const EvalReference ref = compute_reference(decoder, ctx.corpus, options);
  int longest = 0;
  for (const auto& s : ctx.corpus.sequences) longest = std::max(longest, static_cast<int>(s.size()));

  std::map<std::pair<std::string, int>, Measured> grid;
  std::string csv = "policy,budget,sinks,recent,detail,kv_bytes_per_sequence,keep_ratio,delta_nll,nll_full,"
                    "nll_pruned,top1_agreement,kl,greedy_agreement_tokens,greedy_agreement_fraction,tokens_per_s\n";
  const int64_t full_bytes = full_cache_budgets(ctx.model.weights.config(), longest).kv_bytes();
  int n_configs = 0;
  for (const std::string& p : policies) n_configs += p == "full" ? 1 : static_cast<int>(budgets.size());
  Progress progress("eval --grid: configurations", n_configs, !flags.json);
  int done = 0;
  for (const std::string& p : policies) {
    for (int b : budgets) {
      const int budget = p == "full" ? longest : b;
      KVP_ASSIGN_OR_RETURN(Plan plan, flags.plan.uniform(ctx.plan_model, p, budget));
      KVP_ASSIGN_OR_RETURN(Measured m, measure(decoder, ctx.corpus, ref, plan, "flags", flags, nullptr, nullptr,
                                               positions_file(flags, fmt::format("{}-{}", p, budget))));
      KVP_RETURN_IF_ERROR(m.save((std::filesystem::path(flags.out) / "measured" /
                                  fmt::format("{}-{}.yaml", p, budget)).string()));
      csv += fmt::format("{},{},{},{},{},{},{:.6f},{:.6f},{:.6f},{:.6f},{:.6f},{:.6f},{:.3f},{:.6f},{:.0f}\n", p, budget,
                         m.sinks, m.recent, m.policy_detail, m.kv_bytes_per_sequence,
                         double(m.kv_bytes_per_sequence) / full_bytes, m.delta_nll, m.nll_full, m.nll_pruned,
                         m.top1_agreement, m.kl, m.greedy_agreement_tokens, m.greedy_agreement_fraction,
                         m.tokens_per_s);
      progress.update(++done, fmt::format("{} @ {}: dNLL {:.4f}", p, budget, m.delta_nll));
      if (p == "full") {
        for (int bb : budgets) grid[{p, bb}] = m;
        break;
      }
      grid[{p, b}] = std::move(m);
    }
  }
  progress.finish(done);
  std::string md = fmt::format(
      "## stories260K: policies × budgets\n\nCorpus `{}`: {} sequences, prompt {} tokens (full attention, then cut "
      "to budget), {} predicted tokens per configuration. Budgets are slots per layer and KV head; the full cache of "
      "a {}-token sequence is {} bytes. Sinks and recent window: {}.\n\n",
      ctx.corpus.source, ctx.corpus.sequences.size(), flags.prompt_len, grid.begin()->second.n_predicted_tokens,
      longest, full_bytes,
      flags.plan.sinks || !flags.plan.recent.empty()
          ? fmt::format("sinks {}, recent {}", flags.plan.sinks ? std::to_string(*flags.plan.sinks) : "per policy",
                        flags.plan.recent.empty() ? "per policy" : flags.plan.recent)
          : "each policy's published defaults");
  md += markdown_table("Mean ΔNLL (nats/token, lower is better)", policies, budgets, grid,
                       [](const Measured& m) { return fmt::format("{:.4f}", m.delta_nll); });
  md += markdown_table("Top-1 agreement with the full cache", policies, budgets, grid,
                       [](const Measured& m) { return fmt::format("{:.3f}", m.top1_agreement); });
  md += markdown_table("KL(full ‖ pruned) (nats/token)", policies, budgets, grid,
                       [](const Measured& m) { return fmt::format("{:.4f}", m.kl); });
  md += markdown_table("Greedy agreement (tokens until the first divergence, mean)", policies, budgets, grid,
                       [](const Measured& m) { return fmt::format("{:.1f}", m.greedy_agreement_tokens); });
  md += markdown_table("KV bytes per sequence", policies, budgets, grid,
                       [](const Measured& m) { return std::to_string(m.kv_bytes_per_sequence); });
  KVP_RETURN_IF_ERROR(write_file_atomic((std::filesystem::path(flags.out) / "grid.csv").string(), csv));
  KVP_RETURN_IF_ERROR(write_file_atomic((std::filesystem::path(flags.out) / "grid.md").string(), md));
  if (flags.json) {
    nlohmann::json j = nlohmann::json::array();
    for (const auto& [key, m] : grid) j.push_back(metrics_json(m));
    std::printf("%s\n", j.dump(2).c_str());
  } else {
    std::printf("%s", md.c_str());
    std::printf("wrote %s/grid.csv, %s/grid.md and %s/measured/*.yaml\n", flags.out.c_str(), flags.out.c_str(),
                flags.out.c_str());
  }
  return ok_status();
}

// --tasks: every configuration on every instance (shared prefills), outcomes.csv with a row per
// configuration and instance, summary.csv and summary.md with accuracy per configuration, family
// and length (Wilson 95% interval), and ΔNLL and KL on the reference answers.
Status eval_tasks(const EvalFlags& flags) {
  if (flags.out.empty()) return make_error("--out: eval --tasks needs a directory to write outcomes.csv and summary.*");
  if (!flags.corpus.empty()) return make_error("--corpus and --tasks: give one of them");
  if (flags.prefill_evict) return make_error("--prefill-evict: eval --tasks holds each prompt whole to share it");
  if (flags.plan.compress.given() && flags.plan.plan_path.empty() && flags.plans.empty()) {
    return make_error("--think/--mustafar: with --tasks, make a plan with them (kvplan plan --think ...) and give it "
                      "to --plan or --plans");
  }
  KVP_ASSIGN_OR_RETURN(LoadedModel model, load_model(flags.model.model, flags.model.tokenizer, flags.model.load_options()));
  KVP_ASSIGN_OR_RETURN(std::string fingerprint, model_fingerprint(model));
  KVP_ASSIGN_OR_RETURN(TaskFile file, load_tasks(flags.tasks, model.weights.config(), fingerprint));
  std::vector<CutPoint> cuts;
  if (flags.cut == "agnostic" || flags.cut == "both") cuts.push_back(CutPoint::kContext);
  if (flags.cut == "aware" || flags.cut == "both") cuts.push_back(CutPoint::kQuestion);
  if (cuts.empty()) return make_error("--cut: expected agnostic, aware or both, found '{}'", flags.cut);
  // The configurations: a plan, plans, one policy at --keep ratios, or the grid of policies ×
  // compression ratios (keep = 1 − compression), each at every cut.
  std::vector<TaskConfig> configs;
  const PlanModel pm = plan_model(model.weights.config(), fingerprint);
  auto add = [&](TaskConfig c) {
    for (CutPoint cut : cuts) {
      c.cut = cut;
      TaskConfig copy = c;
      copy.label = c.label + (cuts.size() > 1 ? fmt::format(" {}", cut_point_name(cut)) : "");
      configs.push_back(copy);
    }
  };
  auto add_plan = [&](const std::string& path) -> Status {
    KVP_ASSIGN_OR_RETURN(Plan plan, Plan::load(path));
    KVP_RETURN_IF_ERROR(plan.check_model(pm, path, model.files.model_path));
    add(TaskConfig{.label = std::filesystem::path(path).stem().string(), .policy = plan.policy, .params = plan.params,
                   .published_defaults = false, .budgets = plan.kv_budgets()});
    return ok_status();
  };
  if (!flags.plan.plan_path.empty()) {
    KVP_RETURN_IF_ERROR(add_plan(flags.plan.plan_path));
  } else if (!flags.plans.empty()) {
    for (const std::string& p : flags.plans) KVP_RETURN_IF_ERROR(add_plan(p));
  } else if (flags.grid) {
    KVP_ASSIGN_OR_RETURN(std::vector<double> ratios, parse_ratio_list("--compression", flags.compressions));
    add(TaskConfig{.label = "full"});
    for (const std::string& p : split_list(flags.policies)) {
      if (p == "full") continue;
      KVP_ASSIGN_OR_RETURN(PolicyParams params, flags.plan.params_for(p, 64));
      for (double r : ratios) {
        add(TaskConfig{.label = fmt::format("{} c{}", p, r), .policy = p, .params = params, .keep = 1.0 - r});
      }
    }
  } else {
    if (flags.plan.policy.empty()) return make_error("eval --tasks: give --plan, --plans, --grid, or --policy with --keep or --budget");
    KVP_ASSIGN_OR_RETURN(PolicyParams params, flags.plan.params_for(flags.plan.policy, std::max(flags.plan.budget, 64)));
    if (flags.plan.budget > 0) {
      const ModelConfig& c = model.weights.config();
      KvBudgets b = KvBudgets::uniform(c.n_layers, c.n_kv_heads, c.head_dim(), flags.plan.budget);
      add(TaskConfig{.label = fmt::format("{} b{}", flags.plan.policy, flags.plan.budget), .policy = flags.plan.policy,
                     .params = params, .published_defaults = false, .budgets = b});
    } else {
      if (flags.keep.empty()) return make_error("--keep: eval --tasks with --policy needs --keep ratios or --budget");
      for (double k : flags.keep) {
        if (!(k > 0 && k <= 1)) return make_error("--keep: expected ratios in (0, 1], found {}", k);
        add(TaskConfig{.label = fmt::format("{} k{}", flags.plan.policy, k), .policy = flags.plan.policy, .params = params,
                       .keep = k, .published_defaults = !flags.plan.sinks && flags.plan.recent.empty()});
      }
    }
  }
  for (const TaskConfig& c : configs) {
    if (c.policy == "full") continue;
    KVP_RETURN_IF_ERROR(make_policy(c.policy, c.params).status());
  }
  std::error_code ec;
  std::filesystem::create_directories(flags.out, ec);
  if (ec) return make_error("{}: cannot create: {}", flags.out, ec.message());
  CpuBackend backend(model.weights, flags.model.threads);
  int64_t tokens = 0;
  for (const TaskInstance& t : file.instances) tokens += static_cast<int64_t>(t.tokens.size());
  Progress progress("eval --tasks: instances", static_cast<int64_t>(file.instances.size()), !flags.json);
  TaskTrace trace{.model_fingerprint = fingerprint, .n_layers = model.weights.config().n_layers,
                  .n_kv_heads = model.weights.config().n_kv_heads, .cut_point = std::string(cut_point_name(cuts[0])),
                  .tasks = flags.tasks};
  const auto outcomes = evaluate_tasks(
      backend, model.tokenizer, file.instances, configs,
      TaskEvalOptions{.prefill_chunk = flags.prefill_chunk, .batch = std::min(flags.batch, 8),
                      .trace = flags.trace_out.empty() ? nullptr : &trace, .trace_cut = cuts[0],
                      .progress = [&](int done, double) { progress.update(done); }});
  progress.finish(static_cast<int64_t>(file.instances.size()));
  if (!flags.trace_out.empty()) KVP_RETURN_IF_ERROR(trace.save(flags.trace_out));
  std::string rows = "config,policy,cut,id,family,length,prompt_tokens,budget,kv_bytes,score,nll_full,nll,delta_nll,kl,"
                     "needles_kept,sinks,recent,detail,prediction\n";
  struct Sum {
    double score = 0, dnll = 0, kl = 0, needles = 0;
    int n = 0;
    int64_t kv_bytes = 0;
  };
  std::map<std::tuple<size_t, std::string, int>, Sum> sums;  // (config, family, length)
  for (size_t c = 0; c < configs.size(); ++c) {
    for (const TaskOutcome& o : outcomes[c]) {
      std::string pred = o.prediction;
      for (char& ch : pred) ch = ch == '"' ? '\'' : ch == '\n' ? ' ' : ch;
      rows += fmt::format("{},{},{},{},{},{},{},{},{},{:.4f},{:.5f},{:.5f},{:.5f},{:.5f},{:.4f},{},{},\"{}\",\"{}\"\n",
                          configs[c].label, configs[c].policy, cut_point_name(configs[c].cut), o.id, o.family, o.length,
                          o.prompt_tokens, o.budget, o.kv_bytes, o.score, o.nll_full, o.nll, o.nll - o.nll_full, o.kl,
                          o.needles_kept, o.sinks, o.recent, o.detail, pred);
      Sum& s = sums[{c, o.family, o.length}];
      s.score += o.score, s.dnll += o.nll - o.nll_full, s.kl += o.kl, s.needles += o.needles_kept, s.kv_bytes += o.kv_bytes;
      ++s.n;
    }
  }
  std::string csv = "config,policy,cut,family,length,n,accuracy,accuracy_low,accuracy_high,delta_nll,kl,needles_kept,"
                    "kv_bytes\n";
  std::string md = fmt::format("## Task accuracy: {}\n\n{} instances of {} families, model {}. Accuracy is RULER's "
                               "score of the greedy answer (95% Wilson interval); ΔNLL and KL are on the reference "
                               "answer's tokens, teacher-forced, against the full cache.\n\n"
                               "| configuration | cut | family | length | n | accuracy | interval | ΔNLL | KL | needle "
                               "tokens kept | KV bytes |\n|---|---|---|---:|---:|---:|---|---:|---:|---:|---:|\n",
                               flags.tasks, file.instances.size(), file.header.families.size(), model.files.model_path);
  nlohmann::json j = nlohmann::json::array();
  for (const auto& [key, s] : sums) {
    const auto& [c, family, length] = key;
    const double acc = s.score / s.n;
    const Interval ci = wilson_interval(acc, s.n);
    csv += fmt::format("{},{},{},{},{},{},{:.4f},{:.4f},{:.4f},{:.5f},{:.5f},{:.4f},{}\n", configs[c].label,
                       configs[c].policy, cut_point_name(configs[c].cut), family, length, s.n, acc, ci.low, ci.high,
                       s.dnll / s.n, s.kl / s.n, s.needles / s.n, s.kv_bytes / s.n);
    md += fmt::format("| {} | {} | {} | {} | {} | {:.3f} | [{:.2f}, {:.2f}] | {:.4f} | {:.4f} | {:.3f} | {} |\n",
                      configs[c].label, cut_point_name(configs[c].cut), family, length, s.n, acc, ci.low, ci.high,
                      s.dnll / s.n, s.kl / s.n, s.needles / s.n, s.kv_bytes / s.n);
    j.push_back({{"config", configs[c].label}, {"policy", configs[c].policy}, {"cut", cut_point_name(configs[c].cut)},
                 {"family", family}, {"length", length}, {"n", s.n}, {"accuracy", acc}, {"accuracy_low", ci.low},
                 {"accuracy_high", ci.high}, {"delta_nll", s.dnll / s.n}, {"kl", s.kl / s.n},
                 {"needles_kept", s.needles / s.n}, {"kv_bytes", s.kv_bytes / s.n}});
  }
  const std::filesystem::path dir(flags.out);
  KVP_RETURN_IF_ERROR(write_file_atomic((dir / "outcomes.csv").string(), rows));
  KVP_RETURN_IF_ERROR(write_file_atomic((dir / "summary.csv").string(), csv));
  KVP_RETURN_IF_ERROR(write_file_atomic((dir / "summary.md").string(), md));
  if (flags.json) {
    std::printf("%s\n", j.dump(2).c_str());
  } else {
    std::printf("%s\nwrote %s/outcomes.csv, summary.csv and summary.md (%lld prompt tokens, %zu configurations)\n",
                md.c_str(), flags.out.c_str(), static_cast<long long>(tokens), configs.size());
  }
  return ok_status();
}

}  // namespace

Command add_eval_command(CLI::App& app) {
  auto flags = std::make_shared<EvalFlags>();
  CLI::App* sub = app.add_subcommand(
      "eval",
      "Measure a plan against the full cache on a corpus (teacher-forced ΔNLL, top-1 agreement, KL, greedy "
      "agreement, KV bytes, tokens/s); --grid runs policies × budgets");
  flags->model.add_to(sub);
  flags->plan.add_to(sub);
  sub->add_option("--corpus", flags->corpus, "A kvplan corpus file or a plain text file (or --tasks)");
  sub->add_option("--tasks", flags->tasks,
                  "A kvplan tasks file instead of --corpus: generate each answer greedily under each configuration "
                  "and score it (accuracy per family and length), with ΔNLL and KL on the reference answers; "
                  "writes --out DIR/outcomes.csv, summary.csv, summary.md");
  sub->add_option("--keep", flags->keep, "--tasks with --policy: keep ratios of each prompt's cut (e.g. 0.5 0.25)")
      ->expected(1, -1);
  sub->add_option("--compression", flags->compressions,
                  "--tasks --grid: compression ratios, the share of the cut's tokens dropped (default 0.25,0.5,0.75,0.875, "
                  "kvpress's leaderboard grid)");
  sub->add_option("--cut", flags->cut,
                  "--tasks: where the cache is cut: agnostic (before the question: the default, kvpress's leaderboard "
                  "setting), aware (after it) or both");
  sub->add_option("--trace-out", flags->trace_out,
                  "--tasks: also write a task trace (as kvplan record --tasks) of the configurations' scorers at the "
                  "first --cut, from the same prefills");
  sub->add_option("--prompt-len", flags->prompt_len, "Prompt positions attended in full before eviction (default 64)");
  sub->add_option("--batch", flags->batch, "Sequences per forward pass (default 16)");
  sub->add_option("--prefill-chunk", flags->prefill_chunk, "Prompt rows per forward pass (default 512)")
      ->check(CLI::PositiveNumber);
  sub->add_flag("--prefill-evict", flags->prefill_evict,
                "Cut each prompt to budget after every chunk of --prefill-chunk rows (scores from the chunks so far)");
  sub->add_option("--out", flags->out, "measured.yaml to write (default ./measured.yaml); with --grid a directory");
  sub->add_option("--eviction-log", flags->eviction_log, "CSV of every eviction: seq, step, layer, head, position, score");
  sub->add_option("--positions", flags->positions,
                  "ΔNLL of every predicted token, a float32 .npy [sequences, tokens] (NaN past a shorter sequence's "
                  "end; column j: the token at prompt-len + j); with --grid or --plans a directory of NAME.npy");
  sub->add_flag("--json", flags->json, "Machine-readable output, no progress");
  sub->add_flag("--grid", flags->grid, "Evaluate uniform plans for every --policies × --budgets");
  sub->add_option("--policies", flags->policies, "Policies of the grid (default: all)");
  sub->add_option("--budgets", flags->budgets, "Budgets of the grid (default 16,32,64,128,256)");
  sub->add_option("--plans", flags->plans,
                  "Several plan files measured against one full-cache reference (writes --out DIR/plans.csv)")
      ->expected(1, -1);
  return {sub, [flags] {
            if (flags->grid && !flags->plans.empty()) return Status(make_error("--grid and --plans: give one of them"));
            if (!flags->tasks.empty()) return eval_tasks(*flags);
            if (flags->corpus.empty()) return Status(make_error("--corpus: eval needs a corpus (or --tasks)"));
            if (!flags->plans.empty()) return eval_plans(*flags);
            return flags->grid ? eval_grid(*flags) : eval_one(*flags);
          }};
}

}  // namespace kvp::cli
