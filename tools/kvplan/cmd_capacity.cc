// kvplan capacity: how many sequences fit on a device at a context length, and how fast they
// decode, with the full cache and with a plan (or a keep ratio) side by side.
#include <nlohmann/json.hpp>

#include <cstdio>

#include "planner/capacity.h"
#include "planner/plan/plan.h"
#include "tools/kvplan/command.h"

namespace kvp::cli {
namespace {

struct CapacityFlags {
  std::string model = "llama-2-7b";
  std::string model_file;  // a real model (--model): its shape and its tensors' bytes
  std::string hardware = "h100-80gb";
  int context = 0;
  double keep = 0;
  std::string plan;
  std::string kv_dtype = "f16";
  int weight_bytes = 2;
  bool json = false;
};

Status run_capacity(const CapacityFlags& flags) {
  KVP_ASSIGN_OR_RETURN(std::string hw_path, find_config("hardware", flags.hardware));
  ModelSpec model;
  int64_t file_weight_bytes = 0;
  if (!flags.model_file.empty()) {
    // Mapped, not read: only the header and tensor table are touched.
    KVP_ASSIGN_OR_RETURN(LoadedModel m, load_model(flags.model_file, "", LoadOptions{.check_weights = false}));
    const ModelConfig& c = m.weights.config();
    model = ModelSpec{.name = m.files.model_path, .dim = c.dim, .hidden_dim = c.hidden_dim, .n_layers = c.n_layers,
                      .n_heads = c.n_heads, .n_kv_heads = c.n_kv_heads, .vocab_size = c.vocab_size,
                      .seq_len = c.seq_len, .tied_embeddings = c.shared_classifier, .head_size = c.head_size,
                      .source = std::string(model_format_name(m.files.format)) + " file " + m.files.model_path};
    file_weight_bytes = m.weights.weight_bytes();
  } else {
    KVP_ASSIGN_OR_RETURN(std::string model_path, find_config("models", flags.model));
    KVP_ASSIGN_OR_RETURN(model, ModelSpec::load(model_path));
  }
  KVP_ASSIGN_OR_RETURN(HardwareSpec hw, HardwareSpec::load(hw_path));
  KVP_ASSIGN_OR_RETURN(KvDtype dtype, parse_kv_dtype(flags.kv_dtype));
  const int context = flags.context > 0 ? flags.context : model.seq_len;
  if (flags.weight_bytes != 1 && flags.weight_bytes != 2 && flags.weight_bytes != 4) {
    return make_error("--weight-bytes: expected 1, 2 or 4 bytes per parameter, found {}", flags.weight_bytes);
  }
  CapacityQuery q{.context_len = context, .weight_bytes_per_param = flags.weight_bytes, .weight_bytes = file_weight_bytes,
                  .kv_dtype = dtype};
  std::string what;
  if (!flags.plan.empty()) {
    if (flags.keep > 0) return make_error("--plan and --keep: give one");
    KVP_ASSIGN_OR_RETURN(Plan plan, Plan::load(flags.plan));
    if (plan.model.n_layers != model.n_layers || plan.model.n_kv_heads != model.n_kv_heads ||
        plan.model.head_dim != model.head_dim()) {
      return make_error("{}: model: the plan is for {} layers x {} KV heads (head_dim {}), {} has {} x {} ({})",
                        flags.plan, plan.model.n_layers, plan.model.n_kv_heads, plan.model.head_dim, model.name,
                        model.n_layers, model.n_kv_heads, model.head_dim());
    }
    q.plan_budgets = plan.kv_budgets().budget_tokens;
    for (int32_t& b : q.plan_budgets) b = std::min(b, context);
    q.aux_floats_per_slot = plan.kv_budgets().aux_floats_per_slot;
    what = fmt::format("plan {} ({})", flags.plan, plan.policy);
  } else {
    if (!(flags.keep > 0 && flags.keep <= 1)) return make_error("--keep: expected a ratio in (0, 1] (or --plan), found {}", flags.keep);
    q.keep_ratio = flags.keep;
    what = fmt::format("keep {:g}", flags.keep);
  }
  const CapacityReport r = capacity(model, hw, q);
  auto side_json = [](const CapacitySide& s) {
    return nlohmann::json{{"kv_bytes_per_sequence", s.kv_bytes_per_sequence},
                          {"activation_bytes_per_sequence", s.activation_bytes_per_sequence},
                          {"max_batch", s.max_batch}, {"decode_step_s", s.decode_step_s},
                          {"tokens_per_s", s.tokens_per_s}, {"memory_bound", s.memory_bound}};
  };
  if (flags.json) {
    std::printf("%s\n", nlohmann::json{{"model", model.name}, {"hardware", hw.name}, {"context", context},
                                       {"parameters", model.parameter_count()}, {"weight_bytes", r.weight_bytes},
                                       {"workspace_bytes", r.workspace_bytes}, {"full", side_json(r.full)},
                                       {"plan", side_json(r.plan)}, {"plan_source", what}}
                            .dump(2)
                            .c_str());
    return ok_status();
  }
  const std::string weights = file_weight_bytes > 0 ? std::string("weights as stored")
                                                   : fmt::format("{}-byte weights", flags.weight_bytes);
  std::printf("%s on %s at %d tokens of context (%.4gB parameters, %s: %.3f GiB; runtime reserve %.1f GiB)\n\n",
              model.name.c_str(), hw.name.c_str(), context, model.parameter_count() / 1e9, weights.c_str(),
              r.weight_bytes / double(1 << 30), r.workspace_bytes / double(1 << 30));
  std::printf("%-34s %18s %18s\n", "", "full cache", what.c_str());
  auto row = [](const char* name, const std::string& a, const std::string& b) {
    std::printf("%-34s %18s %18s\n", name, a.c_str(), b.c_str());
  };
  row("KV bytes per sequence", fmt::format("{:.1f} MiB", r.full.kv_bytes_per_sequence / double(1 << 20)),
      fmt::format("{:.1f} MiB", r.plan.kv_bytes_per_sequence / double(1 << 20)));
  row("largest batch that fits", std::to_string(r.full.max_batch), std::to_string(r.plan.max_batch));
  row("decode step at that batch (roofline)", fmt::format("{:.2f} ms", r.full.decode_step_s * 1e3),
      fmt::format("{:.2f} ms", r.plan.decode_step_s * 1e3));
  row("decode tokens/s", fmt::format("{:.0f}", r.full.tokens_per_s), fmt::format("{:.0f}", r.plan.tokens_per_s));
  row("bound by", r.full.memory_bound ? "memory" : "compute", r.plan.memory_bound ? "memory" : "compute");
  if (r.full.tokens_per_s > 0) {
    std::printf("\nthroughput gain %.2fx, batch gain %.2fx\n", r.plan.tokens_per_s / r.full.tokens_per_s,
                double(r.plan.max_batch) / std::max<int64_t>(1, r.full.max_batch));
  }
  return ok_status();
}

}  // namespace

Command add_capacity_command(CLI::App& app) {
  auto flags = std::make_shared<CapacityFlags>();
  CLI::App* sub = app.add_subcommand(
      "capacity", "How many sequences fit on a device and how fast they decode: full cache vs a plan or keep ratio");
  sub->add_option("--model", flags->model_file,
                  "A real model (.gguf, Hugging Face folder, llama2.c file, or a name): its shape, and its "
                  "tensors' bytes as the weight bytes (instead of --model-config and --weight-bytes)");
  sub->add_option("--model-config", flags->model,
                  "Model shape: a name in configs/models (llama-2-7b, llama-3-8b, mistral-7b, qwen2.5-7b, stories260K) or a YAML file");
  sub->add_option("--hardware", flags->hardware,
                  "Device: a name in configs/hardware (h100-80gb, h200, a100-80gb, a100-40gb, l4, cpu-2core) or a YAML file");
  sub->add_option("--context", flags->context, "Tokens per sequence (default: the model's seq_len)");
  sub->add_option("--keep", flags->keep, "Share of the cache kept in every layer and head, e.g. 0.4");
  sub->add_option("--plan", flags->plan, "A plan.yaml whose budgets to size instead of --keep (same model shape)");
  sub->add_option("--kv-dtype", flags->kv_dtype, "KV element type: f16 or f32 (default f16)");
  sub->add_option("--weight-bytes", flags->weight_bytes, "Bytes per weight: 2 (fp16), 1 (int8), 4 (f32) (default 2)");
  sub->add_flag("--json", flags->json, "Machine-readable output");
  return {sub, [flags] { return run_capacity(*flags); }};
}

}  // namespace kvp::cli
