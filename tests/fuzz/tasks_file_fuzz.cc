// libFuzzer target: the tasks file parser (kvplan tasks, eval --tasks), checked against a model of
// 512 tokens and 1024 positions; what it accepts it writes back to the same text.
// Seeds: tests/fuzz/seeds/tasks_file.
#include <cstddef>
#include <cstdint>
#include <string>

#include "executor/tasks/tasks.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvp;
  const std::string text(reinterpret_cast<const char*>(data), size);
  ModelConfig config;
  config.vocab_size = 512;
  config.seq_len = 1024;
  Result<TaskFile> f = parse_tasks(text, "tasks.jsonl", config, "");
  if (f.ok()) {
    for (const TaskInstance& t : f->instances) {
      for (const TaskNeedle& n : t.needles) {
        if (n.begin < 0 || n.end > t.context_end) __builtin_trap();  // refused, never passed on
      }
    }
    const std::string again = tasks_text(*f);
    Result<TaskFile> g = parse_tasks(again, "tasks.jsonl", config, "");
    if (!g.ok() || tasks_text(*g) != again) __builtin_trap();
  }
  return 0;
}
