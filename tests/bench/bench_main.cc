// Google Benchmark's main for kvplan_bench (see docs/PERFORMANCE.md for the figures).
#include <benchmark/benchmark.h>

BENCHMARK_MAIN();
