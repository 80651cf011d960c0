// Calibration: Spearman against hand-computed values, the fit recovering a known map from
// synthetic replay errors, intervals and range, and calib.yaml round trips and strict parsing.
#include "planner/calibration.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>

namespace kvp {
namespace {

TEST(Spearman, HandComputedWithTies) {
  EXPECT_DOUBLE_EQ(spearman({1, 2, 3, 4}, {10, 20, 30, 40}), 1.0);
  EXPECT_DOUBLE_EQ(spearman({1, 2, 3, 4}, {4, 3, 2, 1}), -1.0);
  // Ranks (1, 2.5, 2.5, 4) against (1, 2, 3, 4): covariance 4.5 over sqrt(4.5 * 5).
  EXPECT_NEAR(spearman({1, 2, 2, 3}, {1, 2, 3, 4}), 4.5 / std::sqrt(4.5 * 5.0), 1e-12);
  EXPECT_EQ(spearman({1, 1, 1}, {1, 2, 3}), 0.0);
}

PlanModel model3() {
  return PlanModel{.fingerprint = std::string(64, 'a'), .dim = 8, .n_layers = 3, .n_heads = 2, .n_kv_heads = 1,
                   .head_dim = 4, .vocab_size = 32, .seq_len = 64};
}

// ΔNLL = (0.5 E0 + 2 E1 + 0 E2)^1.2 and 1 − top1 = 0.8 ΔNLL^0.9, with 3% multiplicative noise.
std::vector<CalibrationPoint> synthetic(int n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> e(0.001, 0.3), noise(-0.03, 0.03);
  std::vector<CalibrationPoint> pts;
  for (int i = 0; i < n; ++i) {
    CalibrationPoint p{.label = "p" + std::to_string(i), .policy = i % 2 ? "h2o" : "vatp", .kv_bytes_per_sequence = 100 * i,
                       .layer_energy = {e(rng), e(rng), e(rng)}};
    const double nll = std::pow(0.5 * p.layer_energy[0] + 2 * p.layer_energy[1], 1.2);
    p.delta_nll = nll * (1 + noise(rng));
    p.top1_agreement = 1 - 0.8 * std::pow(nll, 0.9) * (1 + noise(rng));
    pts.push_back(p);
  }
  return pts;
}

TEST(Calibration, RecoversAKnownMapAndRanksPerfectly) {
  auto fit = fit_calibration(model3(), synthetic(40, 1));
  ASSERT_TRUE(fit.ok()) << fit.error().message();
  const Calibration& c = *fit;
  EXPECT_NEAR(c.nll_power, 1.2, 0.05);
  EXPECT_GT(c.fit.spearman_loo, 0.98);
  EXPECT_LT(c.fit.delta_nll_mae_loo, 0.03 * c.fit.delta_nll_spread);
  // Fresh points from the same map: predictions within a few percent, top-1 too.
  for (const CalibrationPoint& p : synthetic(10, 2)) {
    const Prediction pr = c.predict(p.layer_energy);
    const double truth = std::pow(0.5 * p.layer_energy[0] + 2 * p.layer_energy[1], 1.2);
    EXPECT_NEAR(pr.delta_nll, truth, 0.08 * truth) << p.label;
    EXPECT_LE(pr.delta_nll_low, pr.delta_nll);
    EXPECT_GE(pr.delta_nll_high, pr.delta_nll);
    EXPECT_NEAR(1 - pr.top1_agreement, 0.8 * std::pow(truth, 0.9), 0.1 * 0.8 * std::pow(truth, 0.9)) << p.label;
    EXPECT_LE(pr.top1_low, pr.top1_agreement);
    EXPECT_GE(pr.top1_high, pr.top1_agreement);
  }
  // Far beyond the calibrated errors: flagged.
  EXPECT_FALSE(c.predict({30, 30, 30}).in_range);
  EXPECT_TRUE(c.predict({0.1, 0.1, 0.1}).in_range);
}

// A policy whose configurations measure twice what the layer map predicts from their replay (h2o
// here, the same energies as vatp's): its offset is log 2 and its predictions double; vatp's stays
// near 0; a policy the calibration never saw, and one-layer probes (which fit the layer weights and
// not the offsets), get none; configurations erring in two layers count. The offsets survive calib.yaml (version 2).
TEST(Calibration, PolicyOffsetsCarryEachPolicysBias) {
  std::vector<CalibrationPoint> pts = synthetic(40, 4);
  for (CalibrationPoint& p : pts) {
    if (p.policy == "h2o") p.delta_nll *= 2;
  }
  for (int l = 0; l < 3; ++l) {  // probes of a third policy, one layer each, measured at 3x the map
    CalibrationPoint probe{.label = "probe", .policy = "tova", .layer_energy = {0, 0, 0}};
    probe.layer_energy[l] = 0.2;
    probe.delta_nll = 3 * std::pow(0.5 * probe.layer_energy[0] + 2 * probe.layer_energy[1], 1.2);
    probe.top1_agreement = 0.9;
    if (l < 2) pts.push_back(probe);
  }
  auto fit = fit_calibration(model3(), pts);
  ASSERT_TRUE(fit.ok()) << fit.error().message();
  const Calibration& c = *fit;
  ASSERT_EQ(c.policy_offsets.size(), 2u);
  EXPECT_GT(c.policy_offsets.at("h2o") - c.policy_offsets.at("vatp"), std::log(2.0) - 0.05);
  EXPECT_LT(c.policy_offsets.at("h2o") - c.policy_offsets.at("vatp"), std::log(2.0) + 0.05);
  EXPECT_EQ(c.policy_offsets.count("tova"), 0u);
  const std::vector<double> e = {0.1, 0.05, 0.2};
  EXPECT_NEAR(c.predict(e, "h2o").delta_nll / c.predict(e, "vatp").delta_nll, 2.0, 0.1);
  EXPECT_EQ(c.predict(e, "tova").delta_nll, c.predict(e).delta_nll);
  EXPECT_LT(c.predict(e, "vatp").delta_nll_low, c.predict(e, "vatp").delta_nll);
  const std::string yaml = c.to_yaml();
  EXPECT_NE(yaml.find("version: 2"), std::string::npos);
  auto back = Calibration::parse(yaml, "calib.yaml");
  ASSERT_TRUE(back.ok()) << back.error().message();
  EXPECT_NEAR(back->predict(e, "h2o").delta_nll, c.predict(e, "h2o").delta_nll, 1e-6 * c.predict(e, "h2o").delta_nll);
  EXPECT_EQ(back->to_yaml(), yaml);
  // A version-1 file cannot carry them.
  std::string v1 = yaml;
  v1.replace(v1.find("version: 2"), 10, "version: 1");
  auto refused = Calibration::parse(v1, "c.yaml");
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.error().message().find("c.yaml: map.policy_offsets: unknown field"), std::string::npos)
      << refused.error().message();
  // The key: VATP's mean base, compression and DELTA set apart.
  EXPECT_EQ(calibration_policy_key("vatp", {.vatp_base = VatpBase::kMean}, {}), "vatp_mean");
  EXPECT_EQ(calibration_policy_key("vatp", {}, {}), "vatp");
  EXPECT_EQ(calibration_policy_key("full", {.delta = {.layers = "fsppp"}}, {}), "full+delta");
  EXPECT_EQ(calibration_policy_key("h2o", {}, PlanCompression{.think_ratio = {0.4}}), "h2o+think0.4");
}

TEST(Calibration, RefusesTooFewPoints) {
  auto fit = fit_calibration(model3(), synthetic(5, 1));
  ASSERT_FALSE(fit.ok());
  EXPECT_NE(fit.error().message().find("at least 7"), std::string::npos) << fit.error().message();
}

TEST(Calibration, YamlRoundTripPredictsTheSame) {
  auto fit = fit_calibration(model3(), synthetic(20, 3));
  ASSERT_TRUE(fit.ok());
  const std::string yaml = fit->to_yaml();
  auto back = Calibration::parse(yaml, "calib.yaml");
  ASSERT_TRUE(back.ok()) << back.error().message();
  for (const auto& e : std::vector<std::vector<double>>{{0.01, 0.02, 0.03}, {0.2, 0.1, 0.0}}) {
    EXPECT_NEAR(back->predict(e).delta_nll, fit->predict(e).delta_nll, 1e-6 * fit->predict(e).delta_nll);
    EXPECT_NEAR(back->predict(e).top1_high, fit->predict(e).top1_high, 1e-6);
  }
  EXPECT_EQ(back->points.size(), 20u);
  EXPECT_EQ(back->to_yaml(), yaml);
}

TEST(Calibration, StrictParsingNamesTheField) {
  auto fit = fit_calibration(model3(), synthetic(20, 3));
  ASSERT_TRUE(fit.ok());
  std::string yaml = fit->to_yaml();
  const size_t at = yaml.find("nll_power:");
  ASSERT_NE(at, std::string::npos);
  std::string bad = yaml;
  bad.replace(at, yaml.find('\n', at) - at, "nll_power: -1");
  auto r = Calibration::parse(bad, "c.yaml");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message().find("c.yaml: map.nll_power"), std::string::npos) << r.error().message();
  auto extra = Calibration::parse(yaml + "surprise: 1\n", "c.yaml");
  ASSERT_FALSE(extra.ok());
  EXPECT_NE(extra.error().message().find("surprise"), std::string::npos);
  auto wrong = Calibration::parse("format: kvplan-plan\nversion: 1\n", "c.yaml");
  ASSERT_FALSE(wrong.ok());
}

