// The kvplan binary with KVCrush: a plan from a trace, enforced by run and eval in its bytes, and
// its flags' one-line errors beside the accepted form.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <string>

#include "planner/plan/plan.h"
#include "tests/support/test_support.h"

namespace kvp {
namespace {

using test::run_kvplan;

TEST(Cli, KvcrushPlansRunsAndEvaluatesInThePlansBytes) {
  const std::string dir = test::make_temp_dir("clicrush");
  ASSERT_EQ(run_kvplan("corpus --sample 3 --length 96 --out " + dir + "/c.jsonl").exit_code, 0);
  ASSERT_EQ(run_kvplan("record --corpus " + dir + "/c.jsonl --prompt-len 16 --out " + dir + "/t").exit_code, 0);
  const test::CliResult plan = run_kvplan("plan --trace " + dir + "/t --policy kvcrush --kvcrush-base vatp "
                                          "--kvcrush-ratio 0.3 --kvcrush-anchor alternating --kvcrush-period 4 "
                                          "--keep 0.5 --out " + dir + "/p.yaml");
  ASSERT_EQ(plan.exit_code, 0) << plan.err;
  auto written = Plan::load(dir + "/p.yaml");
  ASSERT_TRUE(written.ok()) << written.error().message();
  EXPECT_EQ(written->policy, "kvcrush");
  EXPECT_EQ(written->params.crush_base, "vatp");
  EXPECT_EQ(written->params.crush_ratio, 0.3);
  EXPECT_EQ(written->params.crush_anchor, CrushAnchor::kAlternating);
  EXPECT_EQ(written->params.crush_period, 4);
  const test::CliResult run = run_kvplan("run --plan " + dir + "/p.yaml --steps 64 --json");
  ASSERT_EQ(run.exit_code, 0) << run.err;
  EXPECT_EQ(nlohmann::json::parse(run.out)["kv_bytes"], written->kv_bytes_per_sequence);
  const test::CliResult eval = run_kvplan("eval --plan " + dir + "/p.yaml --corpus " + dir + "/c.jsonl --prompt-len 16 --json");
  ASSERT_EQ(eval.exit_code, 0) << eval.err;
  const nlohmann::json m = nlohmann::json::parse(eval.out);
  EXPECT_EQ(m["policy"], "kvcrush");
  EXPECT_GT(m["delta_nll"].get<double>(), 0.0);
}

TEST(Cli, KvcrushFlagsAreOneLineErrors) {
  const std::string base = "run --policy kvcrush --steps 8 --json", ok = base + " --budget 64";
  ASSERT_EQ(run_kvplan(ok).exit_code, 0);
  const std::pair<std::string, std::string> cases[] = {
      {" --kvcrush-ratio 1", "--kvcrush-ratio: expected a share in [0, 1), found 1"},
      {" --kvcrush-period 0", "--kvcrush-period: expected at least 1 decode step, found 0"},
      {" --kvcrush-base full", "--kvcrush-base: expected an evicting policy"},
      {" --kvcrush-base lru", "policy kvcrush: base: policy: expected one of"},
      {" --kvcrush-anchor median", "--kvcrush-anchor: expected mean, random or alternating, found 'median'"},
      {" --think 0.4", "--think/--mustafar: policy kvcrush re-selects its kept tokens every 8 steps"},
      {"", "--budget: expected at least sinks 4 + recent 3 + kvcrush's period 8 = 15 tokens, found 12"},
  };
  for (const auto& [flag, expect] : cases) {
    test::expect_one_line_error(flag.empty() ? base + " --budget 12" : ok + flag, expect);
  }
}

// The emulated GPU's kernels (kvcrush_keep, slot_keys, slot_compact) make the CPU's choices: the
// same 96 tokens of a run whose 32-slot budget is cut every 8 steps, in the same bytes.
TEST(Cli, KvcrushOnTheEmulatedGpuGivesTheCpusTokens) {
  const std::string args = "run --policy kvcrush --budget 32 --kvcrush-anchor alternating --steps 96 --json";
  const test::CliResult cpu = run_kvplan(args);
  const test::CliResult gpu = run_kvplan(args + " --backend gpu-emulated");
  ASSERT_EQ(cpu.exit_code, 0) << cpu.err;
  ASSERT_EQ(gpu.exit_code, 0) << gpu.err;
  const nlohmann::json c = nlohmann::json::parse(cpu.out), g = nlohmann::json::parse(gpu.out);
  EXPECT_EQ(g["sequences"][0]["tokens"], c["sequences"][0]["tokens"]);
  EXPECT_EQ(g["kv_bytes"], c["kv_bytes"]);
  EXPECT_EQ(c["sequences"][0]["tokens"].size(), 97u);
}

}  // namespace
}  // namespace kvp
