// Buffer sizes of the memory-bound benchmarks. Their figures need buffers far past the caches
// (1 GiB, 256 MiB); the ctest smoke run (bench_smoke, KVPLAN_BENCH_SMOKE=1) only proves every
// benchmark still runs, so there each buffer is 1/16 of that: the same code paths without
// seconds of page faults and fills per benchmark.
#pragma once

#include <cstddef>
#include <cstdlib>
#include <cstring>

namespace kvp::bench {

inline bool smoke_run() {
  const char* v = std::getenv("KVPLAN_BENCH_SMOKE");
  return v != nullptr && *v != '\0' && std::strcmp(v, "0") != 0;
}

// `full` bytes for a measurement, `full` / 16 in the smoke run.
inline size_t buffer_bytes(size_t full) { return smoke_run() ? full / 16 : full; }

}  // namespace kvp::bench