TEST(Calibration, MeasuredParamsReadTheDetail) {
  Measured m;
  m.policy = "snapkv";
  m.sinks = 1;
  m.recent = 9;
  m.policy_detail = "window=12 kernel=5";
  auto p = measured_params(m, "m.yaml");
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->sinks, 1);
  EXPECT_EQ(p->recent, 9);
  EXPECT_EQ(p->snap_window, 12);
  EXPECT_EQ(p->snap_kernel, 5);
  m.policy = "vatp";
  m.policy_detail = "base=mean";
  EXPECT_EQ(measured_params(m, "m.yaml")->vatp_base, VatpBase::kMean);
  m.policy_detail = "speed=11";
  auto bad = measured_params(m, "m.yaml");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().message().find("m.yaml: config.detail"), std::string::npos);
}

// measured.yaml carries the configuration's compression (version 2) so calibrate replays what
// eval ran; without compression it stays version 1, and a version 1 file may not hold it.
TEST(Measured, CompressionRoundTripsAsVersionTwo) {
  Measured m;
  m.model_fingerprint = std::string(64, 'a');
  m.policy = "vatp";
  m.policy_detail = "base=h2o";
  m.budgets = {{8, 8}, {6, 6}};
  m.kv_dtype = "f32";
  m.plan_source = "p.yaml";
  m.corpus = "c.jsonl";
  m.n_sequences = 2;
  m.prompt_len = 4;
  m.n_predicted_tokens = 10;
  m.backend = "cpu";
  const std::string plain = m.to_yaml();
  EXPECT_NE(plain.find("version: 1"), std::string::npos);
  ASSERT_TRUE(Measured::parse(plain, "m.yaml").ok());
  EXPECT_FALSE(Measured::parse(plain, "m.yaml")->compression.any());

  m.compression.think_ratio = {0.4};
  m.compression.think_recent = 16;
  m.compression.key_sparsity = {0.5, 0.25};
  m.compression.value_sparsity = {0.5, 0.5};
  const std::string text = m.to_yaml();
  EXPECT_NE(text.find("version: 2"), std::string::npos);
  auto back = Measured::parse(text, "m.yaml");
  ASSERT_TRUE(back.ok()) << back.error().message();
  EXPECT_EQ(back->compression, m.compression);
  EXPECT_EQ(back->compression.label(), "+think0.4+mustafar_kper-layer_vper-layer");

  std::string v1 = text;
  v1.replace(v1.find("version: 2"), 10, "version: 1");
  auto old = Measured::parse(v1, "m.yaml");
  ASSERT_FALSE(old.ok());
  EXPECT_NE(old.error().message().find("m.yaml: config.key_channels: unknown field"), std::string::npos)
      << old.error().message();
  std::string garbled = text;
  garbled.replace(garbled.find("[6, 6]"), 6, "[6, x]");
  auto bad_budget = Measured::parse(garbled, "m.yaml");
  ASSERT_FALSE(bad_budget.ok());
  EXPECT_NE(bad_budget.error().message().find("m.yaml: config.budgets[1][1]: expected a slot count"),
            std::string::npos)
      << bad_budget.error().message();
  std::string three = text;
  three.replace(three.find("[0.5, 0.25]"), 11, "[0.5, 0.25, 0.1]");
  auto wrong = Measured::parse(three, "m.yaml");
  ASSERT_FALSE(wrong.ok());
  EXPECT_NE(wrong.error().message().find("m.yaml: config.sparsity.keys: 3 ratios listed, the model has 2 layers"),
            std::string::npos)
      << wrong.error().message();
}

}  // namespace
}  // namespace kvp
