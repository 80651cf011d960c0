// kvplan record: run the full-cache executor over a corpus and write a trace.
#include <nlohmann/json.hpp>

#include <cstdio>
#include <thread>

#include "common/progress.h"
#include "executor/recorder.h"
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
};

Status record(const RecordFlags& flags) {
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
      "record", "Run the full-cache model over a corpus and write a trace directory (q, k, v per layer)");
  flags->model.add_to(sub);
  sub->add_option("--corpus", flags->corpus, "A kvplan corpus file or a plain text file")->required();
  sub->add_option("--prompt-len", flags->prompt_len,
                  "Positions attended in full before eviction starts, stored per sequence (default 64)");
  sub->add_option("--dtype", flags->dtype, "Element type of q, k and v: f32, f16 or bf16 (default f32)");
  sub->add_option("--layers", flags->layers,
                  "Record only these layers, e.g. 0,4,8 or 0-3 (default all); replay interpolates the others");
  sub->add_option("--query-stride", flags->query_stride,
                  "Keep the query of every k-th position only, the prompt's last among them (keys and values of "
                  "every position stay; default 1)");
  sub->add_option("--chunk", flags->chunk, "Positions per forward pass, bounding activations and logits (default 512)");
  sub->add_option("--out", flags->out, "Trace directory to create")->required();
  sub->add_flag("--force", flags->force, "Replace --out if it exists");
  sub->add_flag("--json", flags->json, "Print a JSON summary, no progress");
  return {sub, [flags] { return record(*flags); }};
}

}  // namespace kvp::cli
