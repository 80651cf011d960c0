// Task accuracy from task traces in the CLI: outcomes.csv (kvplan eval --tasks) joined with a task
// trace's replay (calibrate --task-trace), and predictions for a plan or a uniform configuration
// (plan, sweep --task-calibration).
#pragma once

#include <string>
#include <vector>

#include "common/status.h"
#include "planner/plan/plan.h"
#include "planner/task_calibration.h"

namespace kvp::cli {

// Each row of `outcomes_path` (eval --tasks' outcomes.csv) replayed on `trace`: the configuration
// rebuilt from its policy, budget and settings (sinks, recent, detail; files without those columns:
// the policy's published defaults at that budget). Rows at another cut than the trace's are
// skipped. `needle_gap` receives the largest |replayed − closed-loop| share of needle tokens kept
// (0 when the replay cuts what the closed loop cut).
Result<std::vector<TaskObservation>> task_observations(const TaskTrace& trace, const std::string& trace_path,
                                                       const std::string& outcomes_path, double* needle_gap);

// One configuration's features on every instance of `trace`: `budgets` per layer and head (slots).
Result<std::vector<TaskFeatures>> replay_task_trace(const TaskTrace& trace, const std::string& policy,
                                                    const PolicyParams& params, const std::vector<int32_t>& budgets);

// --task-calibration and --task-trace of plan and sweep: both or neither; the calibration and the
// trace must be of `fingerprint`'s model.
struct TaskPredictor {
  TaskCalibration calibration;
  TaskTrace trace;
  std::string calibration_path, trace_path;
  // A configuration's predicted accuracy on the trace's instances.
  Result<TaskAccuracy> predict(const std::string& policy, const PolicyParams& params,
                               const std::vector<int32_t>& budgets) const;
  Result<TaskAccuracy> predict(const Plan& plan) const;
};
Result<std::optional<TaskPredictor>> load_task_predictor(const std::string& calibration_path,
                                                         const std::string& trace_path, const std::string& fingerprint);

// What eval --tasks measured for one configuration (its rows of outcomes.csv): mean score over its
// instances, and the KV bytes every row had (an error when they differ). `config` empty: the one
// configuration besides full in the file.
struct TaskMeasured {
  std::string config;
  double accuracy = 0;
  int n = 0;
  int64_t kv_bytes = 0;
};
Result<TaskMeasured> measured_task_accuracy(const std::string& outcomes_path, const std::string& config);

// plan.predicted's task_accuracy, task_accuracy_low/high, and the provenance naming the files.
void add_task_prediction(const TaskAccuracy& a, const TaskPredictor& p, Plan* plan);

}  // namespace kvp::cli
