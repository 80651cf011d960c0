// GPU benchmarks (CUDA builds only; each skips with the runtime's reason where there is no device):
// device-to-device copy bandwidth, and the decode-attention kernel over a LLaMA-2-7B-shaped layer's
// plan-shaped cache (32 KV heads × head_dim 128, f32 and f16) in GB/s of keys and values read, at
// batch 1, 8, 32 and contexts 2K and 8K; the same over ThinK/Mustafar head blocks.
//
//   build/kvplan_bench --benchmark_filter=Gpu
#include <benchmark/benchmark.h>

#include <cuda_runtime.h>

#include <vector>

#include <chrono>
#include <fmt/format.h>

#include "executor/decoder.h"
#include "executor/gpu/gpu_backend.h"
#include "kernels/device_query.h"
#include "kernels/launch.h"
#include "kernels/score_rule.h"

namespace kvp {
namespace {

bool have_device(benchmark::State& state) {
  const CudaDeviceReport report = query_cuda_devices();
  if (report.devices.empty()) {
    state.SkipWithError(("no CUDA device: " + report.why_none).c_str());
    return false;
  }
  return true;
}

void BM_GpuCopy(benchmark::State& state) {
  if (!have_device(state)) return;
  const size_t bytes = size_t{1} << 30;
  void *a = nullptr, *b = nullptr;
  cudaMalloc(&a, bytes);
  cudaMalloc(&b, bytes);
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  for (auto _ : state) {
    cudaEventRecord(start);
    cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice);
    cudaEventRecord(stop);
    cudaEventSynchronize(stop);
    float ms = 0;
    cudaEventElapsedTime(&ms, start, stop);
    state.SetIterationTime(ms / 1e3);
  }
  // A copy reads and writes every byte.
  state.counters["GB_per_s"] = benchmark::Counter(2.0 * bytes * state.iterations() / 1e9, benchmark::Counter::kIsRate);
  cudaFree(a);
  cudaFree(b);
}
BENCHMARK(BM_GpuCopy)->UseManualTime()->Unit(benchmark::kMillisecond);

void BM_GpuDecodeAttention(benchmark::State& state) {
  if (!have_device(state)) return;
  const int batch = static_cast<int>(state.range(0)), context = static_cast<int>(state.range(1));
  const bool half = state.range(2) != 0;
  const size_t elem = half ? 2 : 4;
  const int kv_heads = 32, head_dim = 128, group = 1, threads = 256;
  const int heads = batch * kv_heads;
  const int64_t slots = int64_t{heads} * context;
  std::vector<int64_t> offset(heads);
  std::vector<int32_t> capacity(heads, context), n_used(heads, context - 1);
  for (int h = 0; h < heads; ++h) offset[h] = int64_t{h} * context;
  void *k, *v;
  float *score, *l1, *q, *kn, *vn, *out, *self, *weights;
  int64_t* d_off;
  int32_t *d_cap, *d_n, *pos;
  cudaMalloc(&k, slots * head_dim * elem);
  cudaMalloc(&v, slots * head_dim * elem);
  cudaMalloc(&pos, slots * sizeof(int32_t));
  cudaMalloc(&score, slots * sizeof(float));
  cudaMalloc(&l1, slots * sizeof(float));
  cudaMalloc(&q, size_t(heads) * group * head_dim * sizeof(float));
  cudaMalloc(&kn, size_t(heads) * head_dim * sizeof(float));
  cudaMalloc(&vn, size_t(heads) * head_dim * sizeof(float));
  cudaMalloc(&out, size_t(heads) * group * head_dim * sizeof(float));
  cudaMalloc(&self, size_t(heads) * sizeof(float));
  cudaMalloc(&weights, size_t(heads) * group * (context + 1) * sizeof(float));
  cudaMalloc(&d_off, heads * sizeof(int64_t));
  cudaMalloc(&d_cap, heads * sizeof(int32_t));
  cudaMalloc(&d_n, heads * sizeof(int32_t));
  cudaMemset(k, 0, slots * head_dim * elem);
  cudaMemset(v, 0, slots * head_dim * elem);
  cudaMemset(l1, 0, slots * sizeof(float));
  cudaMemset(score, 0, slots * sizeof(float));
  cudaMemset(q, 0, size_t(heads) * group * head_dim * sizeof(float));
  cudaMemcpy(d_off, offset.data(), heads * sizeof(int64_t), cudaMemcpyHostToDevice);
  cudaMemcpy(d_cap, capacity.data(), heads * sizeof(int32_t), cudaMemcpyHostToDevice);
  cudaMemcpy(d_n, n_used.data(), heads * sizeof(int32_t), cudaMemcpyHostToDevice);
  const SlotCacheView cache{k, v, half, pos, score, l1, d_off, d_cap, d_n};
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  for (auto _ : state) {
    cudaEventRecord(start);
    // VATP's accumulation: every slot's score gains its weight times its value norm.
    cuda::decode_attention(DecodeRows{.q = q, .k_new = kn, .v_new = vn, .out = out, .self_weight = self,
                                      .heads = heads, .group = group, .head_dim = head_dim},
                           cache, weights, context + 1, math::kScoreValueAttention, {}, threads);
    cudaEventRecord(stop);
    cudaEventSynchronize(stop);
    float ms = 0;
    cudaEventElapsedTime(&ms, start, stop);
    state.SetIterationTime(ms / 1e3);
  }
  if (cudaGetLastError() != cudaSuccess) state.SkipWithError("decode_attention failed");
  const double bytes = 2.0 * slots * head_dim * elem;  // keys and values, once
  state.counters["GB_per_s"] = benchmark::Counter(bytes * state.iterations() / 1e9, benchmark::Counter::kIsRate);
  for (void* p : {static_cast<void*>(k), static_cast<void*>(v), static_cast<void*>(score), static_cast<void*>(l1),
                  static_cast<void*>(q), static_cast<void*>(kn), static_cast<void*>(vn), static_cast<void*>(out),
                  static_cast<void*>(self), static_cast<void*>(d_off), static_cast<void*>(d_cap),
                  static_cast<void*>(d_n), static_cast<void*>(pos), static_cast<void*>(weights)}) {
    cudaFree(p);
  }
}
BENCHMARK(BM_GpuDecodeAttention)
    ->ArgsProduct({{1, 8, 32}, {2048, 8192}, {0, 1}})
    ->ArgNames({"batch", "context", "f16"})
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);

