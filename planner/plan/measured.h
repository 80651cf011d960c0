// measured.yaml: what `kvplan eval` measured for one configuration, next to what its plan
// predicted. Read back by calibration and `kvplan check`.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "common/status.h"
#include "planner/plan/plan.h"

namespace kvp {

struct Measured {
  std::string model_fingerprint;
  // The configuration.
  std::string policy;
  int sinks = 0;
  int recent = 0;
  std::string policy_detail;                  // e.g. "base=h2o"
  std::vector<std::vector<int32_t>> budgets;  // [n_layers][n_kv_heads]
  PlanCompression compression;                // ThinK and Mustafar on the kept tokens (version 2)
  std::string kv_dtype;
  std::string plan_source;                    // plan file, or "flags"
  // The data.
  std::string corpus;
  int n_sequences = 0;
  int prompt_len = 0;
  int64_t n_predicted_tokens = 0;
  // Metrics (means over predicted tokens unless stated).
  double delta_nll = 0;         // nats/token, pruned minus full
  double nll_full = 0;
  double nll_pruned = 0;
  double top1_agreement = 0;    // fraction of tokens whose argmax matches the full cache's
  double kl = 0;                // KL(full || pruned), nats/token
  double greedy_agreement_tokens = 0;    // mean tokens generated before the first divergence
  double greedy_agreement_fraction = 0;  // the same over the tokens that could agree
  int64_t kv_bytes_per_sequence = 0;            // allocated
  int64_t predicted_kv_bytes_per_sequence = 0;  // from the plan
  std::map<std::string, double> predicted;      // the plan's accuracy predictions, if any
  double tokens_per_s = 0;      // pruned teacher-forced decode
  // Keys attended per layer, KV head and teacher-forced decode step, the new token included (the
  // budget for token policies; DELTA's sparse layers attend fewer). 0: not counted (older files).
  double attended_per_head_step = 0;
  std::string backend;

  std::string to_yaml() const;
  static Result<Measured> parse(const std::string& text, const std::string& path);
  static Result<Measured> load(const std::string& path);
  Status save(const std::string& path) const;
};

}  // namespace kvp
