// libFuzzer target: the trace manifest parser (manifest.yaml, versions 1 and 2), then what the
// reader derives from a manifest it accepts (the recorded query rows of every sequence).
// Seeds: tests/fuzz/seeds/trace_manifest.
#include <cstddef>
#include <cstdint>
#include <string>

#include "traces/manifest.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvp;
  const std::string text(reinterpret_cast<const char*>(data), size);
  Result<TraceManifest> m = TraceManifest::parse(text, "manifest.yaml");
  if (m.ok()) {
    for (const TraceSequenceEntry& e : m->sequences) {
      const std::vector<int32_t> rows = recorded_query_rows(e.length, e.prompt_len, m->query_stride);
      if (rows[e.prompt_len - 1] < 0) __builtin_trap();  // the prompt's last query is always kept
    }
    // What it writes, it reads back.
    if (!TraceManifest::parse(m->to_yaml(), "manifest.yaml").ok()) __builtin_trap();
  }
  return 0;
}
