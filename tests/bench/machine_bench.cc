// The machine's own limits, for configs/hardware/cpu-2core.yaml: copy bandwidth and f32 matrix
// throughput (one thread; the hardware file doubles them for the 2 cores).
//
//   build/kvplan_bench --benchmark_filter='Memcpy|Sgemm'
#include <benchmark/benchmark.h>

#include <Eigen/Core>
#include <cstring>
#include <vector>

#include "tests/bench/bench_sizes.h"

namespace kvp {
namespace {

void BM_MemcpyBandwidth(benchmark::State& state) {
  const size_t bytes = bench::buffer_bytes(size_t{256} << 20);
  std::vector<char> a(bytes, 1), b(bytes, 2);
  for (auto _ : state) {
    std::memcpy(b.data(), a.data(), bytes);
    benchmark::DoNotOptimize(b.data());
    benchmark::ClobberMemory();
  }
  // A copy reads and writes every byte.
  state.SetBytesProcessed(int64_t(state.iterations()) * 2 * int64_t(bytes));
}
BENCHMARK(BM_MemcpyBandwidth)->Unit(benchmark::kMillisecond);

void BM_Sgemm1024(benchmark::State& state) {
  const int n = 1024;
  Eigen::MatrixXf a = Eigen::MatrixXf::Random(n, n), b = Eigen::MatrixXf::Random(n, n), c(n, n);
  for (auto _ : state) {
    c.noalias() = a * b;
    benchmark::DoNotOptimize(c.data());
  }
  state.counters["flops"] = benchmark::Counter(2.0 * n * n * n * state.iterations(), benchmark::Counter::kIsRate);
}
BENCHMARK(BM_Sgemm1024)->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace kvp
