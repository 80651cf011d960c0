// The kvplan binary with ThinK and Mustafar: plan --memory choosing among their settings, a
// compressed plan on the CPU and the emulated GPU, and serve's dense GPU pool. The flags' one-line
// errors are with the other bad input in cli_test.cc.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "planner/plan/plan.h"
#include "tests/support/test_support.h"

namespace kvp {
namespace {

using test::run_kvplan;

// plan --memory choosing among ThinK and Mustafar settings: every combination planned at the same
// bytes, the lowest residual energy written (no calibration given).
std::string choosing_trace(const std::string& dir) {
  EXPECT_EQ(run_kvplan("corpus --sample 3 --length 96 --out " + dir + "/c.jsonl").exit_code, 0);
  EXPECT_EQ(run_kvplan("record --corpus " + dir + "/c.jsonl --prompt-len 16 --out " + dir + "/t").exit_code, 0);
  return "plan --trace " + dir + "/t --policy vatp --memory 60000 --sinks 2 --recent 4 --think-recent 8 "
         "--mustafar-recent 8 ";
}

TEST(Cli, PlanMemoryChoosesTheCompressionWithTheLowestResidualEnergy) {
  const std::string dir = test::make_temp_dir("clichoose");
  const std::string plan_args = choosing_trace(dir);
  const test::CliResult plan =
      run_kvplan(plan_args + "--think-ratios 0,0.4 --mustafar-ratios 0,0.5 --out " + dir + "/p.yaml");
  ASSERT_EQ(plan.exit_code, 0) << plan.err;
  std::map<std::string, double> energy;
  std::istringstream lines(plan.out);
  for (std::string line; std::getline(lines, line);) {
    char label[64];
    long long bytes = 0;
    double e = 0;
    if (std::sscanf(line.c_str(), "candidate %63[^:]: %lld KV bytes per sequence, residual energy %lf", label, &bytes,
                    &e) == 3) {
      EXPECT_LE(bytes, 60000) << line;
      energy[label] = e;
    }
  }
  ASSERT_EQ(energy.size(), 4u) << plan.out;
  const auto best = std::min_element(energy.begin(), energy.end(),
                                     [](const auto& a, const auto& b) { return a.second < b.second; });
  auto written = Plan::load(dir + "/p.yaml");
  ASSERT_TRUE(written.ok()) << written.error().message();
  EXPECT_EQ("vatp" + written->compression.label(), best->first);
  EXPECT_NE(written->provenance["chosen"].find("4 combinations"), std::string::npos);
  const test::CliResult run = run_kvplan("run --plan " + dir + "/p.yaml --steps 64 --json");
  ASSERT_EQ(run.exit_code, 0) << run.err;
  EXPECT_EQ(nlohmann::json::parse(run.out)["kv_bytes"], written->kv_bytes_per_sequence);
}

// A compressed plan (one-element lists force ThinK and Mustafar) runs in exactly its bytes on the
// CPU and on the emulated GPU backend, with the same tokens.
TEST(Cli, CompressedPlanRunsOnTheCpuAndTheEmulatedGpuInItsBytes) {
  const std::string dir = test::make_temp_dir("clicompressed");
  const test::CliResult plan =
      run_kvplan(choosing_trace(dir) + "--think-ratios 0.4 --mustafar-ratios 0.5 --out " + dir + "/q.yaml");
  ASSERT_EQ(plan.exit_code, 0) << plan.err;
  auto compressed = Plan::load(dir + "/q.yaml");
  ASSERT_TRUE(compressed.ok() && compressed->compression.think() && compressed->compression.mustafar());
  std::vector<nlohmann::json> tokens;
  for (const char* backend : {"cpu", "gpu-emulated"}) {
    const test::CliResult r =
        run_kvplan(std::string("run --backend ") + backend + " --plan " + dir + "/q.yaml --steps 64 --json");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const auto j = nlohmann::json::parse(r.out);
    EXPECT_EQ(j["kv_bytes"], compressed->kv_bytes_per_sequence) << backend;
    tokens.push_back(j["sequences"][0]["tokens"]);
  }
  EXPECT_EQ(tokens[0], tokens[1]);
}

// serve listens before it loads, so its refusal is the last line rather than the only one.
TEST(Cli, ServeRefusesACompressedPlanOnTheEmulatedGpuPoolAndNamesTheField) {
  const std::string dir = test::make_temp_dir("cliservethink");
  ASSERT_EQ(run_kvplan("plan --policy vatp --budget 32 --think 0.4 --out " + dir + "/p.yaml").exit_code, 0);
  const test::CliResult r = run_kvplan("serve --port 0 --backend gpu-emulated --plan " + dir + "/p.yaml");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("p.yaml: key_channels: the GPU backend's serving pool holds dense caches only"), std::string::npos)
      << r.err;
}

}  // namespace
}  // namespace kvp