// The same layer's decode attention over ThinK/Mustafar head blocks (kernels/compressed_kernels.cuh),
// f16, at the dense benchmark's shape: layout 1 ThinK 0.4, 2 Mustafar 0.5, 3 both; windows of 32.
// Masks keep every other element (the count Mustafar 0.5 keeps), so the sparse paths do their real
// work. GB/s counts the blocks' bytes read once; ms against BM_GpuDecodeAttention's f16 row at the
// same batch and context is the layouts' speed-up or cost.
void BM_GpuCompressedDecodeAttention(benchmark::State& state) {
  if (!have_device(state)) return;
  const int batch = static_cast<int>(state.range(0)), context = static_cast<int>(state.range(1));
  const int layout = static_cast<int>(state.range(2));
  const int kv_heads = 32, head_dim = 128, group = 1, threads = 256;
  const int heads = batch * kv_heads;
  const bool think = layout & 1, mustafar = layout & 2;
  const int kc = think ? head_dim - 51 : head_dim;  // ⌊0.4 · 128⌋ = 51 channels dropped
  const CompressedShape shape{head_dim, kc, mustafar ? kc - kc / 2 : kc, mustafar ? head_dim / 2 : head_dim, 32, 32, 2};
  const CompressedParts parts = compressed_parts(shape, context);
  std::vector<int64_t> offset(heads), block(heads);
  std::vector<int32_t> capacity(heads, context), n_used(heads, context - 1), newest(heads, context + 100);
  for (int h = 0; h < heads; ++h) offset[h] = int64_t{h} * context, block[h] = int64_t{h} * parts.bytes;
  const int64_t slots = int64_t{heads} * context;
  uint8_t* blocks;
  float *score, *l1, *q, *kn, *vn, *out, *self, *weights;
  int64_t *d_off, *d_block;
  int32_t *d_cap, *d_n, *d_newest, *pos;
  cudaMalloc(&blocks, heads * parts.bytes);
  cudaMalloc(&pos, slots * sizeof(int32_t));
  cudaMalloc(&score, slots * sizeof(float));
  cudaMalloc(&l1, slots * sizeof(float));
  cudaMalloc(&q, size_t(heads) * group * head_dim * sizeof(float));
  cudaMalloc(&kn, size_t(heads) * head_dim * sizeof(float));
  cudaMalloc(&vn, size_t(heads) * head_dim * sizeof(float));
  cudaMalloc(&out, size_t(heads) * group * head_dim * sizeof(float));
  cudaMalloc(&self, size_t(heads) * sizeof(float));
  cudaMalloc(&weights, size_t(heads) * group * (context + 1) * sizeof(float));
  cudaMalloc(&d_off, heads * sizeof(int64_t));
  cudaMalloc(&d_block, heads * sizeof(int64_t));
  cudaMalloc(&d_cap, heads * sizeof(int32_t));
  cudaMalloc(&d_n, heads * sizeof(int32_t));
  cudaMalloc(&d_newest, heads * sizeof(int32_t));
  cudaMemset(blocks, 0, heads * parts.bytes);
  cudaMemset(pos, 0, slots * sizeof(int32_t));  // every slot old: outside the windows
  cudaMemset(l1, 0, slots * sizeof(float));
  cudaMemset(score, 0, slots * sizeof(float));
  cudaMemset(q, 0, size_t(heads) * group * head_dim * sizeof(float));
  std::vector<int32_t> channels(head_dim);
  for (int c = 0; c < head_dim; ++c) channels[c] = c;
  std::vector<uint8_t> key_masks(size_t(context) * shape.key_mask_bytes(), 0x55),
      value_masks(size_t(context) * shape.value_mask_bytes(), 0x55);
  if (kc % 8 != 0) {  // the key masks' last byte has kc % 8 valid bits, half of them set (kc − ke kept)
    for (int j = 0; j < context; ++j) key_masks[size_t(j + 1) * shape.key_mask_bytes() - 1] &= (1u << (kc % 8)) - 1;
  }
  for (int h = 0; h < heads; ++h) {
    uint8_t* b = blocks + block[h];
    if (shape.thin()) cudaMemcpy(b + parts.channels, channels.data(), channels.size() * 4, cudaMemcpyHostToDevice);
    if (shape.sparse_keys()) cudaMemcpy(b + parts.k_mask, key_masks.data(), key_masks.size(), cudaMemcpyHostToDevice);
    if (shape.sparse_values()) {
      cudaMemcpy(b + parts.v_mask, value_masks.data(), value_masks.size(), cudaMemcpyHostToDevice);
    }
  }
  cudaMemcpy(d_off, offset.data(), heads * sizeof(int64_t), cudaMemcpyHostToDevice);
  cudaMemcpy(d_block, block.data(), heads * sizeof(int64_t), cudaMemcpyHostToDevice);
  cudaMemcpy(d_cap, capacity.data(), heads * sizeof(int32_t), cudaMemcpyHostToDevice);
  cudaMemcpy(d_n, n_used.data(), heads * sizeof(int32_t), cudaMemcpyHostToDevice);
  cudaMemcpy(d_newest, newest.data(), heads * sizeof(int32_t), cudaMemcpyHostToDevice);
  const SlotCacheView cache{.k = nullptr, .v = nullptr, .half = true, .pos = pos, .score = score, .value_l1 = l1,
                            .offset = d_off, .capacity = d_cap, .n_used = d_n, .blocks = blocks, .block = d_block,
                            .shape = shape, .newest = d_newest};
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  for (auto _ : state) {
    cudaEventRecord(start);
    cuda::decode_attention(DecodeRows{.q = q, .k_new = kn, .v_new = vn, .out = out, .self_weight = self,
                                      .heads = heads, .group = group, .head_dim = head_dim},
                           cache, weights, context + 1, math::kScoreValueAttention, {}, threads);
    cudaEventRecord(stop);
    cudaEventSynchronize(stop);
    float ms = 0;
    cudaEventElapsedTime(&ms, start, stop);
    state.SetIterationTime(ms / 1e3);
  }
  if (cudaGetLastError() != cudaSuccess) state.SkipWithError("decode_attention over compressed blocks failed");
  state.counters["GB_per_s"] =
      benchmark::Counter(double(heads) * parts.bytes * state.iterations() / 1e9, benchmark::Counter::kIsRate);
  state.counters["bytes_per_slot"] = double(parts.bytes) / context;
  for (void* p : {static_cast<void*>(blocks), static_cast<void*>(score), static_cast<void*>(l1), static_cast<void*>(q),
                  static_cast<void*>(kn), static_cast<void*>(vn), static_cast<void*>(out), static_cast<void*>(self),
                  static_cast<void*>(d_off), static_cast<void*>(d_block), static_cast<void*>(d_cap),
                  static_cast<void*>(d_n), static_cast<void*>(d_newest), static_cast<void*>(pos),
                  static_cast<void*>(weights)}) {
    cudaFree(p);
  }
}
BENCHMARK(BM_GpuCompressedDecodeAttention)
    ->ArgsProduct({{8}, {2048, 8192}, {1, 2, 3}})
    ->ArgNames({"batch", "context", "layout"})
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);

