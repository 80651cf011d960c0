// kvplan record: run the full-cache executor over a corpus and write a trace.
#include <nlohmann/json.hpp>

#include <cstdio>
#include <thread>

#include "common/progress.h"
#include "executor/recorder.h"
#include "executor/tasks/task_eval.h"
#include "tools/kvplan/command.h"
#include "tools/kvplan/plan_flags.h"

namespace kvp::cli {
namespace {

struct RecordFlags {
  ModelFlags model;
  std::string corpus;
  int prompt_len = 64;
  std::string dtype = "f32";
  std::string layers;
  int query_stride = 1;
  int chunk = 512;
  std::string out;
  bool force = false;
  bool json = false;
  // --tasks: a task trace instead (task_trace.h).
  std::string tasks;
  std::string policies = "window,h2o,vatp,vatp_mean,tova,snapkv,knorm,kvcrush";
  std::string cut = "agnostic";
};

// kvplan record --tasks: each instance's prompt prefilled once with the full cache, every scorer's
// scores at the cut, the full cache's answer attention and score (evaluate_tasks with no
// configuration, tracing).
Status record_tasks(const RecordFlags& flags) {
  if (!flags.corpus.empty()) return make_error("--corpus and --tasks: give one of them");
  if (flags.cut != "agnostic" && flags.cut != "aware") return make_error("--cut: expected agnostic or aware, found '{}'", flags.cut);
  if (!flags.force && std::filesystem::exists(flags.out)) return make_error("{}: exists (--force replaces it)", flags.out);
  KVP_ASSIGN_OR_RETURN(LoadedModel model, load_model(flags.model.model, flags.model.tokenizer, flags.model.load_options()));
  KVP_ASSIGN_OR_RETURN(std::string fingerprint, model_fingerprint(model));
  KVP_ASSIGN_OR_RETURN(TaskFile file, load_tasks(flags.tasks, model.weights.config(), fingerprint));
  TaskEvalOptions options{.prefill_chunk = flags.chunk};
  for (const std::string& name : split_list(flags.policies)) {
    const std::string base = name == "vatp_mean" ? "vatp" : name;  // VATP with the mean base
    PolicyParams params = published_defaults(base, 64);
    if (name == "vatp_mean") params.vatp_base = VatpBase::kMean;
    auto policy = make_policy(base, params);
    if (!policy.ok()) return make_error("--policies: {}", policy.error().message());
    if (!policy.value()->evicts()) return make_error("--policies: {} keeps every token: nothing to record for it", name);
    options.trace_scorers.push_back(std::shared_ptr<const Policy>(std::move(policy).value()));
  }
  TaskTrace trace{.model_fingerprint = fingerprint, .n_layers = model.weights.config().n_layers,
                  .n_kv_heads = model.weights.config().n_kv_heads, .cut_point = flags.cut, .tasks = flags.tasks};
  options.trace = &trace;
  options.trace_cut = flags.cut == "agnostic" ? CutPoint::kContext : CutPoint::kQuestion;
  CpuBackend backend(model.weights, flags.model.threads);
  const auto start = std::chrono::steady_clock::now();
  int64_t tokens = 0;
  {
    Progress progress("record --tasks: instances", static_cast<int64_t>(file.instances.size()), !flags.json);
    options.progress = [&](int done, double) { progress.update(done); };
    evaluate_tasks(backend, model.tokenizer, file.instances, {}, options);
    progress.finish(static_cast<int64_t>(file.instances.size()));
  }
  for (const TaskTraceInstance& t : trace.instances) tokens += t.prompt_tokens;
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  KVP_RETURN_IF_ERROR(trace.save(flags.out));
  const int64_t bytes = std::filesystem::file_size(flags.out);
  double answered = 0;
  for (const TaskTraceInstance& t : trace.instances) answered += t.full_score;
  if (flags.json) {
    std::printf("%s\n", nlohmann::json({{"out", flags.out}, {"instances", trace.instances.size()},
                                        {"scorers", trace.scorers.size()}, {"prompt_tokens", tokens},
                                        {"bytes", bytes}, {"seconds", seconds}, {"tokens_per_s", tokens / seconds},
                                        {"full_accuracy", answered / std::max<size_t>(1, trace.instances.size())}})
                            .dump(2).c_str());
  } else {
    std::printf("wrote task trace %s: %zu instances cut %s, %zu scorers, %.1f MB, full-cache accuracy %.3f; %lld prompt "
                "tokens in %.1f s (%.0f tokens/s)\n", flags.out.c_str(), trace.instances.size(), flags.cut.c_str(),
                trace.scorers.size(), bytes / 1e6, answered / std::max<size_t>(1, trace.instances.size()),
                static_cast<long long>(tokens), seconds, tokens / seconds);
  }
  return ok_status();
}

Status record(const RecordFlags& flags) {
  if (!flags.tasks.empty()) return record_tasks(flags);
  if (flags.corpus.empty()) return make_error("record: give --corpus (a trace of text) or --tasks (a task trace)");
  RecordOptions options{.out_dir = flags.out, .prompt_len = flags.prompt_len, .query_stride = flags.query_stride,
                        .chunk = flags.chunk, .overwrite = flags.force,
                        .tool_version = std::string("kvplan ") + KVP_VERSION, .threads = flags.model.threads};
  if (flags.dtype == "f32") {
    options.qkv_dtype = TensorDtype::kF32;
  } else if (flags.dtype == "f16") {
    options.qkv_dtype = TensorDtype::kF16;
  } else if (flags.dtype == "bf16") {
    options.qkv_dtype = TensorDtype::kBF16;
  } else {
    return make_error("--dtype: expected f32, f16 or bf16, found '{}'", flags.dtype);
  }
  if (!flags.layers.empty()) {
    KVP_ASSIGN_OR_RETURN(options.layers, parse_layer_list("--layers", flags.layers));
  }
  KVP_ASSIGN_OR_RETURN(LoadedModel model, load_model(flags.model.model, flags.model.tokenizer, flags.model.load_options()));
  KVP_ASSIGN_OR_RETURN(Corpus corpus,
                       load_corpus(flags.corpus, model.tokenizer, model.weights.config().seq_len));
  RecordStats stats;
  {
    Progress progress("record: sequences", static_cast<int64_t>(corpus.sequences.size()), !flags.json);
    KVP_ASSIGN_OR_RETURN(stats, record_trace(model, corpus, options, [&](int done, int64_t bytes) {
                           progress.update(done, fmt::format("{:.1f} MB", bytes / 1e6));
                         }));
    progress.finish(stats.n_sequences, fmt::format("{:.1f} MB", stats.bytes / 1e6));
  }
  const double tokens_per_s = stats.seconds > 0 ? stats.n_tokens / stats.seconds : 0;
  if (flags.json) {
    std::printf("%s\n", nlohmann::json({{"out", flags.out},
                                        {"n_sequences", stats.n_sequences},
                                        {"n_tokens", stats.n_tokens},
                                        {"tensor_bytes", stats.bytes},
                                        {"seconds", stats.seconds},
                                        {"tokens_per_s", tokens_per_s}})
                            .dump(2)
                            .c_str());
  } else {
    std::printf("wrote trace %s: %d sequences, %lld tokens, %.1f MB of tensors in %.2f s (%.0f tokens/s)\n",
                flags.out.c_str(), stats.n_sequences, static_cast<long long>(stats.n_tokens),
                stats.bytes / 1e6, stats.seconds, tokens_per_s);
  }
  return ok_status();
}

}  // namespace

Command add_record_command(CLI::App& app) {
  auto flags = std::make_shared<RecordFlags>();
  CLI::App* sub = app.add_subcommand(
      "record", "Run the full-cache model over a corpus and write a trace directory (q, k, v per layer), or over task instances and write a task trace");
  flags->model.add_to(sub);
  sub->add_option("--corpus", flags->corpus, "A kvplan corpus file or a plain text file");
  sub->add_option("--tasks", flags->tasks,
                  "A tasks file (kvplan tasks): write a task trace to --out instead, a file holding per instance "
                  "each --policies scorer's prefill scores at the cut, the full cache's answer attention and its score "
                  "(kvplan calibrate --task-trace, plan/sweep --task-calibration)");
  sub->add_option("--policies", flags->policies,
                  "With --tasks: the policies whose prefill scores are recorded, comma-separated; vatp_mean is VATP "
                  "with the mean base (default window,h2o,vatp,vatp_mean,tova,snapkv,knorm,kvcrush)");
  sub->add_option("--cut", flags->cut,
                  "With --tasks: where the cache is cut: agnostic (before the question, the default) or aware (after it)");
  sub->add_option("--prompt-len", flags->prompt_len,
                  "Positions attended in full before eviction starts, stored per sequence (default 64)");
  sub->add_option("--dtype", flags->dtype, "Element type of q, k and v: f32, f16 or bf16 (default f32)");
  sub->add_option("--layers", flags->layers,
                  "Record only these layers, e.g. 0,4,8 or 0-3 (default all); replay interpolates the others");
  sub->add_option("--query-stride", flags->query_stride,
                  "Keep the query of every k-th position only, the prompt's last among them (keys and values of "
                  "every position stay; default 1)");
  sub->add_option("--chunk", flags->chunk, "Positions per forward pass, bounding activations and logits (default 512)");
  sub->add_option("--out", flags->out, "Trace directory to create (--tasks: the task trace file)")->required();
  sub->add_flag("--force", flags->force, "Replace --out if it exists");
  sub->add_flag("--json", flags->json, "Print a JSON summary, no progress");
  return {sub, [flags] { return record(*flags); }};
}

}  // namespace kvp::cli
