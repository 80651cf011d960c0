#include "planner/calibration.h"

#include <fmt/ranges.h>

#include <Eigen/Dense>
#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <set>

#include "common/file_util.h"
#include "common/yaml_fields.h"

namespace kvp {
namespace {

constexpr const char* kCalibrationFormat = "kvplan-calibration";
// Measured ΔNLL and 1 − top-1 below this are noise around zero; logs are taken above it.
constexpr double kFloor = 1e-4;
// Pulls log layer weights gently towards their mean: the layers are not all identifiable from a
// few dozen configurations.
constexpr double kWeightRidge = 1e-3;

double log_floor(double x) { return std::log(std::max(x, kFloor)); }

struct Model {
  std::vector<double> log_w;  // θ_l = log w_l
  double beta = 1;
  double top1_log_scale = 0, top1_power = 1;
  std::map<std::string, double> policy_log_offset;  // log of each policy's factor (absent: 1)
};

double score(const Model& m, const std::vector<double>& e) {
  double s = 0;
  for (size_t l = 0; l < e.size(); ++l) s += std::exp(m.log_w[l]) * e[l];
  return s;
}

double log_offset(const Model& m, const std::string& policy) {
  const auto it = m.policy_log_offset.find(policy);
  return it == m.policy_log_offset.end() ? 0.0 : it->second;
}

double predict_nll(const Model& m, const std::vector<double>& e, const std::string& policy = "") {
  const double s = score(m, e);
  return s > 0 ? std::pow(s, m.beta) * std::exp(log_offset(m, policy)) : 0.0;
}

// Each policy's bias, where it has at least two configurations whose replay errs in more than one
// layer: the mean of their log residuals under the layer map. (One-layer probes are what the layer
// weights are fitted to; a policy's configurations over the whole model say how far its replay
// error over- or under-states what it loses closed loop.)
void fit_policy_offsets(Model& m, const std::vector<const CalibrationPoint*>& pts) {
  std::map<std::string, std::pair<double, int>> sums;
  for (const auto* p : pts) {
    const double s = score(m, p->layer_energy);
    const auto erring = std::count_if(p->layer_energy.begin(), p->layer_energy.end(), [](double e) { return e > 0; });
    if (erring < 2 || !(s > 0)) continue;
    auto& [sum, count] = sums[p->policy];
    sum += log_floor(p->delta_nll) - m.beta * std::log(s);
    ++count;
  }
  m.policy_log_offset.clear();
  for (const auto& [policy, sc] : sums) {
    if (sc.second >= 2) m.policy_log_offset[policy] = sc.first / sc.second;
  }
}

double predict_disagreement(const Model& m, double nll) {
  return std::exp(m.top1_log_scale + m.top1_power * std::log(std::max(nll, kFloor)));
}

// Levenberg–Marquardt on r_i = log y_i − β log s_i (plus the ridge rows), then the top-1 line.
Model fit_model(const std::vector<const CalibrationPoint*>& pts) {
  const int L = static_cast<int>(pts.front()->layer_energy.size());
  const int n = static_cast<int>(pts.size());
  Model m;
  double sum_y = 0, sum_e = 0;
  for (const auto* p : pts) {
    sum_y += std::max(p->delta_nll, kFloor);
    for (double e : p->layer_energy) sum_e += e;
  }
  m.log_w.assign(L, std::log(std::max(sum_y, kFloor) / std::max(sum_e, 1e-30)));
  auto residuals = [&](const Model& mm, Eigen::VectorXd& r) {
    r.resize(n + L);
    const double mean = std::accumulate(mm.log_w.begin(), mm.log_w.end(), 0.0) / L;
    for (int i = 0; i < n; ++i) {
      const double s = std::max(score(mm, pts[i]->layer_energy), 1e-300);
      r[i] = log_floor(pts[i]->delta_nll) - mm.beta * std::log(s);
    }
    for (int l = 0; l < L; ++l) r[n + l] = std::sqrt(kWeightRidge) * (mm.log_w[l] - mean);
  };
  Eigen::VectorXd r;
  residuals(m, r);
  double cost = r.squaredNorm(), lambda = 1e-3;
  for (int iter = 0; iter < 200; ++iter) {
    Eigen::MatrixXd J = Eigen::MatrixXd::Zero(n + L, L + 1);
    for (int i = 0; i < n; ++i) {
      const double s = std::max(score(m, pts[i]->layer_energy), 1e-300);
      for (int l = 0; l < L; ++l) J(i, l) = -m.beta * std::exp(m.log_w[l]) * pts[i]->layer_energy[l] / s;
      J(i, L) = -std::log(s);
    }
    for (int l = 0; l < L; ++l) {
      for (int k = 0; k < L; ++k) J(n + l, k) = std::sqrt(kWeightRidge) * ((l == k) - 1.0 / L);
    }
    const Eigen::MatrixXd JtJ = J.transpose() * J;
    const Eigen::VectorXd g = J.transpose() * r;
    bool improved = false;
    for (int tries = 0; tries < 20 && !improved; ++tries) {
      Eigen::MatrixXd A = JtJ;
      A.diagonal() += lambda * (JtJ.diagonal().array() + 1e-12).matrix();
      const Eigen::VectorXd step = A.ldlt().solve(-g);
      Model next = m;
      for (int l = 0; l < L; ++l) next.log_w[l] = std::clamp(m.log_w[l] + step[l], -60.0, 60.0);
      next.beta = std::clamp(m.beta + step[L], 0.05, 5.0);
      Eigen::VectorXd rn;
      residuals(next, rn);
      if (rn.squaredNorm() < cost) {
        improved = true;
        const double gain = cost - rn.squaredNorm();
        m = next, r = rn, cost = rn.squaredNorm();
        lambda = std::max(lambda / 3, 1e-9);
        if (gain < 1e-12 * std::max(cost, 1e-30)) iter = 1 << 20;  // converged
      } else {
        lambda *= 4;
      }
    }
    if (!improved) break;
  }
  fit_policy_offsets(m, pts);
  // log(1 − top1) = log c + γ log ΔNLL_pred, least squares.
  double sx = 0, sy = 0, sxx = 0, sxy = 0;
  for (const auto* p : pts) {
    const double x = log_floor(predict_nll(m, p->layer_energy, p->policy)), y = log_floor(1 - p->top1_agreement);
    sx += x, sy += y, sxx += x * x, sxy += x * y;
  }
  const double var = sxx - sx * sx / n;
  m.top1_power = var > 1e-12 ? (sxy - sx * sy / n) / var : 0.0;
  m.top1_log_scale = (sy - m.top1_power * sx) / n;
  return m;
}

double quantile(std::vector<double> x, double q) {
  std::sort(x.begin(), x.end());
  const double at = q * (x.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(at)), hi = std::min(lo + 1, x.size() - 1);
  return x[lo] + (at - lo) * (x[hi] - x[lo]);
}

std::vector<double> ranks(const std::vector<double>& x) {
  std::vector<size_t> order(x.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return x[a] < x[b]; });
  std::vector<double> r(x.size());
  for (size_t i = 0; i < order.size();) {
    size_t j = i;
    while (j + 1 < order.size() && x[order[j + 1]] == x[order[i]]) ++j;
    for (size_t k = i; k <= j; ++k) r[order[k]] = (i + j) / 2.0 + 1;
    i = j + 1;
  }
  return r;
}

}  // namespace