// Decode throughput of the whole GPU backend on a LLaMA-2-7B-shaped model (configs/models/
// llama-2-7b.yaml: dim 4096, hidden 11008, 32 layers, 32 heads, vocab 32000; seq_len raised to
// 8192 for the 8K context) with random binary16 weights and KV: batch 1, 8 and 32 at contexts 2K
// and 8K, full cache (keep 100) against VATP at 50% and 25%. The caches start filled
// (fill_for_benchmark) so no 8K prefill runs; each iteration is one decode step of every sequence.
// A configuration whose cache does not fit beside the weights is skipped, as the capacity model says.
ModelConfig llama2_7b_shape() {
  return ModelConfig{.dim = 4096, .hidden_dim = 11008, .n_layers = 32, .n_heads = 32, .n_kv_heads = 32,
                     .vocab_size = 32000, .seq_len = 8192, .shared_classifier = false};
}

GpuBackend& llama2_7b_backend() {
  static GpuBackend* backend = [] {
    ModelConfig one = llama2_7b_shape();
    one.n_layers = 1;
    // One random layer (host memory), uploaded as 32 separate layers: the device reads 13.5 GB of
    // binary16 weights per step, as the real model would.
    static const ModelWeights weights = ModelWeights::repeat_layer(random_weights(one, 1), 32);
    auto device = std::move(make_cuda_device()).value();
    return new GpuBackend(weights, std::move(device), GpuBackendOptions{.weights = KvDtype::kF16});
  }();
  return *backend;
}

