#include "tools/kvplan/task_predict.h"

#include <fmt/format.h>

#include <cmath>
#include <map>
#include <sstream>

#include "common/file_util.h"
#include "planner/calibration.h"
#include "planner/plan/measured.h"

namespace kvp::cli {

namespace {

// One CSV line: comma-separated, a field in double quotes may hold commas ("" is a quote).
std::vector<std::string> csv_fields(const std::string& line) {
  std::vector<std::string> out(1);
  bool quoted = false;
  for (size_t i = 0; i < line.size(); ++i) {
    const char c = line[i];
    if (quoted) {
      if (c == '"' && i + 1 < line.size() && line[i + 1] == '"') {
        out.back() += '"', ++i;
      } else if (c == '"') {
        quoted = false;
      } else {
        out.back() += c;
      }
    } else if (c == '"') {
      quoted = true;
    } else if (c == ',') {
      out.emplace_back();
    } else if (c != '\r') {
      out.back() += c;
    }
  }
  return out;
}

// outcomes.csv (eval --tasks): its columns by name, each row's fields and line number.
struct OutcomesCsv {
  std::map<std::string, size_t> col;
  std::vector<std::pair<int, std::vector<std::string>>> rows;
};

Result<OutcomesCsv> read_outcomes(const std::string& path, std::initializer_list<const char*> needed) {
  KVP_ASSIGN_OR_RETURN(std::string text, read_file_text(path));
  std::istringstream in(text);
  std::string line;
  if (!std::getline(in, line)) return make_error("{}: empty (expected eval --tasks' outcomes.csv)", path);
  const std::vector<std::string> header = csv_fields(line);
  OutcomesCsv csv;
  for (size_t i = 0; i < header.size(); ++i) csv.col[header[i]] = i;
  for (const char* need : needed) {
    if (!csv.col.count(need)) return make_error("{}: header: no '{}' column (expected eval --tasks' outcomes.csv)", path, need);
  }
  for (int row = 2; std::getline(in, line); ++row) {
    if (line.empty()) continue;
    std::vector<std::string> f = csv_fields(line);
    if (f.size() < header.size()) return make_error("{}: row {}: {} fields, the header has {}", path, row, f.size(), header.size());
    csv.rows.emplace_back(row, std::move(f));
  }
  return csv;
}

}  // namespace

Result<std::vector<TaskFeatures>> replay_task_trace(const TaskTrace& trace, const std::string& policy,
                                                    const PolicyParams& params, const std::vector<int32_t>& budgets) {
  KVP_ASSIGN_OR_RETURN(std::unique_ptr<Policy> p, make_policy(policy, params));
  std::vector<TaskFeatures> out;
  for (const TaskTraceInstance& inst : trace.instances) {
    KVP_ASSIGN_OR_RETURN(TaskFeatures f, replay_task(trace, inst, *p, budgets));
    out.push_back(f);
  }
  return out;
}

Result<std::vector<TaskObservation>> task_observations(const TaskTrace& trace, const std::string& trace_path,
                                                       const std::string& outcomes_path, double* needle_gap) {
  KVP_ASSIGN_OR_RETURN(const OutcomesCsv csv, read_outcomes(outcomes_path, {"config", "policy", "cut", "id", "family", "length",
                                                                       "budget", "score", "needles_kept"}));
  const auto& col = csv.col;
  const bool settings = col.count("sinks") && col.count("recent") && col.count("detail");
  std::map<std::string, const TaskTraceInstance*> by_id;
  for (const TaskTraceInstance& t : trace.instances) by_id[t.id] = &t;
  std::map<std::string, std::unique_ptr<Policy>> policies;  // by policy, budget and settings
  std::vector<TaskObservation> out;
  double gap = 0;
  const size_t heads = size_t(trace.n_layers) * trace.n_kv_heads;
  for (const auto& [row, f] : csv.rows) {
    auto number = [&](const char* name) -> Result<double> {
      const std::string& s = f[col.at(name)];
      char* end = nullptr;
      const double v = std::strtod(s.c_str(), &end);
      if (s.empty() || *end != '\0' || !std::isfinite(v)) return make_error("{}: row {}: {}: expected a number, found '{}'", outcomes_path, row, name, s);
      return v;
    };
    if (f[col.at("cut")] != trace.cut_point) continue;
    TaskObservation o{.config = f[col.at("config")], .policy = f[col.at("policy")], .instance = f[col.at("id")],
                      .family = f[col.at("family")]};
    KVP_ASSIGN_OR_RETURN(double length, number("length"));
    KVP_ASSIGN_OR_RETURN(double budget, number("budget"));
    KVP_ASSIGN_OR_RETURN(o.score, number("score"));
    KVP_ASSIGN_OR_RETURN(double needles, number("needles_kept"));
    o.length = static_cast<int>(length), o.budget = static_cast<int>(budget);
    const auto it = by_id.find(o.instance);
    if (it == by_id.end()) {
      return make_error("{}: row {}: id: instance '{}' is not in the task trace {} (record the same tasks file)",
                        outcomes_path, row, o.instance, trace_path);
    }
    const TaskTraceInstance& inst = *it->second;
    if (o.policy == "full") {
      if (std::abs(o.score - inst.full_score) > 1e-3) {
        return make_error("{}: row {}: score: the full cache scored {} on {}, the task trace {} recorded {} (another "
                          "model or tasks file?)", outcomes_path, row, o.score, o.instance, trace_path, inst.full_score);
      }
      continue;
    }
    PolicyParams params = published_defaults(o.policy, o.budget);
    std::string key = fmt::format("{} {}", o.policy, o.budget);
    if (settings) {
      Measured m;
      KVP_ASSIGN_OR_RETURN(double sinks, number("sinks"));
      KVP_ASSIGN_OR_RETURN(double recent, number("recent"));
      m.sinks = static_cast<int>(sinks), m.recent = static_cast<int>(recent), m.policy_detail = f[col.at("detail")];
      KVP_ASSIGN_OR_RETURN(params, measured_params(m, fmt::format("{}: row {}", outcomes_path, row)));
      key += fmt::format(" {} {} {}", m.sinks, m.recent, m.policy_detail);
    }
    auto& policy = policies[key];
    if (!policy) {
      auto made = make_policy(o.policy, params);
      if (!made.ok()) return make_error("{}: row {}: policy: {}", outcomes_path, row, made.error().message());
      policy = std::move(made).value();
    }
    const std::vector<int32_t> budgets(heads, o.budget);
    auto features = replay_task(trace, inst, *policy, budgets);
    if (!features.ok()) return make_error("{}: row {}: {}", outcomes_path, row, features.error().message());
    o.features = *features;
    if (!inst.needles.empty()) gap = std::max(gap, std::abs(o.features.needles - needles));
    out.push_back(std::move(o));
  }
  if (needle_gap) *needle_gap = gap;
  return out;
}

Result<TaskMeasured> measured_task_accuracy(const std::string& outcomes_path, const std::string& config) {
  KVP_ASSIGN_OR_RETURN(const OutcomesCsv csv, read_outcomes(outcomes_path, {"config", "policy", "score", "kv_bytes"}));
  const auto& col = csv.col;
  std::map<std::string, std::vector<std::vector<std::string>>> by_config;
  for (const auto& [row, f] : csv.rows) {
    if (f[col.at("policy")] != "full") by_config[f[col.at("config")]].push_back(f);
  }
  std::string name = config;
  if (name.empty()) {
    if (by_config.size() != 1) {
      return make_error("{}: config: {} configurations besides full; name the plan's (--task-config)", outcomes_path,
                        by_config.size());
    }
    name = by_config.begin()->first;
  }
  const auto it = by_config.find(name);
  if (it == by_config.end()) return make_error("{}: config: no rows of configuration '{}'", outcomes_path, name);
  TaskMeasured m{.config = name};
  for (const auto& f : it->second) {
    m.accuracy += std::strtod(f[col.at("score")].c_str(), nullptr);
    const int64_t bytes = std::strtoll(f[col.at("kv_bytes")].c_str(), nullptr, 10);
    if (m.n > 0 && bytes != m.kv_bytes) {
      return make_error("{}: kv_bytes: configuration '{}' ran with {} and {} bytes", outcomes_path, name, m.kv_bytes, bytes);
    }
    m.kv_bytes = bytes, ++m.n;
  }
  m.accuracy /= m.n;
  return m;
}

Result<TaskAccuracy> TaskPredictor::predict(const std::string& policy, const PolicyParams& params,
                                            const std::vector<int32_t>& budgets) const {
  KVP_ASSIGN_OR_RETURN(std::vector<TaskFeatures> f, replay_task_trace(trace, policy, params, budgets));
  return calibration.predict(f);
}

Result<TaskAccuracy> TaskPredictor::predict(const Plan& plan) const {
  if (plan.compression.any()) {
    return make_error("--task-calibration: task traces replay token cuts; a plan with ThinK or Mustafar ({}) is not "
                      "predicted", plan.compression.label());
  }
  std::vector<int32_t> budgets;
  for (const auto& layer : plan.budgets) budgets.insert(budgets.end(), layer.begin(), layer.end());
  if (budgets.size() != size_t(trace.n_layers) * trace.n_kv_heads) {
    return make_error("{}: the plan has {} budgets, the task trace {} layers × {} heads", trace_path, budgets.size(),
                      trace.n_layers, trace.n_kv_heads);
  }
  return predict(plan.policy, plan.params, budgets);
}

Result<std::optional<TaskPredictor>> load_task_predictor(const std::string& calibration_path,
                                                         const std::string& trace_path, const std::string& fingerprint) {
  if (calibration_path.empty() && trace_path.empty()) return std::optional<TaskPredictor>();
  if (calibration_path.empty() || trace_path.empty()) {
    return make_error("--task-calibration and --task-trace: give both (the predictor, and the instances it predicts on)");
  }
  TaskPredictor p{.calibration_path = calibration_path, .trace_path = trace_path};
  KVP_ASSIGN_OR_RETURN(p.calibration, TaskCalibration::load(calibration_path));
  KVP_ASSIGN_OR_RETURN(p.trace, TaskTrace::load(trace_path));
  if (p.calibration.model_fingerprint != fingerprint) {
    return make_error("{}: model_fingerprint: calibrated on another model ({}), this one is {}", calibration_path,
                      p.calibration.model_fingerprint.substr(0, 12), fingerprint.substr(0, 12));
  }
  if (p.trace.model_fingerprint != fingerprint) {
    return make_error("{}: model_fingerprint: recorded on another model ({}), this one is {}", trace_path,
                      p.trace.model_fingerprint.substr(0, 12), fingerprint.substr(0, 12));
  }
  return std::optional<TaskPredictor>(std::move(p));
}

void add_task_prediction(const TaskAccuracy& a, const TaskPredictor& p, Plan* plan) {
  plan->predicted["task_accuracy"] = a.accuracy;
  plan->predicted["task_accuracy_low"] = a.low;
  plan->predicted["task_accuracy_high"] = a.high;
  plan->provenance["task_calibration"] = p.calibration_path;
  plan->provenance["task_trace"] = fmt::format("{} ({} instances, cut {})", p.trace_path, a.n, p.trace.cut_point);
}

}  // namespace kvp::cli
