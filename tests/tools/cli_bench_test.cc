// The kvplan binary's throughput measurements: bench's cells, their timed step parts and the rates
// probed beside them, and capacity --measured holding each cell against its prediction.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>
#include <string>

#include "common/file_util.h"
#include "tests/support/test_support.h"

namespace kvp {
namespace {

using test::run_kvplan;

// kvplan bench on stories260K, then capacity --measured on its file: every cell's tokens/s and its
// timed step parts (matrix products and attention, which take part of a step and not more than all
// of it), and each cell against its prediction.
TEST(Cli, BenchTimesStepPartsAndCapacityComparesThem) {
  const std::string dir = test::make_temp_dir("bench");
  const test::CliResult b = run_kvplan("bench --batch 1,2 --context 64 --keep 1,0.5 --steps 3 --min-seconds 0 "
                                       "--repeats 2 --out " + dir + "/bench.json");
  ASSERT_EQ(b.exit_code, 0) << b.err;
  const nlohmann::json bench = nlohmann::json::parse(*read_file_text(dir + "/bench.json"));
  ASSERT_EQ(bench["cells"].size(), 4u);
  for (const auto& c : bench["cells"]) {
    const double step_s = c["batch"].get<double>() / c["tokens_per_s"].get<double>();
    EXPECT_GE(c["steps"].get<int>(), 3);
    EXPECT_EQ(c["runs_tokens_per_s"].size(), 2u);
    EXPECT_GT(c["weights_s"].get<double>(), 0.0);
    EXPECT_GT(c["attention_s"].get<double>(), 0.0);
    EXPECT_LT(c["weights_s"].get<double>() + c["attention_s"].get<double>(), step_s) << c.dump();
  }
  const test::CliResult cap = run_kvplan("capacity --measured " + dir + "/bench.json --hardware cpu-2core --json");
  ASSERT_EQ(cap.exit_code, 0) << cap.err;
  const auto j = nlohmann::json::parse(cap.out);
  ASSERT_EQ(j["cells"].size(), 4u);
  for (size_t i = 0; i < 4; ++i) {
    const auto& c = j["cells"][i];
    EXPECT_EQ(c["measured_tokens_per_s"], bench["cells"][i]["tokens_per_s"]);
    EXPECT_EQ(c["measured_weights_s"], bench["cells"][i]["weights_s"]);
    EXPECT_GT(c["predicted_tokens_per_s"].get<double>(), 0.0);
  }
  EXPECT_TRUE(j["cells"][1].contains("speedup_error"));  // keep 0.5 against the full cache of its batch
  EXPECT_EQ(j["probed_cells"], 0);
  // Rates probed beside a cell (bench --probe) replace the hardware file's for that cell alone:
  // twice the file's f32 weight-product rates with no call costs give half the weights' time.
  nlohmann::json probed = bench;
  auto probe = [&](double scale) {
    return nlohmann::json{{"type", "f32"}, {"matmul_flops", 6.0e10 * scale}, {"matmul_stream_flops", 3.0e10 * scale},
                          {"matmul_stream_call_s", 0.0}, {"matmul_stream1_flops", 1.5e10 * scale},
                          {"matmul_stream1_call_s", 0.0}, {"attention_flops", 2.0e10},
                          {"attention_batch_flops", 2.0e10}, {"evict_slot_s", 1e-9}};
  };
  probed["cells"][0]["probe"] = probe(1.0);
  probed["cells"][2]["probe"] = probe(2.0);
  probed["cells"][2]["batch"] = 1;  // cell 0's shape, twice as fast a machine
  probed["cells"][2]["keep"] = 1.0;
  test::write_bytes(dir + "/probed.json", probed.dump());
  const test::CliResult with = run_kvplan("capacity --measured " + dir + "/probed.json --hardware cpu-2core --json");
  ASSERT_EQ(with.exit_code, 0) << with.err;
  const auto w = nlohmann::json::parse(with.out);
  EXPECT_EQ(w["probed_cells"], 2);
  EXPECT_NEAR(w["cells"][2]["weights_s"].get<double>(), w["cells"][0]["weights_s"].get<double>() / 2,
              1e-12 * w["cells"][0]["weights_s"].get<double>());
  EXPECT_EQ(w["cells"][1]["weights_s"], j["cells"][1]["weights_s"]) << "an unprobed cell keeps the file's rates";
  probed["cells"][0]["probe"]["type"] = "q8_0";
  test::write_bytes(dir + "/probed.json", probed.dump());
  const test::CliResult wrong = run_kvplan("capacity --measured " + dir + "/probed.json --hardware cpu-2core");
  EXPECT_NE(wrong.exit_code, 0);
  EXPECT_NE(wrong.err.find("probe.type: q8_0 rates for a model of f32 weights"), std::string::npos) << wrong.err;
  const test::CliResult gpu = run_kvplan("bench --probe --backend gpu-emulated --context 64 --out " + dir + "/g.json");
  EXPECT_NE(gpu.exit_code, 0);
  EXPECT_NE(gpu.err.find("--probe: measures the CPU backend's kernels"), std::string::npos) << gpu.err;
  // Not a bench file: one line naming it.
  test::write_bytes(dir + "/other.json", "{\"format\": \"kvplan-trace\"}");
  const test::CliResult bad = run_kvplan("capacity --measured " + dir + "/other.json --hardware cpu-2core");
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_NE(bad.err.find(dir + "/other.json"), std::string::npos) << bad.err;
}

// bench --probe: one probe of the model's rates per repeat of a group, kept with the cells, and each
// rate's best of them as the cell's probe (the statistic of the cell's own figure).
TEST(Cli, BenchProbesTheRatesBesideEachRepeat) {
  const std::string dir = test::make_temp_dir("benchprobe");
  const test::CliResult b = run_kvplan("bench --batch 1 --context 64 --keep 1,0.5 --steps 2 --min-seconds 0 --repeats 2 "
                                       "--probe --probe-seconds 0.01 --probe-memory 16MiB --threads 2 --out " + dir +
                                       "/bench.json");
  ASSERT_EQ(b.exit_code, 0) << b.err;
  const nlohmann::json bench = nlohmann::json::parse(*read_file_text(dir + "/bench.json"));
  for (const auto& c : bench["cells"]) {
    ASSERT_EQ(c["probes"].size(), 2u) << c.dump();
    EXPECT_EQ(c["probes"], bench["cells"][0]["probes"]) << "one probe per repeat, shared by the group's cells";
    const auto& best = c["probe"];
    EXPECT_EQ(best["type"], "f32");
    for (const char* rate : {"matmul_flops", "matmul_stream_flops", "matmul_stream1_flops", "attention_flops",
                             "attention_batch_flops"}) {
      EXPECT_GT(best[rate].get<double>(), 0.0) << rate;
      EXPECT_EQ(best[rate].get<double>(), std::max(c["probes"][0][rate].get<double>(), c["probes"][1][rate].get<double>()))
          << rate;
    }
    EXPECT_EQ(best["evict_slot_s"].get<double>(),
              std::min(c["probes"][0]["evict_slot_s"].get<double>(), c["probes"][1]["evict_slot_s"].get<double>()));
  }
  const test::CliResult cap = run_kvplan("capacity --measured " + dir + "/bench.json --hardware cpu-2core --json");
  ASSERT_EQ(cap.exit_code, 0) << cap.err;
  EXPECT_EQ(nlohmann::json::parse(cap.out)["probed_cells"], 2);
  // Too little memory to stream is refused before anything runs, with nothing written.
  test::expect_one_line_error("bench --batch 1 --context 64 --probe --probe-memory 1KiB --out " + dir + "/small.json",
                              "--probe-memory: 1024 bytes is too little to stream");
  EXPECT_FALSE(std::filesystem::exists(dir + "/small.json"));
}

}  // namespace
}  // namespace kvp
