// kvplan capacity: how many sequences fit on a device at a context length, and how fast they
// decode, with the full cache and with a plan (or a keep ratio) side by side.
#include <nlohmann/json.hpp>

#include <cstdio>

#include "common/file_util.h"
#include "planner/capacity.h"
#include "planner/plan/plan.h"
#include "tools/kvplan/command.h"
#include "tools/kvplan/hardware_probe.h"
#include "tools/kvplan/plan_flags.h"

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
  std::string weight_type;  // the matrices' stored type; empty: the model file's, else from --weight-bytes
  int batch = 0;
  int prompt_len = 0;
  int prefill_chunk = 512;
  bool prefill_evict = false;
  std::string measured;  // a bench.json: predicted against measured
  std::string policy;     // --keep's policy: its per-slot state (VATP's value norm) counts in the bytes
  std::string kv_memory;  // kvplan serve's pool: how many requests it runs at once
  bool json = false;
  CompressionFlags compress;  // --keep's ThinK and Mustafar
  DeltaParams delta;          // --keep's DELTA roles (a plan carries its own)
};

// The matrices' type for HardwareSpec::matmul_flops when only --weight-bytes is known.
std::string weight_type_of_bytes(int bytes) { return bytes == 1 ? "q8_0" : bytes == 4 ? "f32" : "f16"; }

