// Task accuracy predicted from task traces (docs/METHODS.md, "Task accuracy from traces"). An
// instance's chance of being answered under a configuration is
//   p = s · σ(β₀ + Σ β_k x_k) + (1 − s) · r
// where s is the full cache's score on the instance (recorded in the trace), x_k what the
// configuration keeps of it by the replay (task_trace.h: needle tokens, answer attention), and r
// the rate at which a cut cache answers what the full one missed. The features (and whether they
// enter as themselves or as −log(1 − x + 0.01), what is lost) are chosen among candidates by
// log-loss on held-out instances (5 folds by instance); a configuration's accuracy is the mean of p
// over the instances, with an interval from the binomial spread of that mean plus the
// configurations' own error left over in the folds. Stored as task-calibration.yaml (format
// kvplan-task-calibration, version 1).
#pragma once

#include <span>
#include <string>
#include <vector>

#include "common/status.h"
#include "planner/task_trace.h"

namespace kvp {

// One closed-loop outcome with its replay: configuration `config` on instance `instance`.
struct TaskObservation {
  std::string config, policy, instance, family;
  int length = 0;
  int budget = 0;  // slots per layer and head (configurations at one budget share a memory)
  TaskFeatures features;
  double score = 0;  // measured
};

struct TaskAccuracy {
  double accuracy = 0, low = 0, high = 0;
  int n = 0;
};

struct TaskCandidate {  // a feature set tried, with its held-out log-loss
  std::string name;
  double cv_log_loss = 0;
};

struct TaskCalibration {
  std::string model_fingerprint;
  std::vector<int> features;  // indices of kTaskFeatureNames
  bool lost = false;          // features enter as −log(1 − x + 0.01)
  std::vector<double> coef;   // β₀, then one per feature
  double rescue_rate = 0;     // r
  double model_sd = 0;        // a configuration's error beyond the binomial spread (held-out folds)
  double z = 1.96;            // interval half-width in standard deviations
  // The fit's evidence.
  int n_observations = 0, n_instances = 0, n_configs = 0;
  std::vector<int> lengths;
  std::vector<TaskCandidate> candidates;
  std::string sources;  // the traces and outcomes fitted (provenance)

  std::string feature_label() const;  // e.g. "needle_mass, mass (as what is lost)"
  double instance_probability(const TaskFeatures& f) const;
  // The accuracy of one configuration over `instances` (its replayed features on each).
  TaskAccuracy predict(std::span<const TaskFeatures> instances) const;

  std::string to_yaml() const;
  static Result<TaskCalibration> parse(const std::string& text, const std::string& path);
  static Result<TaskCalibration> load(const std::string& path);
  Status save(const std::string& path) const;
};

// Fits the predictor. Errors when fewer than 10 observations or no instance the full cache answers.
// `held_out`, when given, receives each observation's probability from the fold that left its
// instance out (the chosen feature set).
Result<TaskCalibration> fit_task_calibration(const std::vector<TaskObservation>& obs, const std::string& model_fingerprint,
                                             std::vector<double>* held_out = nullptr);

// How predictions of configurations' accuracy compare with measured ones (the goals of
// docs/REAL-MODEL.md). A configuration is a (config, length) group of observations; `probability`
// holds each observation's predicted probability (in `obs` order).
struct TaskPredictionRow {
  std::string config, policy;
  int length = 0, budget = 0, n = 0;
  double measured = 0;
  TaskAccuracy predicted;
};
struct TaskMemoryRow {  // configurations at one length and budget
  int length = 0, budget = 0, n_configs = 0;
  double spearman = 0;
  bool measured_tied = false;  // every configuration measured the same: no ranking to match
  std::string predicted_best, measured_best;
  double predicted_best_measured = 0, measured_best_accuracy = 0, noise = 0;
  bool best_ok = false;  // the predicted best measured within `noise` of the measured best
};
struct TaskPredictionCheck {
  std::vector<TaskPredictionRow> configs;
  std::vector<TaskMemoryRow> memories;
  double mae = 0, spearman = 0, best_rate = 0, coverage = 0;
  int n_ranked = 0;  // memories with a ranking (not all tied)
};
TaskPredictionCheck check_task_predictions(const TaskCalibration& cal, const std::vector<TaskObservation>& obs,
                                           const std::vector<double>& probability);

}  // namespace kvp
