// libFuzzer target: the task trace reader (plan, sweep and calibrate --task-trace); what it accepts
// it writes back to the same bytes. Seeds: make_seeds writes a small trace (seeds/task_trace).
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "planner/task_trace.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvp;
  Result<TaskTrace> t = TaskTrace::parse(std::span(data, size), "t.kvtt");
  if (!t.ok()) return 0;
  for (const TaskTraceInstance& inst : t->instances) {
    for (const auto& [b, e] : inst.needles) {
      if (b < 0 || e > inst.cut || b >= e) __builtin_trap();  // refused, never passed on
    }
  }
  std::vector<uint8_t> again;
  auto append = [&](const void* p, size_t n) {
    again.insert(again.end(), static_cast<const uint8_t*>(p), static_cast<const uint8_t*>(p) + n);
    return ok_status();
  };
  if (!t->write_to(append).ok()) __builtin_trap();
  Result<TaskTrace> u = TaskTrace::parse(again, "t.kvtt");
  if (!u.ok()) __builtin_trap();
  std::vector<uint8_t> third;
  auto append3 = [&](const void* p, size_t n) {
    third.insert(third.end(), static_cast<const uint8_t*>(p), static_cast<const uint8_t*>(p) + n);
    return ok_status();
  };
  if (!u->write_to(append3).ok() || third != again) __builtin_trap();
  return 0;
}
