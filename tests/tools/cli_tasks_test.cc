// kvplan tasks and eval --tasks from the command line, on the embedded model: the file written and
// read back, the outputs of eval --tasks, and one-line errors for what a user gets wrong (each
// next to the run that is accepted); task traces (record --tasks, eval --trace-out) feeding task
// accuracy predictions into plan, sweep and check.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "planner/plan/plan.h"
#include "tests/support/test_support.h"

namespace kvp::cli_tasks_test {
namespace {

TEST(CliTasks, WritesTasksAndScoresEveryConfiguration) {
  const std::string d = test::make_temp_dir("cli-tasks");
  const test::CliResult made =
      test::run_kvplan("tasks --length 440 --n 2 --families niah_single,vt --seed 4 --json --out " + d + "/t.jsonl");
  ASSERT_EQ(made.exit_code, 0) << made.err;
  const nlohmann::json summary = nlohmann::json::parse(made.out);
  EXPECT_EQ(summary["instances"], 4);
  EXPECT_EQ(summary["chat_template"], "none");  // stories260K has none
  const test::CliResult again = test::run_kvplan("tasks --length 440 --n 2 --families niah_single,vt --seed 4 --out " + d + "/u.jsonl");
  ASSERT_EQ(again.exit_code, 0) << again.err;
  EXPECT_EQ(test::read_bytes(d + "/t.jsonl"), test::read_bytes(d + "/u.jsonl"));  // the same seed, the same file
  const test::CliResult grid = test::run_kvplan("eval --tasks " + d + "/t.jsonl --grid --policies h2o,vatp --compression 0.5 "
                                                "--cut both --json --out " + d + "/ev");
  ASSERT_EQ(grid.exit_code, 0) << grid.err;
  const nlohmann::json rows = nlohmann::json::parse(grid.out);
  // (full, h2o, vatp) × (agnostic, aware) × (niah_single, vt).
  EXPECT_EQ(rows.size(), 12u);
  for (const auto& r : rows) {
    EXPECT_GE(r["accuracy"].get<double>(), r["accuracy_low"].get<double>());
    EXPECT_LE(r["accuracy"].get<double>(), r["accuracy_high"].get<double>());
    if (r["policy"] == "full") EXPECT_EQ(r["delta_nll"], 0.0);
  }
  EXPECT_EQ(test::line_count(test::read_bytes(d + "/ev/outcomes.csv")), 1 + 6 * 4);
  EXPECT_EQ(test::line_count(test::read_bytes(d + "/ev/summary.csv")), 1 + 12);
  const test::CliResult one = test::run_kvplan("eval --tasks " + d + "/t.jsonl --policy snapkv --keep 0.5 0.25 --out " + d + "/one");
  ASSERT_EQ(one.exit_code, 0) << one.err;
  EXPECT_NE(one.out.find("| snapkv k0.25 | agnostic | vt | 440 | 2 |"), std::string::npos) << one.out;
}

TEST(CliTasks, OneLineErrorsNameWhatToFix) {
  const std::string d = test::make_temp_dir("cli-tasks-errors");
  ASSERT_EQ(test::run_kvplan("tasks --length 440 --n 1 --families niah_single --out " + d + "/t.jsonl").exit_code, 0);
  ASSERT_EQ(test::run_kvplan("eval --tasks " + d + "/t.jsonl --policy vatp --keep 0.5 --out " + d + "/ok").exit_code, 0);
  test::expect_one_line_error("tasks --length 440 --families qa --out " + d + "/x.jsonl", "--families: unknown family 'qa'");
  test::expect_one_line_error("tasks --length 100000 --out " + d + "/x.jsonl", "--length: expected 128..512");
  test::expect_one_line_error("tasks --length 500 --families niah_multivalue --out " + d + "/x.jsonl",
                              "leaves no room in the model's 512 positions");
  test::expect_one_line_error("tasks --haystack corpus --length 440 --out " + d + "/x.jsonl", "--corpus");
  test::expect_one_line_error("eval --tasks " + d + "/t.jsonl --out " + d + "/e", "give --plan, --plans, --grid");
  test::expect_one_line_error("eval --tasks " + d + "/t.jsonl --policy vatp --out " + d + "/e", "--keep");
  test::expect_one_line_error("eval --tasks " + d + "/t.jsonl --policy vatp --keep 1.5 --out " + d + "/e",
                              "--keep: expected ratios in (0, 1]");
  test::expect_one_line_error("eval --tasks " + d + "/t.jsonl --policy vatp --keep 0.5 --cut later --out " + d + "/e",
                              "--cut: expected agnostic, aware or both");
  test::expect_one_line_error("eval --tasks " + d + "/t.jsonl --policy vatp --keep 0.5", "--out");
  test::expect_one_line_error("eval --tasks " + d + "/t.jsonl --policy vatp --keep 0.5 --think 0.5 --out " + d + "/e",
                              "--think/--mustafar: with --tasks, make a plan with them");
  // A line that lost a field, and the same file for another model.
  std::string text = test::read_bytes(d + "/t.jsonl");
  const size_t at = text.find("\"answers\"");
  test::write_bytes(d + "/bad.jsonl", text.substr(0, at) + "\"answerz\"" + text.substr(at + 9));
  test::expect_one_line_error("eval --tasks " + d + "/bad.jsonl --policy vatp --keep 0.5 --out " + d + "/e",
                              "bad.jsonl: line 2: field 'answers' is missing");
  const size_t fp = text.find("\"model_fingerprint\":\"") + 21;
  test::write_bytes(d + "/other.jsonl", text.substr(0, fp) + "0000" + text.substr(fp + 4));
  test::expect_one_line_error("eval --tasks " + d + "/other.jsonl --policy vatp --keep 0.5 --out " + d + "/e",
                              "other.jsonl: line 1: field 'model_fingerprint'");
}


// stories260K answers none of its tasks, so every instance's probability is the calibration's rescue
// rate r: a hand-written calibration with r = 0.25 predicts 0.25 for any configuration, with the
// interval 0.25 ± 1.96 √(0.25 · 0.75 / n).
TEST(CliTasks, TaskTracesPredictAccuracyInPlanSweepAndCheck) {
  const std::string d = test::make_temp_dir("cli-task-trace");
  ASSERT_EQ(test::run_kvplan("tasks --length 440 --n 2 --families niah_single,vt --seed 6 --out " + d + "/t.jsonl").exit_code, 0);
  const test::CliResult rec = test::run_kvplan("record --tasks " + d + "/t.jsonl --policies h2o,vatp,tova --json --out " + d + "/t.kvtt");
  ASSERT_EQ(rec.exit_code, 0) << rec.err;
  const nlohmann::json r = nlohmann::json::parse(rec.out);
  EXPECT_EQ(r["instances"], 4);
  EXPECT_EQ(r["scorers"], 3);
  ASSERT_EQ(r["full_accuracy"], 0.0);
  const test::CliResult ev = test::run_kvplan("eval --tasks " + d + "/t.jsonl --grid --policies h2o,tova --compression 0.5,0.75 "
                                              "--trace-out " + d + "/e.kvtt --out " + d + "/ev");
  ASSERT_EQ(ev.exit_code, 0) << ev.err;
  // Nothing answered: nothing to calibrate on, said in one line.
  test::expect_one_line_error("calibrate --task-trace " + d + "/e.kvtt --outcomes " + d + "/ev/outcomes.csv --out " + d +
                                  "/c.yaml", "the full cache answers no instance");
  test::expect_one_line_error("calibrate --task-trace " + d + "/e.kvtt --out " + d + "/c.yaml", "in pairs");
  // The trace's model fingerprint, for a hand-written calibration.
  const std::string bytes = test::read_bytes(d + "/t.kvtt");
  const size_t at = bytes.find("\"model_fingerprint\":\"") + 21;
  const std::string fingerprint = bytes.substr(at, 64);
  const std::string cal = "format: kvplan-task-calibration\nversion: 1\nmodel_fingerprint: " + fingerprint +
                          "\nsources: by hand\nmodel:\n  features: [needle_mass]\n  lost: false\n  coef: [-4, 8]\n"
                          "  rescue_rate: 0.25\n  model_sd: 0\n  z: 1.96\nfit:\n  observations: 0\n  instances: 0\n"
                          "  configs: 0\n  lengths: [440]\n";
  test::write_bytes(d + "/cal.yaml", cal);
  const test::CliResult plan = test::run_kvplan("plan --policy h2o --budget 200 --task-calibration " + d + "/cal.yaml "
                                                "--task-trace " + d + "/t.kvtt --out " + d + "/p.yaml");
  ASSERT_EQ(plan.exit_code, 0) << plan.err;
  auto p = Plan::load(d + "/p.yaml");
  ASSERT_TRUE(p.ok()) << p.error().message();
  const double half = 1.96 * std::sqrt(0.25 * 0.75 / 4);
  EXPECT_NEAR(p->predicted.at("task_accuracy"), 0.25, 1e-6);
  EXPECT_EQ(p->predicted.at("task_accuracy_low"), 0.0);  // 0.25 − 0.424, clipped
  EXPECT_NEAR(p->predicted.at("task_accuracy_high"), 0.25 + half, 1e-6);
  // The plan run on the tasks, then checked: memory exact, accuracy 0 inside [0, 0.674].
  ASSERT_EQ(test::run_kvplan("eval --tasks " + d + "/t.jsonl --plan " + d + "/p.yaml --out " + d + "/pev").exit_code, 0);
  const test::CliResult check = test::run_kvplan("check --plan " + d + "/p.yaml --task-outcomes " + d + "/pev/outcomes.csv --json");
  ASSERT_EQ(check.exit_code, 0) << check.err;
  const nlohmann::json c = nlohmann::json::parse(check.out);
  EXPECT_EQ(c["memory_exact"], true);
  EXPECT_EQ(c["metrics"]["task_accuracy"]["measured"], 0.0);
  EXPECT_EQ(c["metrics"]["task_accuracy"]["ok"], true);
  // sweep: a predicted accuracy per configuration the task trace has scores for.
  ASSERT_EQ(test::run_kvplan("corpus --sample 2 --length 96 --out " + d + "/c.jsonl").exit_code, 0);
  ASSERT_EQ(test::run_kvplan("record --corpus " + d + "/c.jsonl --prompt-len 16 --out " + d + "/tr").exit_code, 0);
  const test::CliResult sweep = test::run_kvplan("sweep --trace " + d + "/tr --policies h2o,knorm --budgets 16,32 --no-greedy "
                                                 "--no-plots --task-calibration " + d + "/cal.yaml --task-trace " + d +
                                                 "/t.kvtt --out " + d + "/s");
  ASSERT_EQ(sweep.exit_code, 0) << sweep.err;
  EXPECT_NE(sweep.out.find("Predicted task accuracy"), std::string::npos) << sweep.out;
  EXPECT_NE(sweep.out.find("no recorded scorer scores as knorm"), std::string::npos) << sweep.out;
  const std::string csv = test::read_bytes(d + "/s/sweep.csv");
  EXPECT_NE(csv.find("pred_task_accuracy"), std::string::npos);
  EXPECT_NE(csv.find("0.2500,"), std::string::npos) << csv;
  // Refusals, each next to the accepted run above.
  test::expect_one_line_error("plan --policy h2o --budget 200 --task-calibration " + d + "/cal.yaml --out " + d + "/x.yaml",
                              "--task-calibration and --task-trace: give both");
  std::string other = cal;
  other.replace(other.find(fingerprint), 64, std::string(64, 'e'));
  test::write_bytes(d + "/other.yaml", other);
  test::expect_one_line_error("plan --policy h2o --budget 200 --task-calibration " + d + "/other.yaml --task-trace " + d +
                                  "/t.kvtt --out " + d + "/x.yaml", "other.yaml: model_fingerprint");
  test::expect_one_line_error("plan --policy window --budget 200 --task-calibration " + d + "/cal.yaml --task-trace " + d +
                                  "/t.kvtt --out " + d + "/x.yaml", "no recorded scorer scores as window");
  test::write_bytes(d + "/cut.kvtt", bytes.substr(0, bytes.size() - 10));
  test::expect_one_line_error("plan --policy h2o --budget 200 --task-calibration " + d + "/cal.yaml --task-trace " + d +
                                  "/cut.kvtt --out " + d + "/x.yaml", "cut.kvtt: instances[3].answer_attention");
  test::expect_one_line_error("check --plan " + d + "/p.yaml", "give --measured");
  test::expect_one_line_error("record --tasks " + d + "/t.jsonl --policies full --out " + d + "/f.kvtt", "keeps every token");
}

}  // namespace
}  // namespace kvp::cli_tasks_test