double spearman(const std::vector<double>& a, const std::vector<double>& b) {
  KVP_CHECK(a.size() == b.size());
  if (a.size() < 2) return 0;
  const std::vector<double> ra = ranks(a), rb = ranks(b);
  const double mean = (a.size() + 1) / 2.0;
  double num = 0, da = 0, db = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (ra[i] - mean) * (rb[i] - mean);
    da += (ra[i] - mean) * (ra[i] - mean);
    db += (rb[i] - mean) * (rb[i] - mean);
  }
  return da > 0 && db > 0 ? num / std::sqrt(da * db) : 0.0;
}

Result<Calibration> fit_calibration(const PlanModel& model, std::vector<CalibrationPoint> points) {
  if (points.empty()) return make_error("calibration: no measured configurations");
  const size_t L = points.front().layer_energy.size();
  for (const auto& p : points) KVP_CHECK(p.layer_energy.size() == L);
  if (points.size() < L + 4) {
    return make_error("calibration: {} measured configurations fit {} layer weights and 3 map parameters poorly; "
                      "give at least {}", points.size(), L, L + 4);
  }
  std::vector<const CalibrationPoint*> all;
  for (const auto& p : points) all.push_back(&p);
  const Model m = fit_model(all);
  Calibration c;
  c.model = model;
  for (double lw : m.log_w) c.layer_weights.push_back(std::exp(lw));
  c.nll_power = m.beta;
  c.top1_scale = std::exp(m.top1_log_scale);
  c.top1_power = m.top1_power;
  c.policy_offsets = m.policy_log_offset;
  c.score_min = INFINITY, c.score_max = 0;
  for (const auto& p : points) {
    const double s = score(m, p.layer_energy);
    c.score_min = std::min(c.score_min, s), c.score_max = std::max(c.score_max, s);
  }
  if (!(c.score_max > 0)) return make_error("calibration: every configuration replays with zero error");

  // Leave one out: intervals and honest error figures.
  std::vector<double> measured, in_sample, loo, nll_resid, top1_resid;
  double nll_abs = 0, top1_abs = 0;
  for (size_t i = 0; i < points.size(); ++i) {
    std::vector<const CalibrationPoint*> rest;
    for (size_t j = 0; j < points.size(); ++j) {
      if (j != i) rest.push_back(&points[j]);
    }
    const Model mi = fit_model(rest);  // the point's policy offset from the others of its policy
    const double y = predict_nll(mi, points[i].layer_energy, points[i].policy);
    const double d = predict_disagreement(mi, y);
    measured.push_back(points[i].delta_nll);
    in_sample.push_back(predict_nll(m, points[i].layer_energy, points[i].policy));
    loo.push_back(y);
    nll_resid.push_back(log_floor(points[i].delta_nll) - log_floor(y));
    top1_resid.push_back(log_floor(1 - points[i].top1_agreement) - log_floor(d));
    nll_abs += std::abs(points[i].delta_nll - y);
    top1_abs += std::abs(points[i].top1_agreement - (1 - d));
  }
  const double tail = (1 - c.coverage) / 2;
  {
    std::vector<size_t> order(points.size());
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return points[a].delta_nll < points[b].delta_nll; });
    std::vector<double> nll_low, top1_low;
    for (size_t k = 0; k < std::max<size_t>(3, order.size() / 4) && k < order.size(); ++k) {
      const size_t i = order[k];
      nll_low.push_back(std::abs(points[i].delta_nll - loo[i]));
      top1_low.push_back(std::abs(std::exp(log_floor(1 - points[i].top1_agreement)) -
                                  std::exp(log_floor(1 - points[i].top1_agreement) - top1_resid[i])));
    }
    c.nll_noise = quantile(nll_low, c.coverage);
    c.top1_noise = quantile(top1_low, c.coverage);
  }
  c.nll_resid_low = quantile(nll_resid, tail), c.nll_resid_high = quantile(nll_resid, 1 - tail);
  c.top1_resid_low = quantile(top1_resid, tail), c.top1_resid_high = quantile(top1_resid, 1 - tail);
  // Leave one policy out: do the layer weights carry over to a policy the fit never saw?
  std::vector<double> lopo(points.size());
  std::set<std::string> policies;
  for (const auto& p : points) policies.insert(p.policy);
  for (const std::string& held : policies) {
    std::vector<const CalibrationPoint*> rest;
    for (const auto& p : points) {
      if (p.policy != held) rest.push_back(&p);
    }
    if (rest.size() < L + 2) continue;
    const Model mp = fit_model(rest);
    for (size_t i = 0; i < points.size(); ++i) {
      if (points[i].policy == held) lopo[i] = predict_nll(mp, points[i].layer_energy);  // no offset: unseen
    }
  }
  const auto [lo, hi] = std::minmax_element(measured.begin(), measured.end());
  c.fit = CalibrationFit{.n_points = static_cast<int>(points.size()),
                         .spearman = spearman(in_sample, measured),
                         .spearman_loo = spearman(loo, measured),
                         .spearman_lopo = policies.size() > 1 ? spearman(lopo, measured) : 0.0,
                         .delta_nll_mae_loo = nll_abs / points.size(),
                         .delta_nll_spread = *hi - *lo,
                         .top1_mae_loo = top1_abs / points.size()};
  c.points_predicted_loo = loo;
  c.points = std::move(points);
  return c;
}

