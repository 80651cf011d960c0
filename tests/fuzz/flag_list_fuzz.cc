// libFuzzer target: the comma-separated flag lists of the kvplan front end (--budgets and the like,
// record --layers with ranges). Seeds: tests/fuzz/seeds/flag_list.
#include <cstddef>
#include <cstdint>
#include <string>

#include "tools/kvplan/plan_flags.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvp;
  const std::string text(reinterpret_cast<const char*>(data), size);
  (void)cli::parse_int_list("--budgets", text);
  Result<std::vector<int>> layers = cli::parse_layer_list("--layers", text);
  if (layers.ok()) {
    for (size_t i = 1; i < layers->size(); ++i) {
      if ((*layers)[i] <= (*layers)[i - 1]) __builtin_trap();  // increasing, as promised
    }
  }
  return 0;
}
