// The kvplan binary with DELTA's layer roles: a plan from a trace, enforced by run and eval in the
// token policy's bytes with fewer keys attended, and its flags' one-line errors beside the accepted
// form.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <string>

#include "planner/plan/plan.h"
#include "tests/support/test_support.h"

namespace kvp {
namespace {

using test::run_kvplan;

TEST(Cli, DeltaPlansRunsAndEvaluatesInTheTokenPolicysBytes) {
  const std::string dir = test::make_temp_dir("clidelta");
  ASSERT_EQ(run_kvplan("corpus --sample 3 --length 160 --out " + dir + "/c.jsonl").exit_code, 0);
  ASSERT_EQ(run_kvplan("record --corpus " + dir + "/c.jsonl --prompt-len 16 --out " + dir + "/t").exit_code, 0);
  const std::string delta = " --delta-layers fsppp --delta-pages 2 --delta-page-size 16 --delta-last 1";
  const std::string keep = " --keep 0.5 --allocation uniform";
  const test::CliResult plan = run_kvplan("plan --trace " + dir + "/t --policy vatp" + keep + delta + " --out " + dir + "/p.yaml");
  ASSERT_EQ(plan.exit_code, 0) << plan.err;
  auto written = Plan::load(dir + "/p.yaml");
  ASSERT_TRUE(written.ok()) << written.error().message();
  EXPECT_EQ(written->params.delta, (DeltaParams{.layers = "fsppp", .pages = 2, .page_size = 16, .last = 1}));
  ASSERT_EQ(run_kvplan("plan --trace " + dir + "/t --policy vatp" + keep + " --out " + dir + "/plain.yaml").exit_code, 0);
  auto plain = Plan::load(dir + "/plain.yaml");
  ASSERT_TRUE(plain.ok());
  EXPECT_EQ(written->kv_bytes_per_sequence, plain->kv_bytes_per_sequence);
  EXPECT_EQ(written->budgets, plain->budgets);
  // The replay of the sparse layers' pages adds error to the plain plan's.
  EXPECT_GT(written->predicted.at("replay_resid_energy"), plain->predicted.at("replay_resid_energy"));

  const test::CliResult run = run_kvplan("run --plan " + dir + "/p.yaml --steps 100 --json");
  ASSERT_EQ(run.exit_code, 0) << run.err;
  const nlohmann::json r = nlohmann::json::parse(run.out);
  EXPECT_EQ(r["kv_bytes"], written->kv_bytes_per_sequence);
  auto eval = [&](const std::string& plan_file) {
    const test::CliResult e = run_kvplan("eval --plan " + plan_file + " --corpus " + dir + "/c.jsonl --prompt-len 16 --json");
    EXPECT_EQ(e.exit_code, 0) << e.err;
    return nlohmann::json::parse(e.out);
  };
  const nlohmann::json with = eval(dir + "/p.yaml"), without = eval(dir + "/plain.yaml");
  EXPECT_EQ(with["detail"], "base=h2o delta_layers=fsppp delta_pages=2 delta_page_size=16 delta_last=1");
  EXPECT_LT(with["attended_per_head_step"].get<double>(), without["attended_per_head_step"].get<double>());
  EXPECT_NE(with["delta_nll"], without["delta_nll"]);
  // DELTA with more pages than the sequences have is the full cache, to the bit.
  const test::CliResult all = run_kvplan("eval --policy full --budget 512 --delta-layers fsppp --corpus " + dir +
                                         "/c.jsonl --prompt-len 16 --json");
  ASSERT_EQ(all.exit_code, 0) << all.err;
  EXPECT_EQ(nlohmann::json::parse(all.out)["delta_nll"].get<double>(), 0.0);
}

TEST(Cli, DeltaFlagsAreOneLineErrors) {
  const std::string base = "run --policy vatp --budget 64 --steps 8 --json", ok = base + " --delta-layers fsppp";
  ASSERT_EQ(run_kvplan(ok).exit_code, 0);
  const std::pair<std::string, std::string> cases[] = {
      {" --delta-layers fspp", "--delta-layers: expected one role per layer (5 letters of f, s, p), found 4 in 'fspp'"},
      {" --delta-layers fpspp", "--delta-layers: layer 1 is sparse (p) before any selection layer (s) in 'fpspp'"},
      {" --delta-layers fsxpp", "--delta-layers: expected f (full), s (select) or p (sparse) per layer, found 'x'"},
      {" --delta-pages 0", "--delta-pages: expected at least 1 page, found 0"},
      {" --delta-page-size 0", "--delta-page-size: expected 1..4096 positions, found 0"},
      {" --delta-last -1", "--delta-last: expected 0 or more pages, found -1"},
      {" --think 0.4", "--delta-layers and --think/--mustafar: DELTA's sparse layers attend dense caches; give one"},
  };
  for (const auto& [flag, expect] : cases) {
    test::expect_one_line_error((flag.rfind(" --delta-layers", 0) == 0 ? base : ok) + flag, expect);
  }
}

// The emulated GPU's kernels (delta_select, the masked decode attention) make the CPU's choices: the
// same 200 tokens of an H2O run whose sparse layers attend 2 pages of 16 and the last one.
TEST(Cli, DeltaOnTheEmulatedGpuGivesTheCpusTokens) {
  const std::string args = "run --policy h2o --budget 96 --delta-layers fsppp --delta-pages 2 --delta-last 1 --steps 200 --json";
  const test::CliResult cpu = run_kvplan(args);
  const test::CliResult gpu = run_kvplan(args + " --backend gpu-emulated");
  const test::CliResult plain = run_kvplan("run --policy h2o --budget 96 --steps 200 --json");
  ASSERT_EQ(cpu.exit_code, 0) << cpu.err;
  ASSERT_EQ(gpu.exit_code, 0) << gpu.err;
  ASSERT_EQ(plain.exit_code, 0) << plain.err;
  const nlohmann::json c = nlohmann::json::parse(cpu.out), g = nlohmann::json::parse(gpu.out);
  EXPECT_EQ(g["sequences"][0]["tokens"], c["sequences"][0]["tokens"]);
  EXPECT_EQ(g["kv_bytes"], c["kv_bytes"]);
  EXPECT_EQ(c["sequences"][0]["tokens"].size(), 201u);
  EXPECT_NE(c["sequences"][0]["tokens"], nlohmann::json::parse(plain.out)["sequences"][0]["tokens"]);
}

// capacity --delta-layers: Llama 2 7B's 32 layers, 2 full, selections at 2 and 16, at 32K tokens: the
// keys and bytes a step reads fall, the speed rises; a role list of another length is refused.
TEST(Cli, CapacityPredictsDeltasBytesReadAndSpeed) {
  const std::string roles = "ffs" + std::string(13, 'p') + "s" + std::string(15, 'p');
  const test::CliResult r = run_kvplan("capacity --model-config llama-2-7b --hardware h100-80gb --context 32768 "
                                       "--keep 1 --batch 8 --json --delta-layers " + roles);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const nlohmann::json j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["plan"]["kv_bytes_per_sequence"], j["full"]["kv_bytes_per_sequence"]);
  EXPECT_LT(j["plan"]["kv_bytes_read_per_step"].get<double>(), 0.2 * j["full"]["kv_bytes_read_per_step"].get<double>());
  EXPECT_GT(j["plan"]["tokens_per_s"].get<double>(), j["full"]["tokens_per_s"].get<double>());
  const test::CliResult bad = run_kvplan("capacity --model-config llama-2-7b --keep 1 --delta-layers fsppp");
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_NE(bad.err.find("--delta-layers: expected one role per layer (32 letters of f, s, p), found 5"), std::string::npos)
      << bad.err;
}

}  // namespace
}  // namespace kvp