// kvplan capacity --measured: each cell of a kvplan bench file against the prediction for the same
// model, batch, context and keep ratio; and each pruned cell's speed-up over the full cache.
Status run_measured(const CapacityFlags& flags, const HardwareSpec& hw) {
  KVP_ASSIGN_OR_RETURN(std::string text, read_file_text(flags.measured));
  nlohmann::json bench;
  try {
    bench = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    return make_error("{}: not JSON: {}", flags.measured, e.what());
  }
  auto field = [&](const nlohmann::json& j, const char* key, const std::string& where) -> Result<nlohmann::json> {
    if (!j.is_object() || !j.contains(key)) return make_error("{}: {}{}: missing", flags.measured, where, key);
    return j[key];
  };
  try {
    if (bench.value("format", "") != "kvplan-bench" || bench.value("version", 0) != 1) {
      return make_error("{}: format: expected a kvplan-bench file, version 1 (written by kvplan bench)", flags.measured);
    }
    KVP_ASSIGN_OR_RETURN(nlohmann::json m, field(bench, "model", ""));
    ModelSpec model{.name = m.value("path", "?"), .dim = m.at("dim"), .hidden_dim = m.at("hidden_dim"),
                    .n_layers = m.at("n_layers"), .n_heads = m.at("n_heads"), .n_kv_heads = m.at("n_kv_heads"),
                    .vocab_size = m.at("vocab_size"), .seq_len = m.at("seq_len"),
                    .tied_embeddings = m.at("tied_embeddings"), .head_size = m.at("head_size")};
    const int64_t weight_bytes = m.at("weight_bytes");
    const std::string weight_type = m.at("weight_type");
    KVP_ASSIGN_OR_RETURN(KvDtype kv_dtype, parse_kv_dtype(bench.value("kv_dtype", "f32")));
    KVP_ASSIGN_OR_RETURN(nlohmann::json cells, field(bench, "cells", ""));
    struct Row {
      int context, batch;
      bool delta;
      double keep, measured, predicted;
      CapacitySide side;
      double weights_s, attention_s;  // measured per step (bench files since the step parts were timed; else 0)
    };
    std::vector<Row> rows;
    int probed = 0;  // cells predicted from their own probe's rates
    for (const auto& c : cells) {
      // A full cell's cache is the bench's (context + its timed steps + 1 slots): predicted as such.
      const int context = c.at("context");
      const int full_slots = c.at("keep").get<double>() >= 1.0 ? c.value("budget", context) : context;
      CapacityQuery q{.context_len = full_slots, .weight_bytes = weight_bytes, .kv_dtype = kv_dtype,
                      .aux_floats_per_slot = c.at("aux_floats_per_slot"), .keep_ratio = c.at("keep"),
                      .runtime_reserve_bytes = 0, .batch = c.at("batch"), .weight_type = weight_type};
      // A DELTA cell (bench --delta-layers): its roles and the token policy's sinks.
      if (c.contains("delta")) {
        const nlohmann::json& d = c.at("delta");
        q.delta = DeltaParams{.layers = d.at("layers"), .pages = d.at("pages"), .page_size = d.at("page_size"),
                              .last = d.at("last")};
        if (const auto e = delta_param_error(q.delta, model.n_layers)) {
          return make_error("{}: cells: delta.{}: {}", flags.measured, e->field, e->message);
        }
        q.sinks = c.value("sinks", 0);
      }
      // Rates probed beside the cell (bench --probe) stand for the hardware file's.
      HardwareSpec cell_hw = hw;
      if (c.contains("probe")) {
        const ProbedRates probe = probed_rates_from_json(c.at("probe"));
        if (probe.type != weight_type) {
          return make_error("{}: cells: probe.type: {} rates for a model of {} weights", flags.measured, probe.type,
                            weight_type);
        }
        cell_hw = with_probed_rates(hw, probe);
        ++probed;
      }
      const CapacityReport r = capacity(model, cell_hw, q);
      const CapacitySide& side = q.keep_ratio >= 1.0 && !q.delta.on() ? r.full : r.plan;
      rows.push_back(Row{context, q.batch, q.delta.on(), q.keep_ratio, c.at("tokens_per_s"), side.tokens_per_s, side,
                         c.value("weights_s", 0.0), c.value("attention_s", 0.0)});
    }
    auto full_of = [&](const Row& row) -> const Row* {
      for (const Row& f : rows) {
        if (f.context == row.context && f.batch == row.batch && f.keep >= 1.0 && !f.delta) return &f;
      }
      return nullptr;
    };
    nlohmann::json out = nlohmann::json::array();
    double worst = 0, worst_speedup = 0;
    if (!flags.json) {
      std::printf("%s (%s weights, %.3f GB) on %s, %s backend, %d threads: decode tokens/s\n", model.name.c_str(),
                  weight_type.c_str(), weight_bytes / 1e9, hw.name.c_str(), bench.value("backend", "?").c_str(),
                  bench.value("threads", 0));
      const std::string rates =
          probed ? fmt::format("rates: {}'s for bandwidth and fork/joins; weight products and attention each the best "
                               "of the probes beside the cell's runs ({} of {} cells, bench --probe)",
                               hw.name, probed, rows.size())
                 : fmt::format("rates: {}", hw.name);
      std::printf("%s\n\n", rates.c_str());
      std::printf("%7s %5s %11s %10s %10s %7s   %9s %9s %7s   %s\n", "context", "batch", "keep", "measured",
                  "predicted", "error", "speed-up", "predicted", "error",
                  "step ms, predicted: weights + attention + sync  (measured)");
    }
    for (const Row& row : rows) {
      const double err = row.predicted / row.measured - 1.0;
      worst = std::max(worst, std::abs(err));
      nlohmann::json j = {{"context", row.context}, {"batch", row.batch}, {"keep", row.keep}, {"delta", row.delta},
                          {"attended_slots_per_step", row.side.attended_slots_per_step},
                          {"measured_tokens_per_s", row.measured}, {"predicted_tokens_per_s", row.predicted},
                          {"error", err}, {"weights_s", row.side.weights_s}, {"attention_s", row.side.attention_s},
                          {"overhead_s", row.side.overhead_s}};
      if (row.weights_s > 0) {
        j["measured_weights_s"] = row.weights_s;
        j["measured_attention_s"] = row.attention_s;
      }
      std::string speed = fmt::format("{:>9} {:>9} {:>7}", "", "", "");
      if (const Row* f = full_of(row); f && (row.keep < 1.0 || row.delta)) {
        const double measured = row.measured / f->measured, predicted = row.predicted / f->predicted;
        const double serr = predicted / measured - 1.0;
        worst_speedup = std::max(worst_speedup, std::abs(serr));
        j["measured_speedup"] = measured;
        j["predicted_speedup"] = predicted;
        j["speedup_error"] = serr;
        speed = fmt::format("{:>8.2f}x {:>8.2f}x {:>+6.1f}%", measured, predicted, 100 * serr);
      }
      out.push_back(j);
      if (!flags.json) {
        const std::string parts = row.weights_s > 0 ? fmt::format("  ({:.1f} + {:.1f})", 1e3 * row.weights_s,
                                                                  1e3 * row.attention_s)
                                                    : std::string();
        std::printf("%7d %5d %5.2f%-6s %10.2f %10.2f %+6.1f%%   %s   %.1f + %.1f + %.1f%s\n", row.context, row.batch,
                    row.keep, row.delta ? "+delta" : "", row.measured, row.predicted, 100 * err, speed.c_str(),
                    1e3 * row.side.weights_s, 1e3 * row.side.attention_s, 1e3 * row.side.overhead_s, parts.c_str());
      }
    }
    if (flags.json) {
      std::printf("%s\n", nlohmann::json{{"model", model.name}, {"hardware", hw.name}, {"weight_type", weight_type},
                                         {"probed_cells", probed},
                                         {"cells", out}, {"max_abs_error", worst},
                                         {"max_abs_speedup_error", worst_speedup}}
                              .dump(2)
                              .c_str());
    } else {
      std::printf("\nlargest error %.1f%%, largest speed-up error %.1f%%\n", 100 * worst, 100 * worst_speedup);
    }
  } catch (const nlohmann::json::exception& e) {
    return make_error("{}: cells: {}", flags.measured, e.what());
  }
  return ok_status();
}

