// Decode throughput of the CPU backend on stories260K, one thread.
//
//   build/kvplan_bench --benchmark_filter=Decode
//
// BM_GreedyDecode256 is the figure of docs/PERFORMANCE.md: greedy from BOS over 256 positions,
// as llama2.c's run.c does with -n 256; tokens/s counts the 256 tokens generated. The argument is
// the CPU backend's thread count.
#include <benchmark/benchmark.h>

#include "executor/cpu/cpu_backend.h"
#include "executor/generator.h"
#include "tests/support/test_support.h"

namespace kvp {
namespace {

void BM_GreedyDecode256(benchmark::State& state) {
  const LoadedModel& model = test::default_model();
  CpuBackend backend(model.weights, static_cast<int>(state.range(0)));
  Decoder decoder(backend);
  const GenerateOptions options{.steps = 256};
  const std::vector<KvBudgets> budgets = {full_cache_budgets(model.weights.config(), 256)};
  int64_t tokens = 0;
  for (auto _ : state) {
    GenerateResult r = generate(decoder, {{kBosToken}}, budgets, options);
    tokens += r.generated_tokens;
    benchmark::DoNotOptimize(r.tokens);
  }
  state.counters["tokens_per_s"] = benchmark::Counter(double(tokens), benchmark::Counter::kIsRate);
}
BENCHMARK(BM_GreedyDecode256)->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond);

// Batched decode: `batch` sequences, 128 positions each, one forward pass per step.
void BM_GreedyDecodeBatch(benchmark::State& state) {
  const LoadedModel& model = test::default_model();
  const int batch = static_cast<int>(state.range(0));
  CpuBackend backend(model.weights);
  Decoder decoder(backend);
  const GenerateOptions options{.steps = 128};
  const std::vector<std::vector<int32_t>> prompts(batch, std::vector<int32_t>{kBosToken});
  const std::vector<KvBudgets> budgets(batch, full_cache_budgets(model.weights.config(), 128));
  int64_t tokens = 0;
  for (auto _ : state) {
    GenerateResult r = generate(decoder, prompts, budgets, options);
    tokens += r.generated_tokens;
  }
  state.counters["tokens_per_s"] = benchmark::Counter(double(tokens), benchmark::Counter::kIsRate);
}
BENCHMARK(BM_GreedyDecodeBatch)->Arg(1)->Arg(4)->Arg(16)->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace kvp

