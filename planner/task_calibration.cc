#include "planner/task_calibration.h"

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <set>

#include <Eigen/Dense>

#include "common/file_util.h"
#include "common/yaml_fields.h"
#include "planner/calibration.h"

namespace kvp {

namespace {

constexpr const char* kFormat = "kvplan-task-calibration";
constexpr int kVersion = 1;
constexpr int kFolds = 5;
constexpr double kRidge = 0.1;     // on the feature coefficients, not the intercept
constexpr double kLostFloor = 0.01;

double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

uint64_t fnv1a(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}

struct Model {
  std::vector<int> features;
  bool lost = false;
  std::vector<double> coef;
  double rescue = 0;
};

double transformed(const Model& m, const TaskFeatures& f, int k) {
  const double x = std::clamp(task_feature(f, m.features[k]), 0.0, 1.0);
  return m.lost ? -std::log(1.0 - x + kLostFloor) : x;
}

double probability(const Model& m, const TaskFeatures& f) {
  double z = m.coef[0];
  for (size_t k = 0; k < m.features.size(); ++k) z += m.coef[k + 1] * transformed(m, f, static_cast<int>(k));
  const double s = std::clamp(f.full_score, 0.0, 1.0);
  return s * sigmoid(z) + (1 - s) * m.rescue;
}

// Weighted logistic regression on soft labels (Newton's method, ridge on the slopes): rows of an
// instance the full cache answers (weight s, target min(1, score / s)); r from the rows of those it
// does not.
Model fit_model(const std::vector<TaskObservation>& obs, const std::vector<size_t>& rows, std::vector<int> features,
                bool lost) {
  Model m{.features = std::move(features), .lost = lost};
  const int k = static_cast<int>(m.features.size()) + 1;
  m.coef.assign(k, 0.0);
  double rescued = 0, missed = 0;
  std::vector<size_t> fit_rows;
  for (size_t r : rows) {
    const double s = std::clamp(obs[r].features.full_score, 0.0, 1.0);
    if (s > 0) fit_rows.push_back(r);
    rescued += (1 - s) * obs[r].score, missed += 1 - s;
  }
  m.rescue = rescued / (missed + 1);
  // At most three coefficients: fixed-size arrays, the unused ones held at zero.
  KVP_CHECK(k <= 3, "at most two features");
  Eigen::Vector3d beta = Eigen::Vector3d::Zero();
  for (int iter = 0; iter < 100; ++iter) {
    Eigen::Matrix3d hess = Eigen::Matrix3d::Zero();
    Eigen::Vector3d grad = Eigen::Vector3d::Zero();
    for (size_t r : fit_rows) {
      const TaskObservation& o = obs[r];
      const double s = std::clamp(o.features.full_score, 0.0, 1.0);
      const double t = std::min(1.0, o.score / s);
      Eigen::Vector3d x = Eigen::Vector3d::Zero();
      x[0] = 1;
      for (int j = 1; j < k; ++j) x[j] = transformed(m, o.features, j - 1);
      const double p = sigmoid(x.dot(beta));
      grad += s * (p - t) * x;
      hess += s * std::max(p * (1 - p), 1e-9) * x * x.transpose();
    }
    for (int j = 1; j < 3; ++j) grad[j] += kRidge * beta[j], hess(j, j) += kRidge;
    hess(0, 0) += 1e-6;
    const Eigen::Vector3d step = hess.ldlt().solve(grad);
    beta -= step;
    if (step.norm() < 1e-9) break;
  }
  for (int j = 0; j < k; ++j) m.coef[j] = beta[j];
  return m;
}

double log_loss(double y, double p) {
  p = std::clamp(p, 1e-6, 1 - 1e-6);
  return -(y * std::log(p) + (1 - y) * std::log(1 - p));
}

std::string feature_set_label(const std::vector<int>& features, bool lost) {
  std::string s;
  for (int f : features) s += (s.empty() ? "" : ", ") + std::string(kTaskFeatureNames[f]);
  return s + (lost ? " (as what is lost)" : "");
}

// Held-out probabilities of `m`'s feature set: each fold's rows from a fit without them.
std::vector<double> cross_validate(const std::vector<TaskObservation>& obs, const std::vector<int>& features, bool lost) {
  std::vector<double> out(obs.size());
  for (int fold = 0; fold < kFolds; ++fold) {
    std::vector<size_t> train, test;
    for (size_t r = 0; r < obs.size(); ++r) {
      const bool held = fnv1a(obs[r].instance + "@" + std::to_string(obs[r].length)) % kFolds == uint64_t(fold);
      (held ? test : train).push_back(r);
    }
    if (test.empty()) continue;
    const Model m = fit_model(obs, train, features, lost);
    for (size_t r : test) out[r] = probability(m, obs[r].features);
  }
  return out;
}

// (config, length) groups of observations, the full cache's aside.
std::map<std::pair<std::string, int>, std::vector<size_t>> config_groups(const std::vector<TaskObservation>& obs) {
  std::map<std::pair<std::string, int>, std::vector<size_t>> groups;
  for (size_t r = 0; r < obs.size(); ++r) {
    if (obs[r].policy != "full") groups[{obs[r].config, obs[r].length}].push_back(r);
  }
  return groups;
}

double binomial_variance(std::span<const double> p) {
  double v = 0;
  for (double x : p) v += x * (1 - x);
  return p.empty() ? 0 : v / (double(p.size()) * double(p.size()));
}

TaskAccuracy interval(std::span<const double> p, double model_sd, double z) {
  TaskAccuracy a;
  a.n = static_cast<int>(p.size());
  if (p.empty()) return a;
  a.accuracy = std::accumulate(p.begin(), p.end(), 0.0) / double(p.size());
  const double sd = std::sqrt(binomial_variance(p) + model_sd * model_sd);
  a.low = std::max(0.0, a.accuracy - z * sd), a.high = std::min(1.0, a.accuracy + z * sd);
  return a;
}

}  // namespace

std::string TaskCalibration::feature_label() const { return feature_set_label(features, lost); }

double TaskCalibration::instance_probability(const TaskFeatures& f) const {
  return probability(Model{.features = features, .lost = lost, .coef = coef, .rescue = rescue_rate}, f);
}

TaskAccuracy TaskCalibration::predict(std::span<const TaskFeatures> instances) const {
  std::vector<double> p;
  for (const TaskFeatures& f : instances) p.push_back(instance_probability(f));
  return interval(p, model_sd, z);
}

Result<TaskCalibration> fit_task_calibration(const std::vector<TaskObservation>& obs, const std::string& model_fingerprint,
                                             std::vector<double>* held_out) {
  if (obs.size() < 10) return make_error("task calibration: {} observations, at least 10 needed", obs.size());
  if (std::none_of(obs.begin(), obs.end(), [](const TaskObservation& o) { return o.features.full_score > 0; })) {
    return make_error("task calibration: the full cache answers no instance: nothing to learn what cutting costs");
  }
  TaskCalibration cal;
  cal.model_fingerprint = model_fingerprint;
  std::vector<size_t> all(obs.size());
  std::iota(all.begin(), all.end(), 0);
  const std::vector<std::vector<int>> sets = {{0}, {1}, {2}, {3}, {0, 1}, {2, 1}, {0, 2}, {3, 1}, {3, 2}};
  double best = INFINITY;
  std::vector<double> best_held;
  for (bool lost : {false, true}) {
    for (const std::vector<int>& set : sets) {
      const std::vector<double> p = cross_validate(obs, set, lost);
      double loss = 0;
      for (size_t r = 0; r < obs.size(); ++r) loss += log_loss(std::clamp(obs[r].score, 0.0, 1.0), p[r]);
      loss /= double(obs.size());
      cal.candidates.push_back(TaskCandidate{.name = feature_set_label(set, lost), .cv_log_loss = loss});
      if (loss < best - 1e-12) best = loss, cal.features = set, cal.lost = lost, best_held = p;
    }
  }
  const Model m = fit_model(obs, all, cal.features, cal.lost);
  cal.coef = m.coef, cal.rescue_rate = m.rescue;
  // The configurations' own error: what the held-out folds miss beyond the binomial spread.
  double sq = 0, binom = 0;
  int groups = 0;
  for (const auto& [key, rows] : config_groups(obs)) {
    std::vector<double> p;
    double measured = 0;
    for (size_t r : rows) p.push_back(best_held[r]), measured += obs[r].score;
    measured /= double(rows.size());
    const double predicted = std::accumulate(p.begin(), p.end(), 0.0) / double(p.size());
    sq += (predicted - measured) * (predicted - measured), binom += binomial_variance(p), ++groups;
  }
  cal.model_sd = groups > 0 ? std::sqrt(std::max(0.0, (sq - binom) / groups)) : 0.0;
  std::set<std::string> instances, configs;
  std::set<int> lengths;
  for (const TaskObservation& o : obs) {
    instances.insert(o.instance + "@" + std::to_string(o.length)), configs.insert(o.config), lengths.insert(o.length);
  }
  cal.n_observations = static_cast<int>(obs.size());
  cal.n_instances = static_cast<int>(instances.size());
  cal.n_configs = static_cast<int>(configs.size());
  cal.lengths.assign(lengths.begin(), lengths.end());
  if (held_out) *held_out = best_held;
  return cal;
}

TaskPredictionCheck check_task_predictions(const TaskCalibration& cal, const std::vector<TaskObservation>& obs,
                                           const std::vector<double>& probability) {
  KVP_CHECK(probability.size() == obs.size());
  TaskPredictionCheck c;
  std::map<std::pair<int, int>, std::vector<size_t>> memories;  // (length, budget) → rows of c.configs
  std::vector<std::vector<size_t>> members;
  double abs_err = 0;
  int covered = 0;
  for (const auto& [key, rows] : config_groups(obs)) {
    TaskPredictionRow row{.config = key.first, .policy = obs[rows[0]].policy, .length = key.second,
                          .budget = obs[rows[0]].budget, .n = static_cast<int>(rows.size())};
    std::vector<double> p;
    for (size_t r : rows) p.push_back(probability[r]), row.measured += obs[r].score;
    row.measured /= double(rows.size());
    row.predicted = interval(p, cal.model_sd, cal.z);
    abs_err += std::abs(row.predicted.accuracy - row.measured);
    covered += row.measured >= row.predicted.low - 1e-12 && row.measured <= row.predicted.high + 1e-12;
    memories[{row.length, row.budget}].push_back(c.configs.size());
    members.push_back(rows);
    c.configs.push_back(row);
  }
  if (c.configs.empty()) return c;
  c.mae = abs_err / double(c.configs.size());
  c.coverage = double(covered) / double(c.configs.size());
  int best_ok = 0;
  double spearman_sum = 0;
  for (const auto& [key, idx] : memories) {
    TaskMemoryRow m{.length = key.first, .budget = key.second, .n_configs = static_cast<int>(idx.size())};
    std::vector<double> pred, meas;
    for (size_t i : idx) pred.push_back(c.configs[i].predicted.accuracy), meas.push_back(c.configs[i].measured);
    m.measured_tied = std::all_of(meas.begin(), meas.end(), [&](double v) { return std::abs(v - meas[0]) < 1e-12; });
    m.spearman = spearman(pred, meas);
    const size_t pb = idx[std::max_element(pred.begin(), pred.end()) - pred.begin()];
    const size_t mb = idx[std::max_element(meas.begin(), meas.end()) - meas.begin()];
    m.predicted_best = c.configs[pb].config, m.measured_best = c.configs[mb].config;
    m.predicted_best_measured = c.configs[pb].measured, m.measured_best_accuracy = c.configs[mb].measured;
    // Resampling noise of the gap: the paired per-instance differences' standard error, × 1.96.
    std::map<std::string, double> chosen;
    for (size_t r : members[pb]) chosen[obs[r].instance] = obs[r].score;
    std::vector<double> d;
    for (size_t r : members[mb]) {
      if (auto it = chosen.find(obs[r].instance); it != chosen.end()) d.push_back(obs[r].score - it->second);
    }
    if (d.size() > 1) {
      const double mean = std::accumulate(d.begin(), d.end(), 0.0) / double(d.size());
      double var = 0;
      for (double x : d) var += (x - mean) * (x - mean);
      m.noise = 1.96 * std::sqrt(var / double(d.size() - 1) / double(d.size()));
    }
    m.best_ok = m.measured_best_accuracy - m.predicted_best_measured <= m.noise + 1e-12;
    best_ok += m.best_ok;
    if (!m.measured_tied && m.n_configs > 1) spearman_sum += m.spearman, ++c.n_ranked;
    c.memories.push_back(m);
  }
  c.best_rate = double(best_ok) / double(c.memories.size());
  c.spearman = c.n_ranked > 0 ? spearman_sum / c.n_ranked : 0;
  return c;
}

std::string TaskCalibration::to_yaml() const {
  YAML::Emitter out;
  out << YAML::BeginMap;
  out << YAML::Key << "format" << YAML::Value << kFormat;
  out << YAML::Key << "version" << YAML::Value << kVersion;
  out << YAML::Key << "model_fingerprint" << YAML::Value << model_fingerprint;
  out << YAML::Key << "sources" << YAML::Value << sources;
  out << YAML::Key << "model" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "features" << YAML::Value << YAML::Flow << YAML::BeginSeq;
  for (int f : features) out << kTaskFeatureNames[f];
  out << YAML::EndSeq;
  out << YAML::Key << "lost" << YAML::Value << lost;
  out << YAML::Key << "coef" << YAML::Value << YAML::Flow << YAML::BeginSeq;
  for (double c : coef) out << fmt::format("{:.17g}", c);
  out << YAML::EndSeq;
  out << YAML::Key << "rescue_rate" << YAML::Value << fmt::format("{:.17g}", rescue_rate);
  out << YAML::Key << "model_sd" << YAML::Value << fmt::format("{:.17g}", model_sd);
  out << YAML::Key << "z" << YAML::Value << fmt::format("{:.17g}", z);
  out << YAML::EndMap;
  out << YAML::Key << "fit" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "observations" << YAML::Value << n_observations;
  out << YAML::Key << "instances" << YAML::Value << n_instances;
  out << YAML::Key << "configs" << YAML::Value << n_configs;
  out << YAML::Key << "lengths" << YAML::Value << YAML::Flow << lengths;
  out << YAML::Key << "candidates" << YAML::Value << YAML::BeginSeq;
  for (const TaskCandidate& c : candidates) {
    out << YAML::Flow << YAML::BeginMap << YAML::Key << "features" << YAML::Value << c.name << YAML::Key
        << "cv_log_loss" << YAML::Value << fmt::format("{:.6f}", c.cv_log_loss) << YAML::EndMap;
  }
  out << YAML::EndSeq << YAML::EndMap << YAML::EndMap;
  return std::string(out.c_str()) + "\n";
}

Result<TaskCalibration> TaskCalibration::parse(const std::string& text, const std::string& path) {
  KVP_ASSIGN_OR_RETURN(YAML::Node root, parse_yaml_map(text, path));
  const YamlFields top(root, path, "");
  KVP_RETURN_IF_ERROR(top.only({"format", "version", "model_fingerprint", "sources", "model", "fit"}));
  KVP_ASSIGN_OR_RETURN(std::string format, top.str("format"));
  if (format != kFormat) return top.error("format", fmt::format("expected {}, found '{}'", kFormat, format));
  KVP_ASSIGN_OR_RETURN(int version, top.integer("version", 0, 1 << 20));
  if (version != kVersion) return top.error("version", fmt::format("this kvplan reads version {}, found {}", kVersion, version));
  TaskCalibration c;
  KVP_ASSIGN_OR_RETURN(c.model_fingerprint, top.str("model_fingerprint"));
  KVP_ASSIGN_OR_RETURN(c.sources, top.str("sources"));
  KVP_ASSIGN_OR_RETURN(YAML::Node model, top.child("model"));
  const YamlFields mf = top.nested(model, "model");
  KVP_RETURN_IF_ERROR(mf.only({"features", "lost", "coef", "rescue_rate", "model_sd", "z"}));
  const YAML::Node feats = model["features"], coef = model["coef"], lost = model["lost"];
  if (!feats || !feats.IsSequence() || feats.size() == 0 || feats.size() > size_t(kTaskFeatureCount)) {
    return mf.error("features", fmt::format("expected a list of 1 to {} feature names", kTaskFeatureCount));
  }
  for (const YAML::Node& f : feats) {
    const std::string name = f.IsScalar() ? f.as<std::string>() : "";
    const auto it = std::find_if(std::begin(kTaskFeatureNames), std::end(kTaskFeatureNames),
                                 [&](const char* n) { return name == n; });
    if (it == std::end(kTaskFeatureNames)) {
      return mf.error("features", fmt::format("unknown feature '{}' (known: needles, mass, needle_mass, needle_min)", name));
    }
    c.features.push_back(static_cast<int>(it - std::begin(kTaskFeatureNames)));
  }
  if (!lost || !lost.IsScalar() || (lost.as<std::string>() != "true" && lost.as<std::string>() != "false")) {
    return mf.error("lost", "expected true or false");
  }
  c.lost = lost.as<std::string>() == "true";
  if (!coef || !coef.IsSequence() || coef.size() != c.features.size() + 1) {
    return mf.error("coef", fmt::format("expected {} numbers (the intercept, then one per feature)", c.features.size() + 1));
  }
  for (const YAML::Node& v : coef) {
    double x = 0;
    if (!v.IsScalar() || !YAML::convert<double>::decode(v, x) || !std::isfinite(x)) return mf.error("coef", "expected finite numbers");
    c.coef.push_back(x);
  }
  KVP_ASSIGN_OR_RETURN(c.rescue_rate, mf.number("rescue_rate"));
  KVP_ASSIGN_OR_RETURN(c.model_sd, mf.number("model_sd"));
  KVP_ASSIGN_OR_RETURN(c.z, mf.number("z"));
  if (!(c.rescue_rate >= 0 && c.rescue_rate <= 1)) return mf.error("rescue_rate", "expected a number in [0, 1]");
  if (!(c.model_sd >= 0 && c.model_sd <= 1)) return mf.error("model_sd", "expected a number in [0, 1]");
  if (!(c.z > 0 && c.z < 10)) return mf.error("z", "expected a number in (0, 10)");
  KVP_ASSIGN_OR_RETURN(YAML::Node fit, top.child("fit"));
  const YamlFields ff = top.nested(fit, "fit");
  KVP_RETURN_IF_ERROR(ff.only({"observations", "instances", "configs", "lengths", "candidates"}));
  KVP_ASSIGN_OR_RETURN(c.n_observations, ff.integer("observations", 0, 1 << 30));
  KVP_ASSIGN_OR_RETURN(c.n_instances, ff.integer("instances", 0, 1 << 30));
  KVP_ASSIGN_OR_RETURN(c.n_configs, ff.integer("configs", 0, 1 << 30));
  const YAML::Node lengths = fit["lengths"];
  if (!lengths || !lengths.IsSequence()) return ff.error("lengths", "expected a list of lengths");
  for (const YAML::Node& v : lengths) {
    int x = 0;
    if (!v.IsScalar() || !YAML::convert<int>::decode(v, x) || x <= 0) return ff.error("lengths", "expected positive integers");
    c.lengths.push_back(x);
  }
  const YAML::Node cands = fit["candidates"];
  if (cands && cands.IsSequence()) {
    for (const YAML::Node& v : cands) {
      double loss = 0;
      if (!v.IsMap() || !v["features"] || !v["cv_log_loss"] || !YAML::convert<double>::decode(v["cv_log_loss"], loss)) {
        return ff.error("candidates", "expected entries {features, cv_log_loss}");
      }
      c.candidates.push_back(TaskCandidate{.name = v["features"].as<std::string>(), .cv_log_loss = loss});
    }
  }
  return c;
}

Result<TaskCalibration> TaskCalibration::load(const std::string& path) {
  KVP_ASSIGN_OR_RETURN(std::string text, read_file_text(path));
  return parse(text, path);
}

Status TaskCalibration::save(const std::string& path) const { return write_file_atomic(path, to_yaml()); }

}  // namespace kvp
