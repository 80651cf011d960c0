// kvplan tasks and eval --tasks from the command line, on the embedded model: the file written and
// read back, the outputs of eval --tasks, and one-line errors for what a user gets wrong (each
// next to the run that is accepted).
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

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

}  // namespace
}  // namespace kvp::cli_tasks_test
