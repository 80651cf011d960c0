// kvplan convert: a model in another format, weight type or RoPE layout — or random weights of a
// published shape — written as GGUF or as a Hugging Face folder.
#include <cstdio>
#include <memory>

#include "common/progress.h"
#include "executor/model/gguf_format.h"
#include "executor/model/model_convert.h"
#include "planner/capacity.h"
#include "tools/kvplan/command.h"
#include "tools/kvplan/plan_flags.h"

namespace kvp::cli {
namespace {

struct ConvertFlags {
  ModelFlags model;
  std::string random_shape;  // a configs/models name: random weights of that shape
  uint64_t seed = 1;
  int seq_len = 0;
  std::string to = "gguf";
  std::string dtype;         // empty: keep each tensor's type
  int shards = 1;
  std::string out;
};

Status convert(const ConvertFlags& flags) {
  if (flags.out.empty()) return make_error("--out: required (a .gguf file, or a folder for --to hf)");
  if (flags.to != "gguf" && flags.to != "hf") return make_error("--to: expected gguf or hf, found '{}'", flags.to);
  std::optional<WeightType> dtype;
  if (!flags.dtype.empty()) {
    Result<WeightType> t = parse_weight_type(flags.dtype);
    if (!t.ok()) return t.error().with_context("--dtype");
    dtype = *t;
  }
  if (flags.to == "hf" && dtype && *dtype != WeightType::kF32 && *dtype != WeightType::kF16 && *dtype != WeightType::kBF16) {
    return make_error("--dtype: safetensors holds f32, f16 or bf16, not {}", weight_type_name(*dtype));
  }
  if (flags.to == "gguf" && flags.shards != 1) return make_error("--shards: only for --to hf");

  std::optional<ModelWeights> weights;
  std::optional<Tokenizer> tokenizer;
  if (!flags.random_shape.empty()) {
    if (!flags.model.model.empty()) return make_error("--random-shape and --model: give one");
    KVP_ASSIGN_OR_RETURN(std::string path, find_config("models", flags.random_shape));
    KVP_ASSIGN_OR_RETURN(ModelSpec spec, ModelSpec::load(path));
    ModelConfig c{.dim = spec.dim, .hidden_dim = spec.hidden_dim, .n_layers = spec.n_layers, .n_heads = spec.n_heads,
                  .n_kv_heads = spec.n_kv_heads, .vocab_size = spec.vocab_size,
                  .seq_len = flags.seq_len > 0 ? flags.seq_len : spec.seq_len,
                  .shared_classifier = spec.tied_embeddings};
    if (Status s = c.validate(); !s.ok()) return s.error().with_context(path);
    std::fprintf(stderr, "convert: drawing random %s weights of %s (%.2fB parameters)\n",
                 std::string(weight_type_name(dtype.value_or(WeightType::kF16))).c_str(), spec.name.c_str(),
                 c.parameter_count() / 1e9);
    Progress progress("convert: random weights (parameters)", c.parameter_count());
    weights.emplace(random_typed_weights(c, flags.seed, dtype.value_or(WeightType::kF16),
                                         [&](int64_t done, int64_t) { progress.update(done); }));
    progress.finish(c.parameter_count());
    tokenizer.emplace(synthetic_tokenizer(c.vocab_size));
  } else {
    KVP_ASSIGN_OR_RETURN(LoadedModel m, load_model(flags.model.model, flags.model.tokenizer, flags.model.load_options()));
    // Keep the loaded model alive as the source of the converted views.
    auto source = std::make_shared<LoadedModel>(std::move(m));
    ModelWeights w = dtype ? convert_weights(source->weights, *dtype)
                           : ModelWeights::from_tensors(source->weights.config(), source->weights.tensors(),
                                                        {source}, source->weights.source()).value();
    weights.emplace(std::move(w));
    tokenizer.emplace(std::move(source->tokenizer));
  }
  const RopeStyle style = flags.to == "hf" || weights->config().architecture == "qwen2" ? RopeStyle::kHalf
                                                                                         : RopeStyle::kInterleaved;
  const ModelWeights out = with_rope_style(*weights, style);
  if (flags.to == "gguf") {
    KVP_RETURN_IF_ERROR(save_gguf(flags.out, out, *tokenizer));
  } else {
    KVP_RETURN_IF_ERROR(save_hf(flags.out, out, *tokenizer, {.shards = flags.shards}));
  }
  std::printf("wrote %s (%s, %s, %.2f MB of tensors: %s)\n", flags.out.c_str(), flags.to.c_str(),
              style == RopeStyle::kHalf ? "rotate-half q/k rows" : "interleaved q/k rows", out.weight_bytes() / 1e6,
              out.type_summary().c_str());
  return ok_status();
}

}  // namespace

Command add_convert_command(CLI::App& app) {
  auto flags = std::make_shared<ConvertFlags>();
  CLI::App* sub = app.add_subcommand(
      "convert",
      "Write a model as GGUF or a Hugging Face folder, optionally in another weight type; or random weights of a "
      "published shape (configs/models) for speed and memory work");
  flags->model.add_to(sub, false);
  sub->add_option("--random-shape", flags->random_shape,
                  "Instead of --model: random weights (std 0.02) of this configs/models shape, e.g. tinyllama-1.1b, "
                  "with a synthetic vocabulary");
  sub->add_option("--seed", flags->seed, "Seed of the random weights (default 1)");
  sub->add_option("--seq-len", flags->seq_len,
                  "Context length of a --random-shape model (default: the shape's), e.g. 20480 for 16K-token prompts");
  sub->add_option("--to", flags->to, "Output format: gguf (a file) or hf (a folder) (default gguf)");
  sub->add_option("--dtype", flags->dtype,
                  "Weight type of every matrix: f32, f16, bf16, or q8_0, q4_0, q4_1 (GGUF only; a matrix whose rows are not "
                  "whole 32-blocks stays f16); norms stay f32 (default: as loaded; "
                  "f16 for --random-shape)");
  sub->add_option("--shards", flags->shards, "Safetensors shards for --to hf (default 1)");
  sub->add_option("--out", flags->out, "Output file (gguf) or folder (hf); written under a temporary name first")->required();
  return {sub, [flags] { return convert(*flags); }};
}

}  // namespace kvp::cli
