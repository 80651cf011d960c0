// Replay throughput: query-head decode steps per second, over a trace of 8 sampled stories260K
// sequences of 512 tokens (prompt 64), both cores.
//
//   build/kvplan_bench --benchmark_filter=Replay
#include <benchmark/benchmark.h>

#include <thread>

#include "executor/cpu/cpu_backend.h"
#include "executor/recorder.h"
#include "planner/replay.h"
#include "tests/support/test_support.h"

namespace kvp {
namespace {

const ReplayEngine& bench_engine() {
  static const std::unique_ptr<ReplayEngine> engine = [] {
    CpuBackend backend(test::default_model().weights);
    Decoder decoder(backend);
    const Corpus corpus = sample_corpus(decoder, {.n_sequences = 8, .length = 512});
    const std::string dir = test::make_temp_dir("bench-replay") + "/trace";
    KVP_CHECK(record_trace(test::default_model(), corpus, {.out_dir = dir, .prompt_len = 64}).ok());
    static Trace trace = std::move(Trace::open(dir)).value();
    return std::move(ReplayEngine::create(trace, static_cast<int>(std::max(1u, std::thread::hardware_concurrency())))).value();
  }();
  return *engine;
}

void BM_Replay(benchmark::State& state, const std::string& name) {
  const ReplayEngine& engine = bench_engine();
  const int budget = static_cast<int>(state.range(0));
  PolicyParams params = published_defaults(name, budget);
  const ReplayConfig config{.policy = std::shared_ptr<const Policy>(make_policy(name, params).value()),
                            .budgets = std::vector<std::vector<int32_t>>(
                                engine.model().n_layers, std::vector<int32_t>(engine.model().n_kv_heads, budget))};
  int64_t head_steps = 0;
  for (auto _ : state) {
    state.PauseTiming();
    engine.forget_replayed();  // else every iteration after the first takes the memo's sums
    state.ResumeTiming();
    head_steps += engine.run(config).head_steps;
  }
  state.counters["head_steps_per_s"] = benchmark::Counter(double(head_steps), benchmark::Counter::kIsRate);
}
BENCHMARK_CAPTURE(BM_Replay, vatp, std::string("vatp"))->Arg(32)->Arg(64)->Arg(256)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(BM_Replay, window, std::string("window"))->Arg(64)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace
}  // namespace kvp
