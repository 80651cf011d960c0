// The closed loop on tasks (kvplan eval --tasks): each instance's prompt prefilled once with the
// full cache and scored for every policy of the grid (CpuBackend::score_prompt_for), each
// configuration's cut forked from it (fork_prompt), then per configuration the rest of the prompt
// and the answer under its cache: greedy generation scored against the answers, and the reference
// answer teacher-forced for ΔNLL and KL against the full cache's.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "executor/cpu/cpu_backend.h"
#include "executor/tasks/tasks.h"
#include "planner/task_trace.h"

namespace kvp {

// Where the cache is cut: before the question is seen (query-agnostic, kvpress's leaderboard
// setting) or after it (query-aware; the prompt's last token is then fed under the cut cache).
enum class CutPoint { kContext, kQuestion };
std::string_view cut_point_name(CutPoint c);  // "agnostic", "aware"

struct TaskConfig {
  std::string label;                     // names the configuration in outputs
  std::string policy = "full";           // its name (make_policy)
  PolicyParams params;                   // sinks, recent and the rest; budget-dependent ones per instance
  double keep = 1.0;                     // budget = ceil(keep × the cut's length) slots per layer and head
  bool published_defaults = true;        // sinks and recent: the policy's published defaults at that budget
  CutPoint cut = CutPoint::kContext;
  // A plan's budgets (per layer and head, in slots) instead of `keep`; params as given.
  std::optional<KvBudgets> budgets;
};

struct TaskOutcome {
  std::string id, family;
  int length = 0;
  int prompt_tokens = 0;
  int budget = 0;                        // slots per layer and head
  int64_t kv_bytes = 0;                  // the configuration's cache
  double score = 0;                      // the metric on the greedy answer
  std::string prediction;
  double nll_full = 0, nll = 0;          // mean over the reference answer's tokens (teacher-forced)
  double kl = 0;                         // mean KL(full ‖ configuration) over them
  double needles_kept = 1.0;             // share of needle tokens in the cut cache, over layers and heads
  int sinks = 0, recent = 0;             // the policy's, as it ran on this instance
  std::string detail;                    // its other settings (policy_detail)
};

struct TaskEvalOptions {
  int prefill_chunk = 512;
  int batch = 8;  // configurations decoded together
  // Also record a task trace (task_trace.h; kvplan record --tasks, eval --trace-out) at cut
  // `trace_cut`, whose prefill then runs even with no configuration at that cut: the scores of
  // every scorer the configurations need and of `trace_scorers`, the full cache's answer attention
  // and its score. The caller fills the trace's model fields.
  TaskTrace* trace = nullptr;
  CutPoint trace_cut = CutPoint::kContext;
  std::vector<std::shared_ptr<const Policy>> trace_scorers;
  // After each instance: (instances done, seconds so far).
  std::function<void(int done, double seconds)> progress;
};

// outcome[c][i]: configuration c on instance i. REQUIRES: every instance fits the model (load_tasks
// checks), `backend`'s model is the tasks'.
std::vector<std::vector<TaskOutcome>> evaluate_tasks(CpuBackend& backend, const Tokenizer& tokenizer,
                                                     const std::vector<TaskInstance>& instances,
                                                     const std::vector<TaskConfig>& configs,
                                                     const TaskEvalOptions& options);

// The Wilson interval (95%) of a mean score over n instances.
struct Interval {
  double low = 0, high = 0;
};
Interval wilson_interval(double mean, int n);

}  // namespace kvp
