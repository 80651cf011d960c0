// kvplan run: generate text with the full cache (plans come with the policies issue).
#include <nlohmann/json.hpp>

#include <sys/resource.h>

#include <cstdio>

#include "common/file_util.h"

#include "executor/cpu/cpu_backend.h"
#include "executor/generator.h"
#include "executor/gpu/gpu_backend.h"
#include "executor/model/model_locator.h"
#include "executor/recorder.h"
#include "tools/kvplan/command.h"
#include "tools/kvplan/plan_flags.h"

namespace kvp::cli {
namespace {

struct RunFlags {
  ModelFlags model;
  PlanFlags plan;
  std::vector<std::string> prompts;
  std::vector<std::string> prompt_files;
  int steps = 256;
  int prefill_chunk = 512;
  bool prefill_evict = false;
  SamplerOptions sampler{.temperature = 0.0f, .top_p = 0.9f, .seed = 0};
  bool json = false;
  std::string backend = "cpu";
  std::string weights_dtype = "f32";
};

Status run(const RunFlags& flags) {
  KVP_RETURN_IF_ERROR(flags.sampler.validate());
  KVP_ASSIGN_OR_RETURN(LoadedModel model, load_model(flags.model.model, flags.model.tokenizer, flags.model.load_options()));
  const ModelConfig& config = model.weights.config();
  if (flags.steps < 1 || flags.steps > config.seq_len) {
    return make_error("--steps: expected 1..{} (the model's seq_len), found {}", config.seq_len,
                      flags.steps);
  }
  if (flags.prefill_chunk < 1) return make_error("--prefill-chunk: expected at least 1, found {}", flags.prefill_chunk);
  std::vector<std::vector<int32_t>> prompts;
  for (const std::string& text : flags.prompts) {
    prompts.push_back(model.tokenizer.encode(text));
    if (prompts.back().size() > size_t(flags.steps)) {
      return make_error("--prompt: '{}' is {} tokens, more than --steps {}", text,
                        prompts.back().size(), flags.steps);
    }
  }
  for (const std::string& path : flags.prompt_files) {
    KVP_ASSIGN_OR_RETURN(std::string text, read_file_text(path));
    prompts.push_back(model.tokenizer.encode(text));
    if (prompts.back().size() > size_t(flags.steps)) {
      return make_error("--prompt-file: {} is {} tokens, more than --steps {}", path, prompts.back().size(),
                        flags.steps);
    }
  }
  if (prompts.empty()) prompts.push_back(model.tokenizer.encode(""));

  KVP_ASSIGN_OR_RETURN(std::unique_ptr<Backend> backend_ptr,
                       make_backend(flags.backend, flags.weights_dtype, model.weights, flags.model.threads));
  Backend& backend = *backend_ptr;
  Decoder decoder(backend);
  GenerateOptions options{.steps = flags.steps, .sampler = flags.sampler, .prefill_chunk = flags.prefill_chunk,
                          .prefill_evict = flags.prefill_evict};
  options.stop_tokens = generation_stop_tokens(model.tokenizer);
  std::vector<KvBudgets> budgets(prompts.size(), full_cache_budgets(config, flags.steps));
  int64_t predicted_kv_bytes = -1;
  if (flags.plan.given()) {
    KVP_ASSIGN_OR_RETURN(std::string fingerprint, model_fingerprint(model));
    KVP_ASSIGN_OR_RETURN(Plan plan, flags.plan.resolve(plan_model(config, fingerprint), model.files.model_path));
    KVP_ASSIGN_OR_RETURN(auto policy, make_policy(plan.policy, plan.params));
    if (flags.backend != "cpu") {
      const Status runs = GpuBackend::supports(*policy);
      if (!runs.ok()) return make_error("--backend {}: {}", flags.backend, runs.error().message());
    } else if (plan.kv_dtype != KvDtype::kF32) {
      return make_error("plan: KV dtype {} needs a GPU backend (--backend cuda or gpu-emulated)", kv_dtype_name(plan.kv_dtype));
    }
    if (!policy->evicts() && plan.min_budget() < flags.steps) {
      return make_error("plan: policy full keeps every token, but its budget {} is below --steps {}",
                        plan.min_budget(), flags.steps);
    }
    options.policy = std::shared_ptr<const Policy>(std::move(policy));
    budgets.assign(prompts.size(), plan.kv_budgets());
    predicted_kv_bytes = plan.kv_bytes_per_sequence * static_cast<int64_t>(prompts.size());
  }
  // The KV the memory model predicts at the prefill's peak: every cache, plus every prompt's
  // scratch (all prompts are prefilled together, chunk by chunk).
  int64_t predicted_peak_kv_bytes = 0;
  for (size_t s = 0; s < prompts.size(); ++s) {
    predicted_peak_kv_bytes += budgets[s].kv_bytes();
    if (backend.holds_prompt_scratch(int(prompts[s].size()), flags.prefill_chunk)) {
      const int evict_chunk = flags.prefill_evict ? flags.prefill_chunk : 0;
      predicted_peak_kv_bytes += budgets[s].prefill_scratch(int(prompts[s].size()), evict_chunk).kv_bytes();
    }
  }

  // A single sequence streams its text as it is generated; a batch prints when done.
  const bool stream = prompts.size() == 1 && !flags.json;
  if (stream) {
    std::fputs(model.tokenizer.decode(prompts[0]).c_str(), stdout);
    std::fflush(stdout);
  }
  std::vector<int32_t> last(prompts.size());
  for (size_t s = 0; s < prompts.size(); ++s) last[s] = prompts[s].back();
  GenerateResult result = generate(decoder, prompts, budgets, options, [&](int s, int32_t token) {
    if (stream) {
      std::fputs(model.tokenizer.decode(last[s], token).c_str(), stdout);
      std::fflush(stdout);
    }
    last[s] = token;
  });
  const double tokens_per_s =
      result.decode_s > 0 ? static_cast<double>(result.generated_tokens) / result.decode_s : 0.0;
  const double prefill_tokens_per_s =
      result.prefill_s > 0 ? static_cast<double>(result.prompt_tokens) / result.prefill_s : 0.0;
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  const int64_t peak_rss_bytes = int64_t{usage.ru_maxrss} * 1024;

  if (flags.json) {
    nlohmann::json out;
    out["model"] = model.files.model_path;
    out["backend"] = backend.name();
    out["kv_bytes"] = backend.kv_bytes_allocated();
    if (predicted_kv_bytes >= 0) out["predicted_kv_bytes"] = predicted_kv_bytes;
    out["peak_kv_bytes"] = backend.peak_kv_bytes();
    out["predicted_peak_kv_bytes"] = predicted_peak_kv_bytes;
    out["peak_rss_bytes"] = peak_rss_bytes;
    if (backend.name() == "cpu") {
      // The host process at its peak: the weights a step reads (all but an untied embedding
      // table, of which only the prompt's rows), the peak KV, the widest step's activations (a
      // prefill chunk of every prompt, one logits row per sequence), the RoPE tables.
      int64_t rows = 0;
      for (const auto& p : prompts) rows += std::min<int64_t>(flags.prefill_chunk, int64_t(p.size()));
      rows = std::max<int64_t>(rows, int64_t(prompts.size()));
      const int64_t embedding = config.shared_classifier ? 0 : int64_t(model.weights.token_embedding().bytes());
      out["predicted_peak_rss_bytes"] = model.weights.weight_bytes() - embedding + predicted_peak_kv_bytes +
                                        cpu_activation_bytes(config, rows, int64_t(prompts.size())) +
                                        int64_t{config.seq_len} * config.head_dim() * int64_t{sizeof(float)};
    }
    out["threads"] = flags.model.threads;
    out["prefill_chunk"] = flags.prefill_chunk;
    out["prefill_evict"] = flags.prefill_evict;
    out["prompt_tokens"] = result.prompt_tokens;
    out["prefill_tokens_per_s"] = prefill_tokens_per_s;
    out["generated_tokens"] = result.generated_tokens;
    out["prefill_s"] = result.prefill_s;
    out["decode_s"] = result.decode_s;
    out["decode_tokens_per_s"] = tokens_per_s;
    // Keys attended per layer, KV head and decode step (DELTA's sparse layers attend fewer).
    if (const Backend::AttendStats a = backend.attend_stats(); a.head_steps > 0) {
      out["attended_per_head_step"] = a.per_head_step();
    }
    for (const auto& seq : result.tokens) {
      out["sequences"].push_back({{"tokens", seq}, {"text", model.tokenizer.decode(seq)}});
    }
    std::printf("%s\n", out.dump(2).c_str());
    return ok_status();
  }
  if (stream) {
    std::fputs("\n", stdout);
    std::fflush(stdout);
  } else {
    for (size_t s = 0; s < result.tokens.size(); ++s) {
      std::printf("[%zu] %s\n", s, model.tokenizer.decode(result.tokens[s]).c_str());
    }
  }
  std::fprintf(stderr, "kvplan run: prefill %lld tokens in %.3f s (%.0f tokens/s); %lld tokens in %.3f s (%.0f tokens/s), KV cache %lld bytes%s\n",
               static_cast<long long>(result.prompt_tokens), result.prefill_s, prefill_tokens_per_s,
               static_cast<long long>(result.generated_tokens), result.decode_s, tokens_per_s,
               static_cast<long long>(backend.kv_bytes_allocated()),
               predicted_kv_bytes < 0 ? "" : fmt::format(" (plan predicted {})", predicted_kv_bytes).c_str());
  return ok_status();
}

}  // namespace

Result<std::unique_ptr<Backend>> make_backend(const std::string& backend, const std::string& weights_dtype,
                                              const ModelWeights& weights, int threads) {
  if (backend == "cpu") {
    if (weights_dtype != "f32") {
      return make_error("--weights-dtype: the cpu backend runs the weights in their stored types (convert the "
                        "model with kvplan convert --dtype instead)");
    }
    return std::unique_ptr<Backend>(std::make_unique<CpuBackend>(weights, threads));
  }
  const bool q8_0 = weights_dtype == "q8_0";
  KVP_ASSIGN_OR_RETURN(KvDtype dtype, parse_kv_dtype(q8_0 ? "f16" : weights_dtype));
  std::unique_ptr<Device> device;
  if (backend == "cuda") {
    auto d = make_cuda_device();
    if (!d.ok()) return make_error("--backend cuda: {}", d.error().message());
    device = std::move(d).value();
  } else if (backend == "gpu-emulated") {
    device = make_emulated_device();
  } else {
    return make_error("--backend: expected cpu, cuda or gpu-emulated, found '{}'", backend);
  }
  KVP_RETURN_IF_ERROR(GpuBackend::supports_model(weights.config()));
  return std::unique_ptr<Backend>(std::make_unique<GpuBackend>(weights, std::move(device), GpuBackendOptions{.weights = dtype, .q8_0 = q8_0}));
}

Command add_run_command(CLI::App& app) {
  auto flags = std::make_shared<RunFlags>();
  CLI::App* sub = app.add_subcommand(
      "run", "Generate text from one or more prompts (several --prompt flags run as one batch)");
  flags->model.add_to(sub);
  flags->plan.add_to(sub);
  sub->add_option("--prompt", flags->prompts,
                  "Prompt text; repeat for a batch (default: start from BOS alone)");
  sub->add_option("--prompt-file", flags->prompt_files, "A file whose text is one prompt; repeat for a batch")
      ->check(CLI::ExistingFile);
  sub->add_option("--prefill-chunk", flags->prefill_chunk,
                  "Prompt rows run per forward pass and sequence (default 512): activations O(chunk), "
                  "attention O(chunk x prompt); the kept tokens do not depend on it");
  sub->add_flag("--prefill-evict", flags->prefill_evict,
                "Cut each prompt to budget after every chunk (scores from the chunks seen so far), so a "
                "sequence never holds more than budget + chunk tokens; cpu backend");
  sub->add_option("--steps", flags->steps,
                  "Positions to run through the model, prompt included, as llama2.c counts "
                  "them; each yields one token (default 256)");
  sub->add_option("--temperature", flags->sampler.temperature,
                  "Sampling temperature; 0 is greedy (default 0)");
  sub->add_option("--top-p", flags->sampler.top_p,
                  "Nucleus sampling mass in (0, 1] when temperature > 0 (default 0.9)");
  sub->add_option("--seed", flags->sampler.seed,
                  "Sampling seed; batch member i uses seed + i (default 0)");
  sub->add_flag("--json", flags->json, "Print tokens, text and timings as JSON");
  sub->add_option("--backend", flags->backend,
                  "cpu (default), cuda (the first GPU; every policy) or gpu-emulated "
                  "(the CUDA backend's kernels run by the CPU emulation: slow, for checking)");
  sub->add_option("--weights-dtype", flags->weights_dtype,
                  "Matrix weights on a GPU backend: f32 (default), f16 (cuBLAS), or q8_0 (our kernel; matrices "
                  "whose rows are not whole 32-blocks as f16); the KV dtype is the plan's");
  return {sub, [flags] { return run(*flags); }};
}

}  // namespace kvp::cli