Status run_capacity(const CapacityFlags& flags) {
  KVP_ASSIGN_OR_RETURN(std::string hw_path, find_config("hardware", flags.hardware));
  if (!flags.measured.empty()) {
    KVP_ASSIGN_OR_RETURN(HardwareSpec hw, HardwareSpec::load(hw_path));
    return run_measured(flags, hw);
  }
  if (flags.batch < 0) return make_error("--batch: expected a batch size >= 1, found {}", flags.batch);
  if (flags.prefill_chunk < 1) return make_error("--prefill-chunk: expected at least 1, found {}", flags.prefill_chunk);
  ModelSpec model;
  std::string weight_type = flags.weight_type;
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
    if (weight_type.empty()) weight_type = weight_type_name(m.weights.layer(0).w1.type);
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
  if (weight_type.empty()) weight_type = weight_type_of_bytes(flags.weight_bytes);
  CapacityQuery q{.context_len = context, .weight_bytes_per_param = flags.weight_bytes, .weight_bytes = file_weight_bytes,
                  .kv_dtype = dtype, .batch = flags.batch, .weight_type = weight_type,
                  .prompt_len = std::min(flags.prompt_len > 0 ? flags.prompt_len : context, context),
                  .prefill_evict_chunk = flags.prefill_evict ? flags.prefill_chunk : 0};
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
    q.compression = plan.kv_budgets().compression;
    if (flags.compress.given()) {
      return make_error("--plan and --think/--mustafar: the plan carries its own key_channels and sparsity");
    }
    if (flags.delta.on()) return make_error("--plan and --delta-layers: the plan carries its own delta roles");
    q.delta = plan.params.delta;
    q.sinks = plan.params.sinks;
    what = fmt::format("plan {} ({}{}{})", flags.plan, plan.policy, plan.compression.label(),
                       plan.params.delta.on() ? "+delta" : "");
  } else {
    if (!(flags.keep > 0 && flags.keep <= 1)) return make_error("--keep: expected a ratio in (0, 1] (or --plan), found {}", flags.keep);
    q.keep_ratio = flags.keep;
    what = fmt::format("keep {:g}", flags.keep);
    if (!flags.policy.empty()) {
      auto policy = make_policy(flags.policy, published_defaults(flags.policy, 64));
      if (!policy.ok()) return make_error("--policy: {}", policy.error().message());
      q.aux_floats_per_slot = (*policy)->aux_floats_per_slot();
      what = fmt::format("{} keep {:g}", flags.policy, flags.keep);
    }
    KVP_ASSIGN_OR_RETURN(const PlanCompression compression, flags.compress.compression(model.head_dim()));
    KVP_ASSIGN_OR_RETURN(q.compression, compression.layers(model.n_layers, model.head_dim()));
    what += compression.label();
    KVP_RETURN_IF_ERROR(check_delta_flags(flags.delta, model.n_layers, compression.any()));
    q.delta = flags.delta;
    if (!flags.policy.empty()) q.sinks = published_defaults(flags.policy, 64).sinks;
    if (flags.delta.on()) what += "+delta";
  }
  const CapacityReport r = capacity(model, hw, q);
  // What one kept token of one KV head costs, and what a compressed head holds besides (rings,
  // ThinK's channel order), at layer 0.
  struct TokenBytes {
    int64_t dense = 0, compressed = 0, head_extra = 0;
  } token;
  {
    KvBudgets one = KvBudgets::uniform(1, 1, model.head_dim(), 64, dtype);
    one.aux_floats_per_slot = q.aux_floats_per_slot;
    token.dense = one.slot_bytes();
    if (!q.compression.empty()) one.compression = {q.compression[0]};
    const KvBudgets::SlotCost cost = one.slot_cost(0);
    token.compressed = cost.per_slot, token.head_extra = cost.per_head;
  }
  int64_t pool = 0;
  if (!flags.kv_memory.empty()) {
    KVP_ASSIGN_OR_RETURN(pool, parse_byte_count("--kv-memory", flags.kv_memory));
  }
  auto in_pool = [&](const CapacitySide& s) {
    return sequences_in_pool(pool, s.kv_bytes_per_sequence, s.peak_kv_bytes_per_sequence - s.kv_bytes_per_sequence);
  };
  auto side_json = [&](const CapacitySide& s) {
    nlohmann::json j{{"kv_bytes_per_sequence", s.kv_bytes_per_sequence},
                          {"peak_kv_bytes_per_sequence", s.peak_kv_bytes_per_sequence},
                          {"activation_bytes_per_sequence", s.activation_bytes_per_sequence},
                          {"max_batch", s.max_batch}, {"max_batch_at_peak", s.max_batch_at_peak}, {"batch", s.batch},
                          {"decode_step_s", s.decode_step_s}, {"weights_s", s.weights_s},
                          {"attention_s", s.attention_s}, {"overhead_s", s.overhead_s},
                          {"tokens_per_s", s.tokens_per_s}, {"memory_bound", s.memory_bound},
                          {"attended_slots_per_step", s.attended_slots_per_step},
                          {"kv_bytes_read_per_step", s.kv_bytes_read_per_step},
                          {"kv_bytes_copied_per_step", s.kv_bytes_copied_per_step}};
    if (pool > 0) {
      j["pool_sequences"] = in_pool(s);
      j["pool_sequences_at_peak"] = pool / s.peak_kv_bytes_per_sequence;
    }
    return j;
  };
  if (flags.json) {
    std::printf("%s\n", nlohmann::json{{"model", model.name}, {"hardware", hw.name}, {"context", context},
                                       {"parameters", model.parameter_count()}, {"weight_bytes", r.weight_bytes},
                                       {"workspace_bytes", r.workspace_bytes}, {"full", side_json(r.full)},
                                       {"plan", side_json(r.plan)}, {"plan_source", what},
                                       {"token_bytes_per_kv_head", {{"dense", token.dense}, {"plan", token.compressed},
                                                                    {"plan_head_extra", token.head_extra}}},
                                       {"kv_memory", pool > 0 ? nlohmann::json(pool) : nlohmann::json(nullptr)}}
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
  if (!q.compression.empty()) {
    row("bytes per kept token and KV head", fmt::format("{} B", token.dense),
        fmt::format("{} B + {} B/head", token.compressed, token.head_extra));
  }
  row("KV bytes per sequence", fmt::format("{:.1f} MiB", r.full.kv_bytes_per_sequence / double(1 << 20)),
      fmt::format("{:.1f} MiB", r.plan.kv_bytes_per_sequence / double(1 << 20)));
  row("peak KV per sequence (prefill)", fmt::format("{:.1f} MiB", r.full.peak_kv_bytes_per_sequence / double(1 << 20)),
      fmt::format("{:.1f} MiB", r.plan.peak_kv_bytes_per_sequence / double(1 << 20)));
  row("largest batch that fits", std::to_string(r.full.max_batch), std::to_string(r.plan.max_batch));
  row("... when all prefill together", std::to_string(r.full.max_batch_at_peak), std::to_string(r.plan.max_batch_at_peak));
  if (pool > 0) {
    row(fmt::format("requests in a {:.1f} MiB KV pool", pool / double(1 << 20)).c_str(), std::to_string(in_pool(r.full)),
        std::to_string(in_pool(r.plan)));
    row("... when all prefill together", std::to_string(pool / r.full.peak_kv_bytes_per_sequence),
        std::to_string(pool / r.plan.peak_kv_bytes_per_sequence));
  }
  const std::string at = flags.batch > 0 ? fmt::format("decode step at batch {}", flags.batch) : "decode step at that batch";
  row(at.c_str(), fmt::format("{:.2f} ms", r.full.decode_step_s * 1e3), fmt::format("{:.2f} ms", r.plan.decode_step_s * 1e3));
  row("keys attended per step", fmt::format("{:.0f}", r.full.attended_slots_per_step),
      fmt::format("{:.0f}", r.plan.attended_slots_per_step));
  row("KV bytes read per step", fmt::format("{:.1f} MiB", r.full.kv_bytes_read_per_step / double(1 << 20)),
      fmt::format("{:.1f} MiB", r.plan.kv_bytes_read_per_step / double(1 << 20)));
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
                  "Device: a name in configs/hardware (h100-80gb, h200, a100-80gb, a100-40gb, l4, cpu-2core, "
                  "cpu-2core-epyc) or a YAML file");
  sub->add_option("--context", flags->context, "Tokens per sequence (default: the model's seq_len)");
  sub->add_option("--keep", flags->keep, "Share of the cache kept in every layer and head, e.g. 0.4");
  sub->add_option("--plan", flags->plan, "A plan.yaml whose budgets to size instead of --keep (same model shape)");
  sub->add_option("--kv-dtype", flags->kv_dtype, "KV element type: f16 or f32 (default f16)");
  sub->add_option("--weight-bytes", flags->weight_bytes, "Bytes per weight: 2 (fp16), 1 (int8), 4 (f32) (default 2)");
  sub->add_option("--weight-type", flags->weight_type,
                  "Stored type of the matrices, for the hardware file's matmul_flops (default: the --model file's, "
                  "else f16, q8_0 or f32 from --weight-bytes)");
  sub->add_option("--batch", flags->batch, "Predict this batch size (default: the largest that fits)");
  sub->add_option("--prompt-len", flags->prompt_len, "Prompt prefilled per sequence, for the peak (default: --context)");
  sub->add_option("--prefill-chunk", flags->prefill_chunk, "Prefill chunk, as kvplan run (default 512)");
  sub->add_flag("--prefill-evict", flags->prefill_evict, "Peak under --prefill-evict: budget + one chunk per head");
  sub->add_option("--measured", flags->measured,
                  "A kvplan bench JSON: print predicted against measured tokens/s for each of its cells");
  sub->add_option("--policy", flags->policy,
                  "With --keep: the policy, whose per-slot state counts in the bytes (vatp keeps each value's L1 norm)");
  sub->add_option("--kv-memory", flags->kv_memory,
                  "kvplan serve's KV pool (bytes, or 256MiB, 1GiB): how many requests it runs at once, each admitted "
                  "with its prompt's prefill scratch (--prompt-len)");
  sub->add_flag("--json", flags->json, "Machine-readable output");
  flags->compress.add_to(sub);  // with --keep; a --plan carries its own
  add_delta_flags(sub, &flags->delta);
  return {sub, [flags] { return run_capacity(*flags); }};
}

}  // namespace kvp::cli
