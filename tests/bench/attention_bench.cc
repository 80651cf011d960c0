// slot_attention over one KV head of TinyLlama's shape (head_dim 64, 8 query heads), 4096 slots used,
// at row strides (the cache's capacity) that keep every 16-float packet on one cache line or not.
//
//   build/kvplan_bench --benchmark_filter=SlotAttention
#include <benchmark/benchmark.h>

#include <Eigen/Core>
#include <numeric>
#include <random>
#include <vector>

#include "common/aligned_vector.h"
#include "planner/policy/kv_compression.h"
#include "planner/policy/layer_step.h"
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

// One KV head's decode attention over `used` slots of each compressed layout against the dense cache
// at the same token budget: range(0) head_dim (8: stories260K, group 2; 128: Llama-3-8B, group 4),
// range(1) the layout — 0 dense (slot_attention), 1 ThinK 0.4, 2 Mustafar 0.5, 3 both. The newest
// 32 positions are in the rings' windows, as in decode.
//
//   build/kvplan_bench --benchmark_filter=CompressedAttention
void BM_CompressedAttention(benchmark::State& state) {
  const int hd = static_cast<int>(state.range(0)), layout = static_cast<int>(state.range(1));
  const int used = 2048, group = hd == 8 ? 2 : 4;
  const double think = layout & 1 ? 0.4 : 0.0, sparsity = layout & 2 ? 0.5 : 0.0;
  SlotCompression c = slot_compression(hd, think, sparsity, sparsity, "think", "keys", "values").value();
  if (!c.compressed()) c = SlotCompression{.key_channels = hd, .key_elements = hd, .value_elements = hd};
  const HeadShape shape{.budget = used, .head_dim = hd, .aux_floats = 0, .compression = c};
  Aligned64Vector<uint32_t> storage(head_layout(shape).bytes / 4);
  int32_t n_used = 0;
  const HeadSlots head = carve_head(reinterpret_cast<std::byte*>(storage.data()), shape, &n_used);
  if (head.channels) std::iota(head.channels, head.channels + hd, 0);
  std::mt19937 rng(1);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> key(hd), value(hd);
  for (int j = 0; j < used; ++j) {
    for (int d = 0; d < hd; ++d) key[d] = dist(rng), value[d] = dist(rng);
    head.store(j, key.data(), value.data(), j);
  }
  n_used = used;
  Aligned64Vector<float> q(size_t(group) * hd), k_new(hd), v_new(hd), out(size_t(group) * hd), scratch(used + 32),
      weights(used + 32);
  for (float& x : q) x = dist(rng);
  const SlotAttentionOut result{.out = out.data(), .weights = weights.data(), .softmax = nullptr, .scratch = scratch.data()};
  for (auto _ : state) {
    if (layout == 0) {
      slot_attention(q.data(), group, SlotKv{.k = head.k, .v = head.v, .capacity = used, .n_used = used, .head_dim = hd},
                     k_new.data(), v_new.data(), result);
    } else {
      compressed_slot_attention(q.data(), group, head, used, k_new.data(), v_new.data(), result);
    }
    benchmark::DoNotOptimize(out.data());
  }
  state.SetLabel(layout == 0 ? "dense" : layout == 1 ? "think0.4" : layout == 2 ? "mustafar0.5" : "think0.4+mustafar0.5");
  state.counters["ns_per_slot"] =
      benchmark::Counter(double(used), benchmark::Counter::kIsIterationInvariantRate | benchmark::Counter::kInvert);
  state.counters["bytes_per_slot"] = double(head_layout(shape).bytes) / used;
}
BENCHMARK(BM_CompressedAttention)->ArgsProduct({{8, 128}, {0, 1, 2, 3}})->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace kvp
