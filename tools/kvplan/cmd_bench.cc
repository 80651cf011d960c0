// kvplan bench: measured decode throughput over a grid of batch sizes, context
// lengths and keep ratios, for `kvplan capacity --measured` to hold the
// capacity model's predictions against.
//
// Each cell starts from caches filled to the context
// (Backend::fill_for_benchmark: the state after a prefill of that many tokens,
// without running one), then times `steps` decode steps of every sequence after
// one untimed step. The caches hold the full context (keep 1: no eviction) or
// the policy's budget of keep × context (full, so every step evicts). With
// --delta-layers each keep ratio runs again under DELTA's roles (same cache). With --probe the
// rates capacity's model reads (weight products of the model's type, attention) are measured
// before each repeat of each (context, batch) group and kept with the cells, so capacity
// --measured can predict a cell from the machine of the minute it ran in.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "common/file_util.h"
#include "executor/decoder.h"
#include "executor/generator.h"
#include "tools/kvplan/command.h"
#include "tools/kvplan/hardware_probe.h"
#include "tools/kvplan/plan_flags.h"

namespace kvp::cli {
namespace {

struct BenchFlags {
  ModelFlags model;
  std::vector<int> batches = {1, 8, 32};
  std::vector<int> contexts = {1024, 4096};
  std::vector<double> keeps = {1.0, 0.5, 0.25};
  std::string policy = "vatp";
  int steps = 8;
  double min_seconds = 2.0;
  int repeats = 3;
  std::string backend = "cpu";
  std::string weights_dtype = "f32";
  std::string out;
  DeltaParams delta;  // on: each keep ratio also with DELTA's roles (the same cache, fewer keys read)
  bool probe = false;
  double probe_seconds = 0.3;
  std::string probe_memory = "1GiB";
};

// Room a full-cache cell leaves for its timed steps (when --steps is smaller).
constexpr int kFullSteps = 32;

Status run_bench(const BenchFlags &flags) {
  if (flags.out.empty()) return make_error("--out: the bench.json to write is required");
  KVP_ASSIGN_OR_RETURN(const int64_t probe_bytes, parse_byte_count("--probe-memory", flags.probe_memory));
  if (probe_bytes < (int64_t{1} << 20)) {
    return make_error("--probe-memory: {} bytes is too little to stream; give at least 1MiB", probe_bytes);
  }
  if (flags.steps < 1) return make_error("--steps: expected at least 1, found {}", flags.steps);
  for (int b : flags.batches) {
    if (b < 1) return make_error("--batch: expected sizes >= 1, found {}", b);
  }
  for (double k : flags.keeps) {
    if (!(k > 0 && k <= 1)) return make_error("--keep: expected ratios in (0, 1], found {}", k);
  }
  KVP_ASSIGN_OR_RETURN(LoadedModel model,
                       load_model(flags.model.model, flags.model.tokenizer, flags.model.load_options()));
  const ModelConfig &c = model.weights.config();
  for (int ctx : flags.contexts) {
    if (ctx < 1 || ctx + flags.steps + 1 > c.seq_len) {
      return make_error(
          "--context: {} + {} steps does not fit the model's "
          "seq_len {} (make a longer one with kvplan "
          "convert --random-shape ... --seq-len N)",
          ctx, flags.steps + 1, c.seq_len);
    }
  }
  if (auto p = make_policy(flags.policy, published_defaults(flags.policy, 64)); !p.ok()) {
    return p.error().with_context("--policy");
  }
  KVP_RETURN_IF_ERROR(check_delta_flags(flags.delta, c.n_layers));
  if (flags.probe && flags.backend != "cpu") {
    return make_error("--probe: measures the CPU backend's kernels; this bench runs on --backend {}", flags.backend);
  }
  KVP_ASSIGN_OR_RETURN(std::unique_ptr<Backend> backend,
                       make_backend(flags.backend, flags.weights_dtype, model.weights, flags.model.threads));
  Decoder decoder(*backend);
  const std::string weight_type(weight_type_name(model.weights.layer(0).w1.type));

  struct Cell {
    int ctx, batch;
    double keep;
    bool delta;
    std::vector<double> runs;  // tokens/s of each repeat
    std::vector<std::pair<double, double>> phases;  // each repeat's weights and attention seconds per step
    std::vector<ProbedRates> probes;                // each repeat's probe (--probe)
    nlohmann::json json;
  };
  std::vector<Cell> grid;
  for (int ctx : flags.contexts) {
    for (int batch : flags.batches) {
      for (bool delta : {false, true}) {
        if (delta && !flags.delta.on()) continue;
        for (double keep : flags.keeps) grid.push_back(Cell{ctx, batch, keep, delta, {}, {}, {}, {}});
      }
    }
  }
  // The keep ratios of one (context, batch) are run --repeats times
  // round-robin, so a slow spell of a shared machine does not fall on every run
  // of one cell, and their caches reuse the memory of the first (the full
  // cache, the largest); a cell's figure is its best run (as measure-hardware
  // takes its best).
  const size_t per_group = flags.keeps.size() * (flags.delta.on() ? 2 : 1);
  std::unique_ptr<ThreadPool> probe_pool;
  std::unique_ptr<HardwareProbe> probe;
  if (flags.probe) {
    probe_pool = std::make_unique<ThreadPool>(flags.model.threads);
    probe = std::make_unique<HardwareProbe>(*probe_pool, flags.probe_seconds, 1, probe_bytes);
  }
  for (size_t group = 0; group < grid.size(); group += per_group) {
    for (int rep = 0; rep < flags.repeats; ++rep) {
      if (probe) {
        std::fprintf(stderr, "kvplan bench: probing the machine's rates (%s weight products, attention)\n",
                     weight_type.c_str());
        const ProbedRates rates = probe->rates(model.weights.layer(0).w1.type);
        for (size_t i = group; i < group + per_group; ++i) grid[i].probes.push_back(rates);
      }
      for (size_t i = group; i < group + per_group; ++i) {
        Cell &cell = grid[i];
        const int ctx = cell.ctx, batch = cell.batch;
        const double keep = cell.keep;
        const bool full = keep >= 1.0;
        const int budget =
            full ? ctx + 1 + std::max(flags.steps, kFullSteps) : std::max(1, static_cast<int>(std::lround(keep * ctx)));
        std::shared_ptr<const Policy> policy;
        const std::string name = full ? "full" : flags.policy;
        PolicyParams params = published_defaults(name, budget);
        if (cell.delta) params.delta = flags.delta;
        if (!full || cell.delta) {
          auto p = make_policy(name, params);
          if (!p.ok()) return p.error().with_context(fmt::format("--policy at budget {}", budget));
          policy = std::shared_ptr<const Policy>(std::move(*p));
        }
        KvBudgets b = KvBudgets::uniform(c.n_layers, c.n_kv_heads, c.head_dim(), budget);
        b.aux_floats_per_slot = policy ? policy->aux_floats_per_slot() : 0;
        backend->reset_sequences(std::vector<KvBudgets>(batch, b), policy);
        backend->fill_for_benchmark(ctx);
        std::vector<int32_t> tokens(batch, model.tokenizer.bos());
        std::vector<int32_t> logit_rows(batch);
        for (int r = 0; r < batch; ++r) logit_rows[r] = r;
        const std::vector<float> uniforms(batch, 0.5f);
        // Step 0 is untimed (it pages the weights in); then at least --steps
        // steps, and more until
        // --min-seconds have passed, as far as a full cache has room.
        auto step = [&](int k) {
          StepRows rows;
          for (int s = 0; s < batch; ++s) rows.add(tokens[s], ctx + k, s);
          decoder.forward(rows, logit_rows, nullptr);
          backend->pick_tokens(SamplerOptions{.temperature = 0.0f}, uniforms, tokens);
        };
        step(0);
        backend->time_phases(true);
        const double start = now_s();
        const int limit = full ? budget - ctx - 1 : c.seq_len - ctx - 1;
        int timed = 0;
        while (timed < limit && (timed < flags.steps || now_s() - start < flags.min_seconds)) step(1 + timed++);
        const double seconds = now_s() - start;
        const double tps = double(batch) * timed / seconds;
        const Backend::PhaseTimes phases = backend->phase_times();
        backend->time_phases(false);
        cell.runs.push_back(tps);
        cell.phases.push_back({phases.weights_s / timed, phases.attention_s / timed});
        std::fprintf(stderr,
                     "kvplan bench: [%zu/%zu, run %d/%d] context %d, batch %d, "
                     "keep %g (%s%s, %d slots): %.2f tokens/s\n",
                     i + 1, grid.size(), rep + 1, flags.repeats, ctx, batch, keep, name.c_str(),
                     cell.delta ? "+delta" : "", budget, tps);
        cell.json = {{"context", ctx},
                     {"batch", batch},
                     {"keep", keep},
                     {"policy", name},
                     {"sinks", params.sinks},
                     {"budget", budget},
                     {"aux_floats_per_slot", b.aux_floats_per_slot},
                     {"kv_bytes_per_sequence", b.kv_bytes()},
                     {"steps", timed}};
        if (cell.delta) {
          cell.json["delta"] = {{"layers", flags.delta.layers}, {"pages", flags.delta.pages},
                                {"page_size", flags.delta.page_size}, {"last", flags.delta.last}};
          const Backend::AttendStats a = backend->attend_stats();
          if (a.head_steps > 0) cell.json["attended_per_head_step"] = a.per_head_step();
        }
      }
    }
  }
  nlohmann::json cells = nlohmann::json::array();
  for (Cell &cell : grid) {
    cell.json["runs_tokens_per_s"] = cell.runs;
    const size_t best = std::max_element(cell.runs.begin(), cell.runs.end()) - cell.runs.begin();
    cell.json["tokens_per_s"] = cell.runs[best];
    // The best run's step parts, seconds per step (0 where the backend does not time them).
    cell.json["weights_s"] = cell.phases[best].first;
    cell.json["attention_s"] = cell.phases[best].second;
    if (!cell.probes.empty()) {
      // Each rate's best over the group's repeats, as the cell's figure is its best run: both are the
      // machine at its fastest within the same minutes.
      nlohmann::json all = nlohmann::json::array();
      for (const ProbedRates& r : cell.probes) all.push_back(probed_rates_json(r));
      cell.json["probes"] = all;
      cell.json["probe"] = probed_rates_json(best_rates(cell.probes));
    }
    cells.push_back(cell.json);
  }
  nlohmann::json out = {{"format", "kvplan-bench"},
                        {"version", 1},
                        {"backend", backend->name()},
                        {"threads", flags.model.threads},
                        {"kv_dtype", "f32"},
                        {"model",
                         {{"path", model.files.model_path},
                          {"dim", c.dim},
                          {"hidden_dim", c.hidden_dim},
                          {"n_layers", c.n_layers},
                          {"n_heads", c.n_heads},
                          {"n_kv_heads", c.n_kv_heads},
                          {"vocab_size", c.vocab_size},
                          {"seq_len", c.seq_len},
                          {"head_size", c.head_dim()},
                          {"tied_embeddings", c.shared_classifier},
                          {"weight_bytes", model.weights.weight_bytes()},
                          {"weight_type", weight_type}}},
                        {"cells", cells}};
  return write_file_atomic(flags.out, out.dump(2) + "\n");
}

}  // namespace

Command add_bench_command(CLI::App &app) {
  auto flags = std::make_shared<BenchFlags>();
  CLI::App *sub = app.add_subcommand("bench",
                                     "Measure decode tokens/s over batch sizes, contexts and keep "
                                     "ratios (for capacity --measured)");
  flags->model.add_to(sub);
  sub->add_option("--batch", flags->batches, "Batch sizes (default 1 8 32)")->delimiter(',');
  sub->add_option("--context", flags->contexts, "Context lengths the caches are filled to (default 1024 4096)")
      ->delimiter(',');
  sub->add_option("--keep", flags->keeps, "Keep ratios; 1 is the full cache (default 1 0.5 0.25)")->delimiter(',');
  sub->add_option("--policy", flags->policy, "Policy of the pruned cells, at its published defaults (default vatp)");
  sub->add_option("--steps", flags->steps,
                  "Timed decode steps per cell, at least, after one untimed (default 8); a "
                  "full-cache cell holds "
                  "context + 1 + max(steps, 32) slots and runs at most that many");
  sub->add_option("--min-seconds", flags->min_seconds,
                  "An evicting cell runs more steps until this much time has "
                  "passed (default 2)");
  sub->add_option("--repeats", flags->repeats,
                  "Runs of the whole grid, round-robin; each cell reports its "
                  "best (default 3)")
      ->check(CLI::PositiveNumber);
  sub->add_option("--backend", flags->backend, "cpu (default), cuda or gpu-emulated");
  sub->add_option("--weights-dtype", flags->weights_dtype, "Matrix weights on a GPU backend: f32, f16 or q8_0");
  sub->add_option("--out", flags->out, "The bench.json to write (required)");
  add_delta_flags(sub, &flags->delta);  // with --delta-layers every keep ratio runs with and without DELTA
  sub->add_flag("--probe", flags->probe,
                "Before each repeat of each (context, batch) group, measure the rates capacity reads (the "
                "model's weight products, attention; as measure-hardware does, one run of --probe-seconds each) "
                "and keep them with the cells, for capacity --measured (CPU backend)");
  sub->add_option("--probe-seconds", flags->probe_seconds, "Least time per probed rate (default 0.3)")
      ->check(CLI::PositiveNumber);
  sub->add_option("--probe-memory", flags->probe_memory,
                  "Bytes the probed bandwidth and streamed weight products go through (default 1GiB: far past "
                  "the caches, as a decode step streams its weights)");
  return {sub, [flags] { return run_bench(*flags); }};
}

}  // namespace kvp::cli