Prediction Calibration::predict(const std::vector<double>& layer_energy, const std::string& policy) const {
  KVP_CHECK(layer_energy.size() == layer_weights.size(), "calibration for {} layers, replay of {}",
            layer_weights.size(), layer_energy.size());
  Prediction p;
  for (size_t l = 0; l < layer_energy.size(); ++l) p.score += layer_weights[l] * layer_energy[l];
  const auto offset = policy_offsets.find(policy);
  p.delta_nll = p.score > 0 ? std::pow(p.score, nll_power) : 0.0;
  if (offset != policy_offsets.end()) p.delta_nll *= std::exp(offset->second);
  p.delta_nll_low = p.delta_nll * std::exp(nll_resid_low) - nll_noise;
  p.delta_nll_high = p.delta_nll * std::exp(nll_resid_high) + nll_noise;
  const double d = top1_scale * std::pow(std::max(p.delta_nll, kFloor), top1_power);
  p.top1_agreement = std::clamp(1 - d, 0.0, 1.0);
  p.top1_low = std::clamp(1 - d * std::exp(top1_resid_high) - top1_noise, 0.0, 1.0);
  p.top1_high = std::clamp(1 - d * std::exp(top1_resid_low) + top1_noise, 0.0, 1.0);
  // The map passes through zero (no replay error, no loss) by construction, so below the smallest
  // calibrated score it interpolates towards that anchor; above the largest (with a little slack)
  // it extrapolates.
  p.in_range = p.score <= score_max * 1.1;
  return p;
}

