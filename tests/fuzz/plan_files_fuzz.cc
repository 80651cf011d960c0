// libFuzzer target: the plan parser (plan.yaml, versions 1 and 2 with ThinK's key_channels and
// Mustafar's sparsity) and the measured.yaml parser that shares its compression fields; then what
// a plan it accepts derives (its KV budgets and their exact bytes), and that each writes what it reads.
// Seeds: tests/fuzz/seeds/plan_files.
#include <cstddef>
#include <cstdint>
#include <string>

#include "planner/plan/measured.h"
#include "planner/plan/plan.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvp;
  const std::string text(reinterpret_cast<const char*>(data), size);
  if (Result<Plan> plan = Plan::parse(text, "plan.yaml"); plan.ok()) {
    const KvBudgets budgets = plan->kv_budgets();
    if (budgets.kv_bytes() < 0) __builtin_trap();
    Result<Plan> back = Plan::parse(plan->to_yaml(), "plan.yaml");
    if (!back.ok() || back->compression != plan->compression || back->budgets != plan->budgets) __builtin_trap();
  }
  if (Result<Measured> m = Measured::parse(text, "measured.yaml"); m.ok()) {
    Result<Measured> back = Measured::parse(m->to_yaml(), "measured.yaml");
    if (!back.ok() || back->compression != m->compression) __builtin_trap();
  }
  return 0;
}
