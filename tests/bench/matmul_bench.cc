// The CPU dot kernels against the memory they stream: typed weight matrices times f32 activations
// (one thread), next to the machine's read bandwidth, the bound of a decode step.
//
//   build/kvplan_bench --benchmark_filter='ReadBandwidth|Matmul'
#include <benchmark/benchmark.h>

// GCC 12 warns inside its own reduction intrinsics.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#include <algorithm>

#include <thread>
#include <vector>

#include "common/thread_pool.h"
#include "executor/cpu/dot_kernels.h"
#include "tests/bench/bench_sizes.h"

namespace kvp {
namespace {

// Reads 1 GiB (far beyond the caches) with vector loads, on `threads` threads.
void BM_ReadBandwidth(benchmark::State& state) {
  const int threads = static_cast<int>(state.range(0));
  const size_t n = bench::buffer_bytes(size_t{1} << 30) / sizeof(float);
  std::vector<float> a(n, 1.0f);
  ThreadPool pool(threads);
  for (auto _ : state) {
    std::vector<float> sums(threads);
    pool.run([&](int part, int parts) {
      const RowRange r = split_rows(static_cast<int64_t>(n), part, parts, 64);
      float s = 0;
#if defined(__AVX512F__)
      __m512 acc0 = _mm512_setzero_ps(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
      for (int64_t i = r.begin; i + 64 <= r.end; i += 64) {
        // Software prefetch 2 KiB ahead, as the dot kernels do: one core's streamers alone do not
        // reach the bandwidth here.
        for (int k = 0; k < 4; ++k) _mm_prefetch(reinterpret_cast<const char*>(&a[i]) + 2048 + 64 * k, _MM_HINT_T0);
        acc0 = _mm512_add_ps(acc0, _mm512_loadu_ps(&a[i]));
        acc1 = _mm512_add_ps(acc1, _mm512_loadu_ps(&a[i + 16]));
        acc2 = _mm512_add_ps(acc2, _mm512_loadu_ps(&a[i + 32]));
        acc3 = _mm512_add_ps(acc3, _mm512_loadu_ps(&a[i + 48]));
      }
      s = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc0, acc1), _mm512_add_ps(acc2, acc3)));
#else
      for (int64_t i = r.begin; i < r.end; ++i) s += a[i];
#endif
      sums[part] = s;
    });
    benchmark::DoNotOptimize(sums.data());
  }
  state.SetBytesProcessed(int64_t(state.iterations()) * int64_t(n * sizeof(float)));
}
BENCHMARK(BM_ReadBandwidth)->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();

