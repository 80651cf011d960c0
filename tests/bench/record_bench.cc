// The cost of recording a trace against plain full-cache generation of the same tokens.
//
//   build/kvplan_bench --benchmark_filter='Generate|Record'
//
// Both process 8 sequences of 512 tokens of stories260K, one thread: BM_GenerateFullCache
// generates them greedily from BOS, token by token; BM_Record* teacher-forces the same number of
// tokens and writes a complete trace (tensors, checksums, manifest) to a temporary directory.
#include <benchmark/benchmark.h>

#include <filesystem>

#include "executor/cpu/cpu_backend.h"
#include "executor/generator.h"
#include "executor/recorder.h"
#include "tests/support/test_support.h"

namespace kvp {
namespace {

constexpr int kSequences = 8;
constexpr int kLength = 512;

const Corpus& bench_corpus() {
  static const Corpus corpus = [] {
    CpuBackend backend(test::default_model().weights);
    Decoder decoder(backend);
    return sample_corpus(decoder, {.n_sequences = kSequences, .length = kLength});
  }();
  return corpus;
}

void BM_GenerateFullCache(benchmark::State& state) {
  const LoadedModel& model = test::default_model();
  CpuBackend backend(model.weights);
  Decoder decoder(backend);
  const GenerateOptions options{.steps = kLength - 1, .stop_at_eos = false};
  const std::vector<KvBudgets> budgets = {full_cache_budgets(model.weights.config(), kLength - 1)};
  int64_t tokens = 0;
  for (auto _ : state) {
    for (int s = 0; s < kSequences; ++s) {
      GenerateResult r = generate(decoder, {{kBosToken}}, budgets, options);
      tokens += static_cast<int64_t>(r.tokens[0].size());
    }
  }
  state.counters["tokens_per_s"] = benchmark::Counter(double(tokens), benchmark::Counter::kIsRate);
}
BENCHMARK(BM_GenerateFullCache)->Unit(benchmark::kMillisecond);

void record(benchmark::State& state, TensorDtype dtype) {
  const Corpus& corpus = bench_corpus();
  const std::string dir = test::make_temp_dir("bench-record") + "/trace";
  int64_t tokens = 0;
  for (auto _ : state) {
    auto stats = record_trace(test::default_model(), corpus,
                              {.out_dir = dir, .prompt_len = 64, .qkv_dtype = dtype, .overwrite = true});
    if (!stats.ok()) state.SkipWithError(stats.error().message().c_str());
    tokens += stats.ok() ? stats->n_tokens : 0;
  }
  state.counters["tokens_per_s"] = benchmark::Counter(double(tokens), benchmark::Counter::kIsRate);
  std::filesystem::remove_all(dir);
}
void BM_RecordF32(benchmark::State& state) { record(state, TensorDtype::kF32); }
void BM_RecordF16(benchmark::State& state) { record(state, TensorDtype::kF16); }
BENCHMARK(BM_RecordF32)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_RecordF16)->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace kvp