void add_predictions(const Prediction& p, const std::string& calibration_path, Plan* plan) {
  plan->predicted["calibrated_score"] = p.score;
  plan->predicted["delta_nll"] = p.delta_nll;
  plan->predicted["delta_nll_low"] = p.delta_nll_low;
  plan->predicted["delta_nll_high"] = p.delta_nll_high;
  plan->predicted["top1_agreement"] = p.top1_agreement;
  plan->predicted["top1_agreement_low"] = p.top1_low;
  plan->predicted["top1_agreement_high"] = p.top1_high;
  plan->provenance["calibration"] = calibration_path;
  plan->provenance["calibration_range"] =
      p.in_range ? "inside" : "outside: the replay error exceeds every calibrated configuration's (extrapolated)";
}

std::string Calibration::to_yaml() const {
  YAML::Emitter out;
  out.SetDoublePrecision(8);
  out << YAML::BeginMap;
  out << YAML::Key << "format" << YAML::Value << kCalibrationFormat;
  out << YAML::Key << "version" << YAML::Value << (policy_offsets.empty() ? 1 : 2);
  out << YAML::Key << "model" << YAML::Value;
  emit_plan_model(out, model);
  out << YAML::Key << "trace" << YAML::Value << trace;
  out << YAML::Key << "map" << YAML::Value << YAML::BeginMap;
  out << YAML::Comment("delta_nll = (sum_l layer_weights[l] * resid_energy[l]) ^ nll_power; "
                       "1 - top1 = top1_scale * delta_nll ^ top1_power");
  out << YAML::Key << "layer_weights" << YAML::Value << YAML::Flow << layer_weights;
  out << YAML::Key << "nll_power" << YAML::Value << nll_power;
  out << YAML::Key << "top1_scale" << YAML::Value << top1_scale;
  out << YAML::Key << "top1_power" << YAML::Value << top1_power;
  if (!policy_offsets.empty()) {
    out << YAML::Key << "policy_offsets" << YAML::Comment("delta_nll times exp(offset) for the policy's configurations");
    out << YAML::Value << YAML::BeginMap;
    for (const auto& [policy, offset] : policy_offsets) out << YAML::Key << policy << YAML::Value << offset;
    out << YAML::EndMap;
  }
  out << YAML::EndMap;
  out << YAML::Key << "intervals" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "coverage" << YAML::Value << coverage;
  out << YAML::Key << "delta_nll_log_residual" << YAML::Value << YAML::Flow
      << std::vector<double>{nll_resid_low, nll_resid_high};
  out << YAML::Key << "top1_log_residual" << YAML::Value << YAML::Flow
      << std::vector<double>{top1_resid_low, top1_resid_high};
  out << YAML::Key << "delta_nll_noise" << YAML::Value << nll_noise;
  out << YAML::Key << "top1_noise" << YAML::Value << top1_noise;
  out << YAML::EndMap;
  out << YAML::Key << "range" << YAML::Value << YAML::Flow << std::vector<double>{score_min, score_max};
  out << YAML::Key << "fit" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "n_points" << YAML::Value << fit.n_points;
  out << YAML::Key << "spearman" << YAML::Value << fit.spearman;
  out << YAML::Key << "spearman_leave_one_out" << YAML::Value << fit.spearman_loo;
  out << YAML::Key << "spearman_leave_policy_out" << YAML::Value << fit.spearman_lopo;
  out << YAML::Key << "delta_nll_mae_leave_one_out" << YAML::Value << fit.delta_nll_mae_loo;
  out << YAML::Key << "delta_nll_spread" << YAML::Value << fit.delta_nll_spread;
  out << YAML::Key << "top1_mae_leave_one_out" << YAML::Value << fit.top1_mae_loo;
  out << YAML::EndMap;
  out << YAML::Key << "points" << YAML::Value << YAML::BeginSeq;
  for (size_t i = 0; i < points.size(); ++i) {
    const CalibrationPoint& p = points[i];
    out << YAML::Flow << YAML::BeginMap;
    out << YAML::Key << "label" << YAML::Value << p.label;
    out << YAML::Key << "policy" << YAML::Value << p.policy;
    out << YAML::Key << "kv_bytes" << YAML::Value << p.kv_bytes_per_sequence;
    out << YAML::Key << "delta_nll" << YAML::Value << p.delta_nll;
    out << YAML::Key << "top1" << YAML::Value << p.top1_agreement;
    out << YAML::Key << "predicted_loo" << YAML::Value << (i < points_predicted_loo.size() ? points_predicted_loo[i] : 0.0);
    out << YAML::Key << "resid_energy" << YAML::Value << YAML::Flow << p.layer_energy;
    out << YAML::EndMap;
  }
  out << YAML::EndSeq;
  out << YAML::EndMap;
  return std::string(out.c_str()) + "\n";
}

