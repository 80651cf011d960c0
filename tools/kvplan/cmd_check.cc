// kvplan check: a plan's predictions next to what `kvplan eval` measured for it. Memory must match
// exactly (a mismatch exits non-zero); accuracy is shown against its predicted interval.
#include <nlohmann/json.hpp>

#include <cstdio>

#include "planner/plan/measured.h"
#include "planner/plan/plan.h"
#include "tools/kvplan/command.h"
#include "tools/kvplan/task_predict.h"

namespace kvp::cli {
namespace {

struct CheckFlags {
  std::string plan;
  std::string measured;
  std::string task_outcomes, task_config;  // eval --tasks --plan's outcomes.csv, and its configuration
  bool json = false;
};

struct CheckRow {
  std::string metric;
  double predicted = 0, low = 0, high = 0, measured = 0;
  bool has_interval = false;
  bool ok = true;
};

Status check(const CheckFlags& flags) {
  if (flags.measured.empty() && flags.task_outcomes.empty()) {
    return make_error("check: give --measured (eval --plan's measured.yaml), --task-outcomes (eval --tasks --plan's "
                      "outcomes.csv) or both");
  }
  KVP_ASSIGN_OR_RETURN(Plan plan, Plan::load(flags.plan));
  std::vector<CheckRow> rows;
  bool memory_ok = true;
  std::string memory_error;
  auto metric = [&](const std::string& name, const std::string& low, const std::string& high, double measured) {
    const auto p = plan.predicted.find(name);
    if (p == plan.predicted.end()) return;
    CheckRow r{.metric = name, .predicted = p->second, .measured = measured};
    if (plan.predicted.count(low) && plan.predicted.count(high)) {
      r.has_interval = true;
      r.low = plan.predicted.at(low), r.high = plan.predicted.at(high);
      r.ok = measured >= r.low && measured <= r.high;
    }
    rows.push_back(r);
  };
  std::string against;
  if (!flags.measured.empty()) {
    KVP_ASSIGN_OR_RETURN(Measured m, Measured::load(flags.measured));
    if (m.model_fingerprint != plan.model.fingerprint) {
      return make_error("{}: model_fingerprint: measured on the model of sha256 {}, the plan {} is for {}",
                        flags.measured, m.model_fingerprint, flags.plan, plan.model.fingerprint);
    }
    if (m.policy != plan.policy || m.budgets != plan.budgets || m.sinks != plan.params.sinks ||
        m.recent != plan.params.recent) {
      return make_error("{}: config: measured {} (sinks {}, recent {}) with other budgets than the plan {} ({}, sinks {}, "
                        "recent {}): evaluate the plan with kvplan eval --plan {}",
                        flags.measured, m.policy, m.sinks, m.recent, flags.plan, plan.policy, plan.params.sinks,
                        plan.params.recent, flags.plan);
    }
    if (m.compression != plan.compression) {
      return make_error("{}: config: measured with compression '{}', the plan {} has '{}': evaluate the plan with "
                        "kvplan eval --plan {}", flags.measured, m.compression.label(), flags.plan,
                        plan.compression.label(), flags.plan);
    }
    rows.push_back(CheckRow{.metric = "kv_bytes_per_sequence",
                            .predicted = static_cast<double>(plan.kv_bytes_per_sequence),
                            .measured = static_cast<double>(m.kv_bytes_per_sequence),
                            .ok = plan.kv_bytes_per_sequence == m.kv_bytes_per_sequence});
    if (!rows.back().ok) {
      memory_ok = false;
      memory_error = fmt::format("{}: metrics.kv_bytes_per_sequence: measured {} bytes, the plan {} predicted {}",
                                 flags.measured, m.kv_bytes_per_sequence, flags.plan, plan.kv_bytes_per_sequence);
    }
    metric("delta_nll", "delta_nll_low", "delta_nll_high", m.delta_nll);
    metric("top1_agreement", "top1_agreement_low", "top1_agreement_high", m.top1_agreement);
    against = fmt::format("{} ({}, {} sequences)", flags.measured, m.corpus, m.n_sequences);
  }
  if (!flags.task_outcomes.empty()) {
    KVP_ASSIGN_OR_RETURN(TaskMeasured t, measured_task_accuracy(flags.task_outcomes, flags.task_config));
    if (t.kv_bytes != plan.kv_bytes_per_sequence) {
      memory_ok = false;
      memory_error = fmt::format("{}: kv_bytes: configuration '{}' ran with {} bytes, the plan {} predicted {} (another "
                                 "plan?)", flags.task_outcomes, t.config, t.kv_bytes, flags.plan, plan.kv_bytes_per_sequence);
    }
    if (flags.measured.empty()) {
      rows.push_back(CheckRow{.metric = "kv_bytes_per_sequence", .predicted = static_cast<double>(plan.kv_bytes_per_sequence),
                              .measured = static_cast<double>(t.kv_bytes), .ok = t.kv_bytes == plan.kv_bytes_per_sequence});
    }
    metric("task_accuracy", "task_accuracy_low", "task_accuracy_high", t.accuracy);
    against += fmt::format("{}{} ('{}', {} instances)", against.empty() ? "" : " and ", flags.task_outcomes, t.config, t.n);
  }
  const bool calibrated = plan.predicted.count("delta_nll") > 0 || plan.predicted.count("task_accuracy") > 0;
  const auto range = plan.provenance.find("calibration_range");
  const std::string range_note = range == plan.provenance.end() ? "" : range->second;
  if (flags.json) {
    nlohmann::json j = {{"plan", flags.plan}, {"measured", flags.measured}, {"task_outcomes", flags.task_outcomes},
                        {"memory_exact", memory_ok}, {"calibrated", calibrated}, {"calibration_range", range_note}};
    for (const CheckRow& r : rows) {
      nlohmann::json e = {{"predicted", r.predicted}, {"measured", r.measured}, {"ok", r.ok}};
      if (r.has_interval) e["interval"] = {r.low, r.high};
      j["metrics"][r.metric] = e;
    }
    std::printf("%s\n", j.dump(2).c_str());
  } else {
    std::printf("%s (%s) against %s\n\n| metric | predicted | measured | |\n|---|---|---|---|\n", flags.plan.c_str(),
                plan.policy.c_str(), against.c_str());
    for (const CheckRow& r : rows) {
      if (r.metric == "kv_bytes_per_sequence") {
        std::printf("| KV bytes per sequence | %.0f | %.0f | %s |\n", r.predicted, r.measured,
                    r.ok ? "exact" : "MISMATCH");
      } else if (r.has_interval) {
        std::printf("| %s | %.4f [%.4f, %.4f] | %.4f | %s |\n", r.metric.c_str(), r.predicted, r.low, r.high,
                    r.measured, r.ok ? "inside the interval" : "outside the interval");
      } else {
        std::printf("| %s | %.4f | %.4f | |\n", r.metric.c_str(), r.predicted, r.measured);
      }
    }
    if (!flags.measured.empty() && !plan.predicted.count("delta_nll")) {
      std::printf("\n(no ΔNLL prediction: make the plan with --calibration calib.yaml)\n");
    }
    if (!flags.task_outcomes.empty() && !plan.predicted.count("task_accuracy")) {
      std::printf("\n(no task accuracy prediction: make the plan with --task-calibration and --task-trace)\n");
    }
    if (!range_note.empty()) std::printf("\ncalibration range: %s\n", range_note.c_str());
  }
  if (!memory_ok) return make_error("{}", memory_error);
  return ok_status();
}

}  // namespace

Command add_check_command(CLI::App& app) {
  auto flags = std::make_shared<CheckFlags>();
  CLI::App* sub = app.add_subcommand(
      "check", "Show a plan's predictions next to what kvplan eval measured for it: memory (must match exactly, "
               "else exit 1) and accuracy against its predicted interval");
  sub->add_option("--plan", flags->plan, "plan.yaml (made with --calibration for accuracy predictions)")->required();
  sub->add_option("--measured", flags->measured, "measured.yaml written by kvplan eval --plan");
  sub->add_option("--task-outcomes", flags->task_outcomes,
                  "outcomes.csv written by kvplan eval --tasks --plan: the plan's task accuracy against its prediction "
                  "(plan --task-calibration)");
  sub->add_option("--task-config", flags->task_config,
                  "The plan's configuration in --task-outcomes (default: the one there besides full; eval names it "
                  "after the plan file)");
  sub->add_flag("--json", flags->json, "Machine-readable output");
  return {sub, [flags] { return check(*flags); }};
}

}  // namespace kvp::cli
