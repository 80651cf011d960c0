// Calibration (docs/ARCHITECTURE.md): from open-loop replay errors to the accuracy a configuration measures
// closed loop. A configuration's score is s = Σ_l w_l E_l, E_l the residual-stream energy its
// replay injects at layer l and w_l >= 0 fitted layer weights; then
//   ΔNLL = s^β                        (monotone in s; the scale lives in the weights)
//   1 − top-1 agreement = c · ΔNLL^γ  (monotone in the predicted ΔNLL)
// fitted in log space over measured configurations, with intervals from leave-one-out residuals
// and the calibrated range of s. Stored as calib.yaml (format kvplan-calibration, version 1).
#pragma once

#include <map>
#include <string>
#include <vector>

#include "common/status.h"
#include "planner/plan/measured.h"
#include "planner/plan/plan.h"

namespace kvp {

// One measured configuration and what its replay injected per layer.
struct CalibrationPoint {
  std::string label;                // e.g. "vatp uniform 64"
  std::string policy;
  int64_t kv_bytes_per_sequence = 0;
  std::vector<double> layer_energy;  // E_l
  double delta_nll = 0;              // measured
  double top1_agreement = 0;         // measured
};

struct Prediction {
  double score = 0;  // s
  double delta_nll = 0, delta_nll_low = 0, delta_nll_high = 0;
  double top1_agreement = 0, top1_low = 0, top1_high = 0;
  bool in_range = true;  // s no larger than the calibration's measured scores (the map is anchored at 0)
};

struct CalibrationFit {
  int n_points = 0;
  double spearman = 0;           // predicted (in-sample) against measured ΔNLL
  double spearman_loo = 0;       // each point predicted by a fit without it
  double spearman_lopo = 0;      // each point predicted by a fit without its policy
  double delta_nll_mae_loo = 0;  // nats/token
  double delta_nll_spread = 0;   // max − min measured ΔNLL
  double top1_mae_loo = 0;
};

struct Calibration {
  PlanModel model;
  std::string trace;                 // provenance
  std::vector<double> layer_weights;  // w_l
  double nll_power = 1;               // β
  double top1_scale = 1, top1_power = 1;  // c, γ
  // Each policy's bias (calibration_policy_key → log factor): its configurations whose replay errs
  // in more than one layer measure exp(offset) times what the layer map predicts, on average. A
  // policy without two such configurations has none (factor 1); one-layer probes do not count.
  std::map<std::string, double> policy_offsets;
  double coverage = 0.9;              // of the intervals
  double nll_resid_low = 0, nll_resid_high = 0;    // quantiles of log(measured / predicted), leave-one-out
  double top1_resid_low = 0, top1_resid_high = 0;  // the same for 1 − top-1
  // Additive widening for measurement noise near zero, where ratios mean little: the coverage
  // quantile of |measured − predicted| (leave-one-out) over the quarter of points measured lowest.
  double nll_noise = 0, top1_noise = 0;
  double score_min = 0, score_max = 0;
  CalibrationFit fit;
  std::vector<CalibrationPoint> points;
  std::vector<double> points_predicted_loo;  // ΔNLL of each point from the fit without it

  // The prediction for a configuration of `policy` (calibration_policy_key; "" or one the
  // calibration has no offset for: the layer map alone).
  Prediction predict(const std::vector<double>& layer_energy, const std::string& policy = "") const;

  std::string to_yaml() const;
  static Result<Calibration> parse(const std::string& text, const std::string& path);
  static Result<Calibration> load(const std::string& path);
  Status save(const std::string& path) const;
};

// Fits a calibration. REQUIRES: points share one number of layers. Errors when fewer points than
// parameters + 2, or when no point has a positive score.
Result<Calibration> fit_calibration(const PlanModel& model, std::vector<CalibrationPoint> points);

// Writes a prediction into plan.predicted (delta_nll, delta_nll_low/high, top1_agreement,
// top1_agreement_low/high, calibrated_score) and notes the calibration and whether the plan lies
// inside its calibrated range in the provenance.
void add_predictions(const Prediction& p, const std::string& calibration_path, Plan* plan);

// The policy parameters a measured configuration ran with (sinks, recent and its detail string).
Result<PolicyParams> measured_params(const Measured& m, const std::string& path);
// The detail string measured_params reads back: every setting of `policy` besides sinks and recent
// ("base=h2o", "seed=3", kvcrush's "crush_base=vatp ratio=0.25 anchor=mean period=8 base=h2o").
std::string policy_detail(const std::string& policy, const PolicyParams& params);

// The name a configuration's policy goes by in a calibration (points, policy_offsets): the policy,
// "_mean" for VATP (or KVCrush over VATP) with the mean base, ThinK/Mustafar's label and "+delta"
// under DELTA's roles: "vatp", "vatp_mean", "h2o+think0.4", "full+delta".
std::string calibration_policy_key(const std::string& policy, const PolicyParams& params,
                                   const PlanCompression& compression);

// Spearman rank correlation (average ranks for ties); 0 when either side is constant.
double spearman(const std::vector<double>& a, const std::vector<double>& b);

}  // namespace kvp