void BM_GpuDecode(benchmark::State& state) {
  if (!have_device(state)) return;
  const int batch = static_cast<int>(state.range(0)), context = static_cast<int>(state.range(1));
  const int keep_percent = static_cast<int>(state.range(2));
  constexpr int kSteps = 16;  // decode steps measured (the full cache has room for them)
  GpuBackend& gpu = llama2_7b_backend();
  const ModelConfig& c = gpu.config();
  const bool full = keep_percent == 100;
  const PolicyParams params{.sinks = 4, .recent = 64};
  auto policy = std::move(make_policy(full ? "full" : "vatp", full ? PolicyParams{.sinks = 0, .recent = 0} : params)).value();
  KvBudgets budgets = KvBudgets::uniform(c.n_layers, c.n_kv_heads, c.head_dim(),
                                         full ? context : context * keep_percent / 100, KvDtype::kF16);
  budgets.aux_floats_per_slot = policy->aux_floats_per_slot();
  gpu.reset_sequences({}, nullptr);  // release the previous configuration's cache first
  const int64_t need = budgets.kv_bytes() * batch;
  const int64_t free = gpu.device().free_memory();
  if (need + (int64_t{1} << 30) > free) {
    state.SkipWithError(fmt::format("KV cache {:.1f} GB does not fit beside the weights ({:.1f} GB free)", need / 1e9,
                                    free / 1e9).c_str());
    return;
  }
  gpu.reset_sequences(std::vector<KvBudgets>(batch, budgets), std::shared_ptr<const Policy>(std::move(policy)));
  // Positions up to context − 1: the cache holds the first context − kSteps, the steps add the rest.
  gpu.fill_for_benchmark(context - kSteps);
  Decoder decoder(gpu);
  std::vector<int32_t> all(batch);
  for (int s = 0; s < batch; ++s) all[s] = s;
  std::vector<float> logits;
  auto step = [&](int i) {
    StepRows rows;
    for (int s = 0; s < batch; ++s) rows.add((7 * s + i) % c.vocab_size, context - kSteps + i, s);
    decoder.forward(rows, all, &logits);
  };
  step(0);  // warm-up (cuBLAS heuristics, first launches)
  int i = 1;
  for (auto _ : state) {
    const auto t0 = std::chrono::steady_clock::now();
    step(i++);
    gpu.device().synchronize();
    state.SetIterationTime(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  state.counters["tokens_per_s"] = benchmark::Counter(double(batch) * state.iterations(), benchmark::Counter::kIsRate);
  state.counters["weight_GB"] = gpu.weight_bytes() / 1e9;
  state.counters["kv_GB"] = need / 1e9;
  // Bytes a step must read at least: every weight once, every cached key and value once.
  state.counters["min_GB_per_s"] = benchmark::Counter((gpu.weight_bytes() + need) / 1e9 * state.iterations(),
                                                      benchmark::Counter::kIsRate);
}
BENCHMARK(BM_GpuDecode)
    ->ArgsProduct({{1, 8, 32}, {2048, 8192}, {100, 50, 25}})
    ->ArgNames({"batch", "context", "keep"})
    ->Iterations(15)
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace kvp
