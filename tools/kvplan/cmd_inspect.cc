#include <algorithm>
// kvplan inspect: what a model file holds, and which CUDA devices this machine has.
#include <nlohmann/json.hpp>

#include <cstdio>
#include <filesystem>

#include "common/sha256.h"
#include "executor/model/model_locator.h"
#include "kernels/device_query.h"
#include "common/progress.h"
#include "planner/plan/kv_budgets.h"
#include "planner/trace_stats.h"
#include "tools/kvplan/command.h"
#include "tools/kvplan/plan_flags.h"

namespace kvp::cli {
namespace {

struct InspectFlags {
  std::string target;  // a model (name, file or directory); empty: the default model
  ModelFlags model;
  bool devices = false;
  bool json = false;
};

nlohmann::json devices_json(const CudaDeviceReport& report) {
  nlohmann::json j;
  j["built_with_cuda"] = report.built_with_cuda;
  j["cuda_runtime_version"] = report.runtime_version;
  j["cuda_driver_version"] = report.driver_version;
  j["devices"] = nlohmann::json::array();
  for (const CudaDevice& d : report.devices) {
    j["devices"].push_back({{"index", d.index},
                            {"name", d.name},
                            {"compute_capability", fmt::format("{}.{}", d.compute_major, d.compute_minor)},
                            {"total_bytes", d.total_bytes},
                            {"free_bytes", d.free_bytes},
                            {"multiprocessors", d.multiprocessors},
                            {"memory_bus_bits", d.memory_bus_bits}});
  }
  if (report.devices.empty()) j["why_none"] = report.why_none;
  return j;
}

void print_devices(const CudaDeviceReport& report) {
  if (report.devices.empty()) {
    std::printf("CUDA devices: none usable (%s)\n", report.why_none.c_str());
    if (report.built_with_cuda) {
      std::printf("  CUDA code is compiled in (runtime %d); GPU commands and tests will not run "
                  "on this machine.\n", report.runtime_version);
    }
    return;
  }
  for (const CudaDevice& d : report.devices) {
    std::printf("CUDA device %d: %s, compute %d.%d, %d SMs, %.1f GiB (%.1f GiB free), %d-bit bus\n",
                d.index, d.name.c_str(), d.compute_major, d.compute_minor, d.multiprocessors,
                d.total_bytes / double(1 << 30), d.free_bytes / double(1 << 30), d.memory_bus_bits);
  }
}

std::string rope_description(const ModelConfig& c) {
  std::string s = fmt::format("base {}, {}", c.rope_theta,
                              c.rope_style == RopeStyle::kInterleaved ? "interleaved pairs (2i, 2i+1)"
                                                                      : "rotate-half pairs (i, i + head_dim/2)");
  if (!c.rope_freq_divisors.empty()) {
    const auto [lo, hi] = std::minmax_element(c.rope_freq_divisors.begin(), c.rope_freq_divisors.end());
    s += fmt::format(", scaled (frequency divisors {:.4g}..{:.4g})", *lo, *hi);
  }
  return s;
}

Status inspect_model(const InspectFlags& flags) {
  const std::string& arg = flags.target.empty() ? flags.model.model : flags.target;
  KVP_ASSIGN_OR_RETURN(LoadedModel model, load_model(arg, flags.model.tokenizer, flags.model.load_options()));
  KVP_ASSIGN_OR_RETURN(std::string fingerprint, fingerprint_files(model.files));
  const ModelConfig& c = model.weights.config();
  const Tokenizer& tok = model.tokenizer;
  const KvBudgets full = KvBudgets::uniform(c.n_layers, c.n_kv_heads, c.head_dim(), c.seq_len);
  const std::string format(model_format_name(model.files.format));
  const std::string tokenizer_source = model.files.tokenizer_path.empty() ? "(in the model file)" : model.files.tokenizer_path;
  if (flags.json) {
    nlohmann::json types = nlohmann::json::object();
    for (const auto& [name, t] : model.weights.tensors()) {
      nlohmann::json& e = types[std::string(weight_type_name(t.type))];
      if (e.is_null()) e = {{"tensors", 0}, {"bytes", 0}};
      e["tensors"] = e["tensors"].get<int>() + 1;
      e["bytes"] = e["bytes"].get<int64_t>() + static_cast<int64_t>(t.bytes());
    }
    nlohmann::json j = {{"model", model.files.model_path},
                        {"tokenizer", tokenizer_source},
                        {"sha256", fingerprint},
                        {"fingerprint", fingerprint},
                        {"format", format},
                        {"architecture", c.architecture},
                        {"weight_files", model.files.weight_files},
                        {"dim", c.dim},
                        {"hidden_dim", c.hidden_dim},
                        {"n_layers", c.n_layers},
                        {"n_heads", c.n_heads},
                        {"n_kv_heads", c.n_kv_heads},
                        {"head_dim", c.head_dim()},
                        {"vocab_size", c.vocab_size},
                        {"seq_len", c.seq_len},
                        {"shared_classifier", c.shared_classifier},
                        {"qkv_bias", c.qkv_bias},
                        {"norm_eps", c.norm_eps},
                        {"rope", {{"theta", c.rope_theta},
                                  {"style", c.rope_style == RopeStyle::kInterleaved ? "interleaved" : "rotate-half"},
                                  {"freq_divisors", c.rope_freq_divisors}}},
                        {"tensor_types", types},
                        {"tokenizer_kind", std::string(tok.kind_name())},
                        {"tokenizer_pre", tok.vocabulary().kind == TokenizerKind::kBytePair ? tok.vocabulary().pre : ""},
                        {"tokenizer_vocab_size", tok.vocab_size()},
                        {"bos_token", tok.bos()},
                        {"eos_token", tok.eos()},
                        {"add_bos", tok.vocabulary().add_bos},
                        {"parameters", c.parameter_count()},
                        {"weight_bytes", model.weights.weight_bytes()},
                        {"full_kv_bytes_per_sequence", full.kv_bytes()}};
    if (flags.devices) j["cuda"] = devices_json(query_cuda_devices());
    std::printf("%s\n", j.dump(2).c_str());
    return ok_status();
  }
  std::printf("model:        %s (%s, architecture %s)\n", model.files.model_path.c_str(), format.c_str(),
              c.architecture.c_str());
  if (model.files.weight_files.size() > 1) {
    std::printf("weight files: %zu (%s ...)\n", model.files.weight_files.size(), model.files.weight_files[0].c_str());
  }
  std::printf("fingerprint:  %s\n", fingerprint.c_str());
  std::printf("shape:        %s\n", c.describe().c_str());
  std::printf("attention:    %d query heads, %d KV heads (group %d), head_dim %d%s\n", c.n_heads, c.n_kv_heads,
              c.group_size(), c.head_dim(), c.qkv_bias ? ", q/k/v biases" : "");
  std::printf("RoPE:         %s\n", rope_description(c).c_str());
  std::printf("RMS norm eps: %g\n", c.norm_eps);
  std::printf("tensors:      %zu: %s\n", model.weights.tensors().size(), model.weights.type_summary().c_str());
  std::printf("parameters:   %lld (%.2f MB as stored)\n", static_cast<long long>(c.parameter_count()),
              model.weights.weight_bytes() / 1e6);
  std::printf("tokenizer:    %s %s, %d pieces, BOS %d%s, EOS %d%s\n", tokenizer_source.c_str(),
              std::string(tok.kind_name()).c_str(), tok.vocab_size(), tok.bos(), tok.vocabulary().add_bos ? " (added)" : "",
              tok.eos(),
              tok.vocabulary().kind == TokenizerKind::kBytePair ? (", pre-tokenizer " + tok.vocabulary().pre).c_str() : "");
  std::printf("KV cache:     %lld bytes per sequence at the full %d positions (f32, %lld bytes per "
              "slot incl. position and score)\n", static_cast<long long>(full.kv_bytes()),
              c.seq_len, static_cast<long long>(full.slot_bytes()));
  if (flags.devices) print_devices(query_cuda_devices());
  return ok_status();
}

Status inspect_trace(const InspectFlags& flags) {
  KVP_ASSIGN_OR_RETURN(Trace trace, Trace::open(flags.target));
  const TraceModelShape& m = trace.model();
  TraceStats stats;
  {
    Progress progress("inspect: sequences", trace.n_sequences(), !flags.json);
    stats = compute_trace_stats(trace, default_threads(), [&](int done) { progress.update(done); });
    progress.finish(trace.n_sequences());
  }
  if (flags.json) {
    nlohmann::json j = {{"trace", flags.target},
                        {"model_fingerprint", m.fingerprint},
                        {"n_sequences", trace.n_sequences()},
                        {"qkv_dtype", dtype_name(trace.manifest().qkv_dtype)},
                        {"recorded_layers", trace.layers()},
                        {"query_stride", trace.query_stride()},
                        {"queries_per_head", stats.n_queries}};
    for (int l : trace.layers()) {
      nlohmann::json layer = {{"layer", l}, {"heads", nlohmann::json::array()}};
      for (int h = 0; h < m.n_kv_heads; ++h) {
        const HeadStats& s = stats.heads[l][h];
        layer["heads"].push_back({{"kv_head", h},
                                  {"vnorm_l1", {{"mean", s.vnorm_mean}, {"p5", s.vnorm_p5},
                                                {"p50", s.vnorm_p50}, {"p95", s.vnorm_p95},
                                                {"max", s.vnorm_max}, {"position_0", s.vnorm_first},
                                                {"positions_0_3", s.vnorm_first4}}},
                                  {"first_token_attention", s.first_token_mass},
                                  {"entropy_nats", s.entropy},
                                  {"entropy_normalised", s.entropy_normalised}});
      }
      j["layers"].push_back(layer);
    }
    std::printf("%s\n", j.dump(2).c_str());
    return ok_status();
  }
  int64_t total_tokens = 0;
  for (int s = 0; s < trace.n_sequences(); ++s) total_tokens += trace.length(s);
  std::printf("trace %s: %d sequences, %lld tokens, q/k/v %s, %.1f MB; model sha256 %s\n",
              flags.target.c_str(), trace.n_sequences(), static_cast<long long>(total_tokens),
              std::string(dtype_name(trace.manifest().qkv_dtype)).c_str(),
              trace.sequence_bytes() / 1e6, m.fingerprint.c_str());
  std::printf("model: %d layers, %d query heads, %d KV heads, head_dim %d (recorded by %s, %s)\n",
              m.n_layers, m.n_heads, m.n_kv_heads, m.head_dim, trace.manifest().recorder_backend.c_str(),
              trace.manifest().tool_version.c_str());
  std::printf("recorded: %s of %d layers (%s), %s\n\n",
              trace.layers().size() == size_t(m.n_layers) ? "all" : std::to_string(trace.layers().size()).c_str(),
              m.n_layers, fmt::format("{}", fmt::join(trace.layers(), ",")).c_str(),
              trace.query_stride() == 1 ? "every position's query"
                                        : fmt::format("the query of every {}th position", trace.query_stride()).c_str());
  std::printf("Value L1 norms, attention on the first token and attention entropy, per KV head\n"
              "(query heads of a group averaged; queries at positions >= 1):\n\n");
  std::printf("layer head |  |v|1 mean    p5   p50   p95   max | pos 0  pos 0-3 | attn on pos 0 | entropy nats  normalised\n");
  for (int l : trace.layers()) {
    for (int h = 0; h < m.n_kv_heads; ++h) {
      const HeadStats& s = stats.heads[l][h];
      std::printf("%5d %4d | %10.3f %5.2f %5.2f %5.2f %5.2f | %5.2f %8.2f | %13.3f | %12.3f %11.3f\n",
                  l, h, s.vnorm_mean, s.vnorm_p5, s.vnorm_p50, s.vnorm_p95, s.vnorm_max,
                  s.vnorm_first, s.vnorm_first4, s.first_token_mass, s.entropy, s.entropy_normalised);
    }
  }
  return ok_status();
}

bool is_trace_dir(const std::string& path) {
  std::error_code ec;
  return !path.empty() && std::filesystem::is_directory(path, ec) &&
         std::filesystem::exists(std::filesystem::path(path) / kTraceManifestName, ec);
}

Status inspect(const InspectFlags& flags) {
  if (is_trace_dir(flags.target)) return inspect_trace(flags);
  if (flags.devices && flags.target.empty() && flags.model.model.empty()) {
    const CudaDeviceReport report = query_cuda_devices();
    if (flags.json) {
      std::printf("%s\n", devices_json(report).dump(2).c_str());
    } else {
      print_devices(report);
    }
    return ok_status();
  }
  return inspect_model(flags);
}

}  // namespace

Command add_inspect_command(CLI::App& app) {
  auto flags = std::make_shared<InspectFlags>();
  CLI::App* sub = app.add_subcommand(
      "inspect",
      "Describe a model (format, architecture, tensor types, tokenizer, RoPE, bytes), a trace (value norms, attention sinks and "
      "entropy per layer and KV head), or list CUDA devices (--devices)");
  sub->add_option("target", flags->target,
                  "A trace directory, or a model: a name, a .gguf or llama2.c file, a Hugging Face folder "
                  "(default: stories260K)");
  flags->model.add_to(sub);
  sub->add_flag("--devices", flags->devices,
                "List CUDA devices (alone: only devices; with a model: both)");
  sub->add_flag("--json", flags->json, "Machine-readable output");
  return {sub, [flags] { return inspect(*flags); }};
}

}  // namespace kvp::cli
