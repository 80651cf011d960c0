// What eviction bookkeeping costs per decoded token, at budget 64, stories260K, one thread.
//
//   build/kvplan_bench --benchmark_filter=DecodeAt64
//
// Both benchmarks decode one token per iteration attending over exactly 64 cached tokens plus
// itself. BM_DecodeAt64_FullCache: a full cache holding 64 tokens (the inserted slot is dropped
// again after each step, so the context stays at 64). BM_DecodeAt64_Policy/<name>: a budget-64
// cache in steady state, scoring and evicting every step. The difference is the bookkeeping.
#include <benchmark/benchmark.h>

#include "executor/cpu/cpu_backend.h"
#include "executor/generator.h"
#include "tests/support/test_support.h"

namespace kvp {
namespace {

constexpr int kContext = 64;

std::vector<int32_t> prompt_tokens() {
  return test::default_model().tokenizer.encode(
      "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, "
      "she saw a big red ball and she wanted to play with it, but the ball was too high up in the old tree.");
}

void prefill(Decoder& decoder, const std::vector<int32_t>& tokens) {
  StepRows rows;
  for (int t = 0; t < kContext; ++t) rows.add(tokens[t], t, 0);
  std::vector<float> logits;
  const int32_t last = kContext - 1;
  decoder.forward(rows, std::span<const int32_t>(&last, 1), &logits);
}

void BM_DecodeAt64_FullCache(benchmark::State& state) {
  const LoadedModel& model = test::default_model();
  const ModelConfig& c = model.weights.config();
  CpuBackend backend(model.weights);
  Decoder decoder(backend);
  backend.reset_sequences({full_cache_budgets(c, kContext + 1)});
  const std::vector<int32_t> tokens = prompt_tokens();
  prefill(decoder, tokens);
  std::vector<float> logits;
  const int32_t zero = 0;
  for (auto _ : state) {
    StepRows row;
    row.add(tokens[kContext], kContext, 0);
    decoder.forward(row, std::span<const int32_t>(&zero, 1), &logits);
    for (int l = 0; l < c.n_layers; ++l) {
      for (int h = 0; h < c.n_kv_heads; ++h) --*backend.cache(0).head(l, h).n_used;
    }
  }
  state.counters["tokens_per_s"] = benchmark::Counter(double(state.iterations()), benchmark::Counter::kIsRate);
}
BENCHMARK(BM_DecodeAt64_FullCache);

void BM_DecodeAt64_Policy(benchmark::State& state, const std::string& name) {
  const LoadedModel& model = test::default_model();
  const ModelConfig& c = model.weights.config();
  CpuBackend backend(model.weights);
  Decoder decoder(backend);
  PolicyParams params = published_defaults(name, kContext);
  auto policy = std::shared_ptr<const Policy>(make_policy(name, params).value());
  KvBudgets budgets = KvBudgets::uniform(c.n_layers, c.n_kv_heads, c.head_dim(), kContext);
  budgets.aux_floats_per_slot = policy->aux_floats_per_slot();
  const std::vector<int32_t> tokens = prompt_tokens();
  std::vector<float> logits;
  const int32_t zero = 0;
  int32_t pos = c.seq_len;
  for (auto _ : state) {
    if (pos == c.seq_len) {  // start over before the model's context ends (every 448 steps)
      state.PauseTiming();
      backend.reset_sequences({budgets}, policy);
      prefill(decoder, tokens);
      pos = kContext;
      state.ResumeTiming();
    }
    StepRows row;
    row.add(tokens[pos % tokens.size()], pos, 0);
    decoder.forward(row, std::span<const int32_t>(&zero, 1), &logits);
    ++pos;
  }
  state.counters["tokens_per_s"] = benchmark::Counter(double(state.iterations()), benchmark::Counter::kIsRate);
}
BENCHMARK_CAPTURE(BM_DecodeAt64_Policy, window, std::string("window"));
BENCHMARK_CAPTURE(BM_DecodeAt64_Policy, h2o, std::string("h2o"));
BENCHMARK_CAPTURE(BM_DecodeAt64_Policy, vatp, std::string("vatp"));
BENCHMARK_CAPTURE(BM_DecodeAt64_Policy, tova, std::string("tova"));
BENCHMARK_CAPTURE(BM_DecodeAt64_Policy, snapkv, std::string("snapkv"));
BENCHMARK_CAPTURE(BM_DecodeAt64_Policy, knorm, std::string("knorm"));
BENCHMARK_CAPTURE(BM_DecodeAt64_Policy, random, std::string("random"));

}  // namespace
}  // namespace kvp
