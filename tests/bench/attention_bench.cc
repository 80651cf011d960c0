// slot_attention over one KV head of TinyLlama's shape (head_dim 64, 8 query heads), 4096 slots used,
// at row strides (the cache's capacity) that keep every 16-float packet on one cache line or not.
//
//   build/kvplan_bench --benchmark_filter=SlotAttention
#include <benchmark/benchmark.h>

#include <Eigen/Core>

#include "common/aligned_vector.h"
#include <random>
#include <vector>

#include "planner/policy/slot_attention.h"

namespace kvp {
namespace {

void BM_SlotAttention(benchmark::State& state) {
  const int used = 4096, capacity = static_cast<int>(state.range(0)), hd = 64, group = 8, heads = 4;
  std::mt19937 rng(1);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  using Aligned = Aligned64Vector<float>;
  std::vector<Aligned> k(heads, Aligned(size_t(hd) * capacity)), v = k;
  for (int h = 0; h < heads; ++h) {
    for (float& x : k[h]) x = dist(rng);
    for (float& x : v[h]) x = dist(rng);
  }
  Aligned q(size_t(group) * hd), k_new(hd), v_new(hd), out(size_t(group) * hd), scratch(used + 32), weights(used + 32);
  for (float& x : q) x = dist(rng);
  for (auto _ : state) {
    for (int h = 0; h < heads; ++h) {
      slot_attention(q.data(), group, SlotKv{.k = k[h].data(), .v = v[h].data(), .capacity = capacity, .n_used = used, .head_dim = hd},
                     k_new.data(), v_new.data(),
                     SlotAttentionOut{.out = out.data(), .weights = weights.data(), .softmax = nullptr, .scratch = scratch.data()});
    }
    benchmark::DoNotOptimize(out.data());
  }
  state.counters["ns_per_head_slot"] =
      benchmark::Counter(double(heads) * used, benchmark::Counter::kIsIterationInvariantRate | benchmark::Counter::kInvert);
}
BENCHMARK(BM_SlotAttention)->Arg(4096)->Arg(4129)->Arg(4144)->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace kvp