namespace {

Result<std::vector<double>> number_list(const YamlFields& f, const std::string& key, size_t expected) {
  KVP_ASSIGN_OR_RETURN(YAML::Node list, f.child(key));
  if (!list.IsSequence() || (expected > 0 && list.size() != expected)) {
    return f.error(key, expected > 0 ? fmt::format("expected a list of {} numbers", expected) : "expected a list");
  }
  std::vector<double> out;
  for (const auto& e : list) {
    double v;
    if (!YAML::convert<double>::decode(e, v) || !std::isfinite(v)) return f.error(key, "expected finite numbers");
    out.push_back(v);
  }
  return out;
}

}  // namespace

Result<Calibration> Calibration::parse(const std::string& text, const std::string& path) {
  KVP_ASSIGN_OR_RETURN(YAML::Node root, parse_yaml_map(text, path));
  const YamlFields top(root, path, "");
  KVP_RETURN_IF_ERROR(top.only({"format", "version", "model", "trace", "map", "intervals", "range", "fit", "points"}));
  KVP_ASSIGN_OR_RETURN(std::string format, top.str("format"));
  if (format != kCalibrationFormat) {
    return top.error("format", fmt::format("expected {}, found '{}'", kCalibrationFormat, format));
  }
  KVP_ASSIGN_OR_RETURN(int version, top.integer("version", 0, 1 << 20));
  if (version < 1 || version > 2) {
    return top.error("version", fmt::format("this kvplan reads versions 1 and 2, found {}", version));
  }
  Calibration c;
  KVP_ASSIGN_OR_RETURN(YAML::Node model, top.child("model"));
  KVP_ASSIGN_OR_RETURN(c.model, parse_plan_model(model, path));
  KVP_ASSIGN_OR_RETURN(c.trace, top.str("trace"));
  KVP_ASSIGN_OR_RETURN(YAML::Node map, top.child("map"));
  const YamlFields mf(map, path, "map.");
  std::set<std::string> map_known = {"layer_weights", "nll_power", "top1_scale", "top1_power"};
  if (version >= 2) map_known.insert("policy_offsets");
  KVP_RETURN_IF_ERROR(mf.only(map_known));
  KVP_ASSIGN_OR_RETURN(c.layer_weights, number_list(mf, "layer_weights", c.model.n_layers));
  for (double w : c.layer_weights) {
    if (w < 0) return mf.error("layer_weights", "expected weights >= 0");
  }
  KVP_ASSIGN_OR_RETURN(c.nll_power, mf.number("nll_power"));
  KVP_ASSIGN_OR_RETURN(c.top1_scale, mf.number("top1_scale"));
  KVP_ASSIGN_OR_RETURN(c.top1_power, mf.number("top1_power"));
  if (!(c.nll_power > 0)) return mf.error("nll_power", "expected a number > 0");
  if (!(c.top1_scale >= 0)) return mf.error("top1_scale", "expected a number >= 0");
  if (mf.has("policy_offsets")) {
    const YAML::Node offsets = map["policy_offsets"];
    if (!offsets.IsMap()) return mf.error("policy_offsets", "expected a map of policy to log factor");
    for (const auto& kv : offsets) {
      double v = 0;
      if (!kv.second.IsScalar() || !YAML::convert<double>::decode(kv.second, v) || !std::isfinite(v)) {
        return mf.error("policy_offsets." + kv.first.as<std::string>(), "expected a finite number");
      }
      c.policy_offsets[kv.first.as<std::string>()] = v;
    }
  }
  KVP_ASSIGN_OR_RETURN(YAML::Node intervals, top.child("intervals"));
  const YamlFields inf(intervals, path, "intervals.");
  KVP_RETURN_IF_ERROR(inf.only({"coverage", "delta_nll_log_residual", "top1_log_residual", "delta_nll_noise",
                                 "top1_noise"}));
  KVP_ASSIGN_OR_RETURN(c.nll_noise, inf.number("delta_nll_noise"));
  KVP_ASSIGN_OR_RETURN(c.top1_noise, inf.number("top1_noise"));
  KVP_ASSIGN_OR_RETURN(c.coverage, inf.number("coverage"));
  KVP_ASSIGN_OR_RETURN(auto nr, number_list(inf, "delta_nll_log_residual", 2));
  KVP_ASSIGN_OR_RETURN(auto tr, number_list(inf, "top1_log_residual", 2));
  c.nll_resid_low = nr[0], c.nll_resid_high = nr[1], c.top1_resid_low = tr[0], c.top1_resid_high = tr[1];
  KVP_ASSIGN_OR_RETURN(auto range, number_list(top, "range", 2));
  c.score_min = range[0], c.score_max = range[1];
  KVP_ASSIGN_OR_RETURN(YAML::Node fit, top.child("fit"));
  const YamlFields ff(fit, path, "fit.");
  KVP_RETURN_IF_ERROR(ff.only({"n_points", "spearman", "spearman_leave_one_out", "spearman_leave_policy_out",
                               "delta_nll_mae_leave_one_out", "delta_nll_spread", "top1_mae_leave_one_out"}));
  KVP_ASSIGN_OR_RETURN(c.fit.n_points, ff.integer("n_points", 0, 1 << 30));
  KVP_ASSIGN_OR_RETURN(c.fit.spearman, ff.number("spearman"));
  KVP_ASSIGN_OR_RETURN(c.fit.spearman_loo, ff.number("spearman_leave_one_out"));
  KVP_ASSIGN_OR_RETURN(c.fit.spearman_lopo, ff.number("spearman_leave_policy_out"));
  KVP_ASSIGN_OR_RETURN(c.fit.delta_nll_mae_loo, ff.number("delta_nll_mae_leave_one_out"));
  KVP_ASSIGN_OR_RETURN(c.fit.delta_nll_spread, ff.number("delta_nll_spread"));
  KVP_ASSIGN_OR_RETURN(c.fit.top1_mae_loo, ff.number("top1_mae_leave_one_out"));
  KVP_ASSIGN_OR_RETURN(YAML::Node points, top.child("points"));
  if (!points.IsSequence()) return top.error("points", "expected a list");
  for (size_t i = 0; i < points.size(); ++i) {
    const YAML::Node point = points[i];  // YamlFields keeps a reference
    const YamlFields pf(point, path, fmt::format("points[{}].", i));
    KVP_RETURN_IF_ERROR(pf.only({"label", "policy", "kv_bytes", "delta_nll", "top1", "predicted_loo", "resid_energy"}));
    CalibrationPoint p;
    KVP_ASSIGN_OR_RETURN(p.label, pf.str("label"));
    KVP_ASSIGN_OR_RETURN(p.policy, pf.str("policy"));
    KVP_ASSIGN_OR_RETURN(p.kv_bytes_per_sequence, pf.integer64("kv_bytes", 0, INT64_MAX));
    KVP_ASSIGN_OR_RETURN(p.delta_nll, pf.number("delta_nll"));
    KVP_ASSIGN_OR_RETURN(p.top1_agreement, pf.number("top1"));
    KVP_ASSIGN_OR_RETURN(double loo, pf.number("predicted_loo"));
    KVP_ASSIGN_OR_RETURN(p.layer_energy, number_list(pf, "resid_energy", c.model.n_layers));
    c.points.push_back(std::move(p));
    c.points_predicted_loo.push_back(loo);
  }
  return c;
}