// y = W x for a weight matrix of TinyLlama's width (2048 inputs), one activation row, as a decode
// step streams it: range(2) MiB of weights (64: it stays in this machine's 260 MiB L3; 1024: memory).
void BM_Matmul(benchmark::State& state) {
  const WeightType type = static_cast<WeightType>(state.range(0));
  const int threads = static_cast<int>(state.range(1));
  const int64_t cols = 2048,
                rows = int64_t(bench::buffer_bytes(size_t(state.range(2)) << 20)) / static_cast<int64_t>(row_bytes(type, cols));
  std::vector<float> values(size_t(rows * cols));
  uint32_t h = 1;
  for (float& v : values) v = static_cast<float>(int32_t(h = h * 1664525u + 1013904223u) >> 8) * 0x1p-30f;  // fast, non-trivial
  const std::vector<std::byte> stored = quantize(values, rows, cols, type);
  values.clear();
  values.shrink_to_fit();
  const WeightTensor w{.type = type, .data = stored.data(), .rows = rows, .cols = cols};
  std::vector<float> x(cols, 0.5f), y(rows);
  const MatmulArgs args{.w = &w, .x = x.data(), .x_stride = size_t(cols), .y = y.data(), .y_stride = size_t(rows), .n_rows = 1};
  ThreadPool pool(threads);
  for (auto _ : state) {
    pool.run([&](int part, int parts) {
      const RowRange r = split_rows(rows, part, parts, 16);
      matmul_range(args, r.begin, r.end);
    });
    benchmark::DoNotOptimize(y.data());
  }
  state.SetBytesProcessed(int64_t(state.iterations()) * int64_t(stored.size()));
  state.SetLabel(std::string(weight_type_name(type)));
}
BENCHMARK(BM_Matmul)
    ->ArgsProduct({{int(WeightType::kF32), int(WeightType::kF16), int(WeightType::kBF16), int(WeightType::kQ8_0)}, {1, 2}, {64, 1024}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// A decode step's weight products for a batch: 5632 x 2048 matrices (TinyLlama's FFN shape) of
// range(0)'s type, 256 MiB of copies gone through in turn so that each streams from memory as a
// model's matrices do, range(1) activation rows, 2 threads (kvplan bench's setting). FLOP/s.
void BM_MatmulBatch(benchmark::State& state) {
  const WeightType type = static_cast<WeightType>(state.range(0));
  const int batch = static_cast<int>(state.range(1));
  const int64_t cols = 2048, rows = 5632;
  std::vector<float> values(size_t(rows * cols));
  uint32_t h = 1;
  for (float& v : values) v = static_cast<float>(int32_t(h = h * 1664525u + 1013904223u) >> 8) * 0x1p-30f;
  const std::vector<std::byte> one = quantize(values, rows, cols, type);
  const int copies = static_cast<int>(std::max<size_t>(2, bench::buffer_bytes(size_t{256} << 20) / one.size()));
  std::vector<std::byte> all(one.size() * copies);
  for (int c = 0; c < copies; ++c) std::copy(one.begin(), one.end(), all.begin() + c * one.size());
  std::vector<float> x(size_t(batch) * cols, 0.5f), y(size_t(batch) * rows);
  ThreadPool pool(2);
  int c = 0;
  for (auto _ : state) {
    const WeightTensor w{.type = type, .data = all.data() + size_t(c) * one.size(), .rows = rows, .cols = cols};
    const MatmulArgs args{.w = &w, .x = x.data(), .x_stride = size_t(cols), .y = y.data(), .y_stride = size_t(rows),
                          .n_rows = batch};
    pool.run([&](int part, int parts) {
      const RowRange r = split_rows(rows, part, parts, 16);
      matmul_range(args, r.begin, r.end);
    });
    benchmark::DoNotOptimize(y.data());
    c = (c + 1) % copies;
  }
  state.counters["flops"] = benchmark::Counter(2.0 * double(rows * cols) * batch, benchmark::Counter::kIsIterationInvariantRate);
  state.SetLabel(std::string(weight_type_name(type)));
}
BENCHMARK(BM_MatmulBatch)
    ->ArgsProduct({{int(WeightType::kF16), int(WeightType::kQ8_0)}, {1, 8, 32, 128}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// stories260K's shape: rows of range(0) inputs (64 or 172), 1 MiB of f32 weights in all (the whole
// model's matrices, as one decode step reads them from L2), one activation row, one thread.
void BM_MatmulNarrow(benchmark::State& state) {
  const int64_t cols = state.range(0), rows = (int64_t{1} << 20) / (4 * cols);
  std::vector<float> values(size_t(rows * cols));
  uint32_t h = 1;
  for (float& v : values) v = static_cast<float>(int32_t(h = h * 1664525u + 1013904223u) >> 8) * 0x1p-30f;
  const WeightTensor w{.type = WeightType::kF32, .data = reinterpret_cast<const std::byte*>(values.data()), .rows = rows,
                       .cols = cols};
  std::vector<float> x(cols, 0.5f), y(rows);
  const MatmulArgs args{.w = &w, .x = x.data(), .x_stride = size_t(cols), .y = y.data(), .y_stride = size_t(rows), .n_rows = 1};
  for (auto _ : state) {
    matmul_range(args, 0, rows);
    benchmark::DoNotOptimize(y.data());
  }
  state.SetBytesProcessed(int64_t(state.iterations()) * rows * cols * 4);
  state.counters["ns_per_row"] = benchmark::Counter(double(rows), benchmark::Counter::kIsIterationInvariantRate | benchmark::Counter::kInvert);
}
BENCHMARK(BM_MatmulNarrow)->Arg(64)->Arg(172)->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace kvp
