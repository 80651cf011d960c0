// GPU benchmarks (CUDA builds only; each skips with the runtime's reason where there is no device):
// device-to-device copy bandwidth, and the decode-attention kernel over a LLaMA-2-7B-shaped layer's
// plan-shaped cache (32 KV heads × head_dim 128, f32 and f16) in GB/s of keys and values read, at
// batch 1, 8, 32 and contexts 2K and 8K.
//
//   build/kvplan_bench --benchmark_filter=Gpu
#include <benchmark/benchmark.h>

#include <cuda_runtime.h>

#include <vector>

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
  float *score, *l1, *q, *kn, *vn, *out, *self;
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
    cuda::decode_attention(q, cache, kn, vn, out, self, math::kScoreValueAttention, heads, group, head_dim, threads);
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
                  static_cast<void*>(d_n), static_cast<void*>(pos)}) {
    cudaFree(p);
  }
}
BENCHMARK(BM_GpuDecodeAttention)
    ->ArgsProduct({{1, 8, 32}, {2048, 8192}, {0, 1}})
    ->ArgNames({"batch", "context", "f16"})
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace kvp