Result<Calibration> Calibration::load(const std::string& path) {
  KVP_ASSIGN_OR_RETURN(std::string text, read_file_text(path));
  return parse(text, path);
}

Status Calibration::save(const std::string& path) const { return write_file_atomic(path, to_yaml()); }

Result<PolicyParams> measured_params(const Measured& m, const std::string& path) {
  PolicyParams p;  // the detail string carries every setting besides sinks and recent
  p.sinks = m.sinks;
  p.recent = m.recent;
  std::istringstream detail(m.policy_detail);
  for (std::string item; detail >> item;) {
    const size_t eq = item.find('=');
    const std::string key = item.substr(0, eq), value = eq == std::string::npos ? "" : item.substr(eq + 1);
    try {
      if (key == "base") {
        KVP_ASSIGN_OR_RETURN(p.vatp_base, parse_vatp_base(value));
      } else if (key == "seed") {
        p.seed = std::stoull(value);
      } else if (key == "window") {
        p.snap_window = std::stoi(value);
      } else if (key == "kernel") {
        p.snap_kernel = std::stoi(value);
      } else if (key == "crush_base") {
        p.crush_base = value;
      } else if (key == "ratio") {
        p.crush_ratio = std::stod(value);
      } else if (key == "anchor") {
        KVP_ASSIGN_OR_RETURN(p.crush_anchor, parse_crush_anchor(value));
      } else if (key == "period") {
        p.crush_period = std::stoi(value);
      } else if (key == "delta_layers") {
        p.delta.layers = value;
      } else if (key == "delta_pages") {
        p.delta.pages = std::stoi(value);
      } else if (key == "delta_page_size") {
        p.delta.page_size = std::stoi(value);
      } else if (key == "delta_last") {
        p.delta.last = std::stoi(value);
      } else {
        return make_error("{}: config.detail: unknown setting '{}'", path, item);
      }
    } catch (const std::exception&) {
      return make_error("{}: config.detail: '{}' is not a number", path, item);
    }
  }
  return p;
}

std::string calibration_policy_key(const std::string& policy, const PolicyParams& params,
                                   const PlanCompression& compression) {
  const bool vatp = policy == "vatp" || (policy == "kvcrush" && params.crush_base == "vatp");
  return policy + (vatp && params.vatp_base == VatpBase::kMean ? "_mean" : "") + compression.label() +
         (params.delta.on() ? "+delta" : "");
}

std::string policy_detail(const std::string& policy, const PolicyParams& p) {
  std::string out;
  const bool crush = policy == "kvcrush";
  const std::string& scored = crush ? p.crush_base : policy;
  if (crush) {
    out = fmt::format("crush_base={} ratio={} anchor={} period={}", p.crush_base, p.crush_ratio,
                      crush_anchor_name(p.crush_anchor), p.crush_period);
  }
  auto add = [&](const std::string& item) { out += (out.empty() ? "" : " ") + item; };
  if (scored == "vatp") add(fmt::format("base={}", vatp_base_name(p.vatp_base)));
  if (scored == "random" || (crush && p.crush_anchor == CrushAnchor::kRandom)) add(fmt::format("seed={}", p.seed));
  if (scored == "snapkv") add(fmt::format("window={} kernel={}", p.snap_window, p.snap_kernel));
  if (p.delta.on()) add(delta_detail(p.delta));
  return out;
}

}  // namespace kvp
