// Task traces and the task-accuracy predictor: bf16 against hand-computed bits, the trace file's
// round trip and its rejections (next to the valid file accepted), the replay's cut and features
// against a hand-worked instance, the predictor recovering a known model from synthetic outcomes,
// its YAML round trip and strict parsing, and the goals' metrics on a hand-made check.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "planner/task_calibration.h"
#include "planner/task_trace.h"

namespace kvp {
namespace task_predict_test {

TEST(TaskTraceBf16, RoundsToNearestEven) {
  EXPECT_EQ(to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(to_bf16(0.5f), 0x3f00);
  // 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: to the even mantissa, 1.
  EXPECT_EQ(to_bf16(1.0f + 1.0f / 256), 0x3f80);
  // 1 + 3 × 2^-8 lies halfway between 1 + 2^-7 and 1 + 2^-6: to the even one, 1 + 2^-6.
  EXPECT_EQ(to_bf16(1.0f + 3.0f / 256), 0x3f82);
  EXPECT_FLOAT_EQ(from_bf16(0x3f82), 1.0f + 1.0f / 64);
  EXPECT_EQ(from_bf16(to_bf16(0.0f)), 0.0f);
}

// Two layers, one KV head, cut 6; scorers h2o and vatp (with aux).
TaskTrace small_trace() {
  TaskTrace t{.model_fingerprint = std::string(64, 'b'), .n_layers = 2, .n_kv_heads = 1, .cut_point = "agnostic",
              .tasks = "t.jsonl"};
  PolicyParams h2o;
  t.scorers = {TaskTraceScorer{"h2o", h2o}, TaskTraceScorer{"vatp", h2o}};
  TaskTraceInstance a{.id = "niah_single-8-0", .family = "niah_single", .length = 8, .prompt_tokens = 8, .cut = 6,
                      .needles = {{2, 4}}, .full_score = 1, .answer_rows = 2};
  // Layer 0: scores 5 1 4 0 3 2; layer 1: 0 1 2 3 4 5.
  a.score = {{5, 1, 4, 0, 3, 2, 0, 1, 2, 3, 4, 5}, {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1}};
  a.aux = {{}, {1, 2, 3, 4, 5, 6, 6, 5, 4, 3, 2, 1}};
  a.answer_attention = {0.125f, 0.25f, 0.25f, 0.125f, 0.125f, 0.125f, 0.5f, 0, 0, 0.25f, 0, 0.25f};
  TaskTraceInstance b = a;
  b.id = "fwe-8-0", b.family = "fwe", b.needles.clear(), b.full_score = 0.5;
  t.instances = {a, b};
  return t;
}

std::vector<uint8_t> bytes_of(const TaskTrace& t) {
  const std::string path = ::testing::TempDir() + "/small.kvtt";
  EXPECT_TRUE(t.save(path).ok());
  std::FILE* f = std::fopen(path.c_str(), "rb");
  std::vector<uint8_t> b(1 << 16);
  b.resize(std::fread(b.data(), 1, b.size(), f));
  std::fclose(f);
  return b;
}

TEST(TaskTraceFile, RoundTrips) {
  const TaskTrace t = small_trace();
  const std::vector<uint8_t> b = bytes_of(t);
  auto back = TaskTrace::parse(b, "small.kvtt");
  ASSERT_TRUE(back.ok()) << back.error().message();
  EXPECT_EQ(back->model_fingerprint, t.model_fingerprint);
  ASSERT_EQ(back->scorers.size(), 2u);
  EXPECT_EQ(back->scorers[1].policy, "vatp");
  ASSERT_EQ(back->instances.size(), 2u);
  EXPECT_EQ(back->instances[0].score, t.instances[0].score);
  EXPECT_EQ(back->instances[0].aux, t.instances[0].aux);
  EXPECT_EQ(back->instances[0].answer_attention, t.instances[0].answer_attention);  // exact in bf16
  EXPECT_EQ(back->instances[0].needles, t.instances[0].needles);
  EXPECT_EQ(back->instances[1].full_score, 0.5);
}

TEST(TaskTraceFile, RejectsCorruptFilesNamingTheField) {
  const std::vector<uint8_t> good = bytes_of(small_trace());
  ASSERT_TRUE(TaskTrace::parse(good, "t.kvtt").ok());
  // Every truncation fails.
  for (size_t n : {size_t(0), size_t(7), size_t(20), good.size() / 2, good.size() - 1}) {
    auto r = TaskTrace::parse(std::span(good.data(), n), "t.kvtt");
    ASSERT_FALSE(r.ok()) << n;
    EXPECT_NE(r.error().message().find("t.kvtt: "), std::string::npos);
  }
  auto with_header = [&](const std::string& from, const std::string& to) {
    uint64_t len = 0;
    std::memcpy(&len, good.data() + 8, 8);
    std::string header(good.begin() + 16, good.begin() + 16 + len);
    const size_t at = header.find(from);
    EXPECT_NE(at, std::string::npos) << from;
    header.replace(at, from.size(), to);
    std::vector<uint8_t> b(good.begin(), good.begin() + 8);
    const uint64_t nl = header.size();
    b.insert(b.end(), reinterpret_cast<const uint8_t*>(&nl), reinterpret_cast<const uint8_t*>(&nl) + 8);
    b.insert(b.end(), header.begin(), header.end());
    b.insert(b.end(), good.begin() + 16 + len, good.end());
    return TaskTrace::parse(b, "t.kvtt");
  };
  auto expect_error = [](const Result<TaskTrace>& r, const std::string& field) {
    ASSERT_FALSE(r.ok()) << field;
    EXPECT_NE(r.error().message().find(field), std::string::npos) << r.error().message();
  };
  expect_error(with_header("\"needles\":[[2,4]]", "\"needles\":[[2,9]]"), "instances[0].needles[0]");
  expect_error(with_header("\"cut_point\":\"agnostic\"", "\"cut_point\":\"sideways\""), "cut_point");
  expect_error(with_header("\"policy\":\"vatp\"", "\"policy\":\"nope\""), "scorers[1].policy");
  expect_error(with_header("\"full_score\":0.5", "\"full_score\":1.5"), "instances[1].full_score");
  expect_error(with_header("\"n_layers\":2", "\"n_layers\":3"), "truncated");
  // A byte more than the arrays: not a file this kvplan wrote.
  std::vector<uint8_t> longer = good;
  longer.push_back(0);
  expect_error(TaskTrace::parse(longer, "t.kvtt"), "after the last instance");
}

TEST(TaskReplay, CutsAndMeasuresAHandWorkedInstance) {
  const TaskTrace t = small_trace();
  // H2O with no sinks and one recent slot, 3 slots: position 5 is protected; layer 0 keeps the
  // highest scores of the rest, positions 0 (5) and 2 (4); layer 1 keeps 3 and 4.
  auto h2o = make_policy("h2o", PolicyParams{.sinks = 0, .recent = 1});
  ASSERT_TRUE(h2o.ok());
  ASSERT_EQ(t.scorer_for(**h2o), 0);
  const std::vector<int32_t> budgets = {3, 3};
  auto f = replay_task(t, t.instances[0], **h2o, budgets);
  ASSERT_TRUE(f.ok()) << f.error().message();
  // Needles 2 and 3: layer 0 keeps 2, layer 1 keeps 3: 2 of 4.
  EXPECT_DOUBLE_EQ(f->needles, 0.5);
  // Attention kept: layer 0 0.125 + 0.25 + 0.125 = 0.5 of 1; layer 1 0.25 + 0 + 0.25 = 0.5 of 1.
  EXPECT_DOUBLE_EQ(f->mass, 0.5);
  // On the needles: layer 0 0.25 of 0.375, layer 1 0.25 of 0.25: 0.5 of 0.625.
  EXPECT_DOUBLE_EQ(f->needle_mass, 0.5 / 0.625);
  // Per needle token, attention kept over attention drawn: position 2 0.25 of 0.25 (layer 0 keeps
  // it), position 3 0.25 of 0.375 (layer 1 keeps it): the worst is 2/3.
  EXPECT_DOUBLE_EQ(f->needle_min, 0.25 / 0.375);
  EXPECT_EQ(f->full_score, 1.0);
  // No needles: both needle features fall back to the attention kept.
  auto g = replay_task(t, t.instances[1], **h2o, budgets);
  ASSERT_TRUE(g.ok());
  EXPECT_DOUBLE_EQ(g->needles, 0.5);
  EXPECT_DOUBLE_EQ(g->needle_mass, 0.5);
  EXPECT_DOUBLE_EQ(g->needle_min, 0.5);
  // A budget at the cut keeps everything.
  auto all = replay_task(t, t.instances[0], **h2o, std::vector<int32_t>{6, 6});
  ASSERT_TRUE(all.ok());
  EXPECT_DOUBLE_EQ(all->needles, 1.0);
  EXPECT_DOUBLE_EQ(all->mass, 1.0);
  // A policy the trace has no scores for is refused by name.
  auto tova = make_policy("tova", PolicyParams{.sinks = 0, .recent = 1});
  auto r = replay_task(t, t.instances[0], **tova, budgets);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message().find("tova"), std::string::npos);
}

// Synthetic outcomes: p = σ(−4 + 8 · needle_mass) where the full cache answers, 0.1 where it does
// not; needles and mass are noise. A small deterministic generator keeps the data the same on
// every standard library.
std::vector<TaskObservation> synthetic(int instances, int configs, uint64_t seed) {
  uint64_t state = seed;
  auto uniform = [&] {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    return double(state >> 11) / double(1ull << 53);
  };
  std::vector<TaskObservation> obs;
  for (int i = 0; i < instances; ++i) {
    const double full = i % 5 == 4 ? 0.0 : 1.0;
    for (int c = 0; c < configs; ++c) {
      TaskObservation o{.config = "c" + std::to_string(c), .policy = c % 2 ? "h2o" : "tova",
                        .instance = "i" + std::to_string(i), .family = "niah_single", .length = 2048,
                        .budget = 100 * (c / 2 + 1)};
      o.features = TaskFeatures{.needles = uniform(), .mass = uniform(), .needle_mass = uniform(), .full_score = full};
      const double p = full * (1 / (1 + std::exp(-(-4 + 8 * o.features.needle_mass)))) + (1 - full) * 0.1;
      o.score = uniform() < p ? 1.0 : 0.0;
      obs.push_back(o);
    }
  }
  return obs;
}

TEST(TaskCalibrationFit, RecoversAKnownModel) {
  const std::vector<TaskObservation> obs = synthetic(200, 10, 7);
  std::vector<double> held;
  auto cal = fit_task_calibration(obs, std::string(64, 'b'), &held);
  ASSERT_TRUE(cal.ok()) << cal.error().message();
  // The feature that carries the signal, alone, as itself.
  EXPECT_EQ(cal->features, std::vector<int>({2}));
  EXPECT_FALSE(cal->lost);
  ASSERT_EQ(cal->coef.size(), 2u);
  EXPECT_NEAR(cal->coef[0], -4, 0.6);
  EXPECT_NEAR(cal->coef[1], 8, 1.0);
  // r = Σ score / (n + 1) over the rows the full cache misses.
  double rescued = 0, missed = 0;
  for (const TaskObservation& o : obs) {
    if (o.features.full_score == 0) rescued += o.score, ++missed;
  }
  EXPECT_DOUBLE_EQ(cal->rescue_rate, rescued / (missed + 1));
  EXPECT_EQ(held.size(), obs.size());
  EXPECT_EQ(cal->n_instances, 200);
  EXPECT_EQ(cal->n_configs, 10);
  // An instance the full cache answers, every needle token's attention kept: σ(β₀ + β₁).
  const TaskFeatures kept{.needles = 1, .mass = 1, .needle_mass = 1, .full_score = 1};
  EXPECT_DOUBLE_EQ(cal->instance_probability(kept), 1 / (1 + std::exp(-(cal->coef[0] + cal->coef[1]))));
  // The interval holds the mean and widens with fewer instances.
  const std::vector<TaskFeatures> four(4, kept), forty(40, kept);
  const TaskAccuracy a4 = cal->predict(four), a40 = cal->predict(forty);
  EXPECT_NEAR(a4.accuracy, a40.accuracy, 1e-12);
  EXPECT_LE(a4.low, a4.accuracy);
  EXPECT_GE(a4.high, a4.accuracy);
  EXPECT_GT(a4.high - a4.low, a40.high - a40.low);
}

TEST(TaskCalibrationFit, RefusesTooLittleEvidence) {
  EXPECT_FALSE(fit_task_calibration(synthetic(1, 5, 1), "f").ok());  // 5 observations
  std::vector<TaskObservation> none = synthetic(4, 5, 1);
  for (TaskObservation& o : none) o.features.full_score = 0;
  auto r = fit_task_calibration(none, "f");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message().find("answers no instance"), std::string::npos);
  EXPECT_TRUE(fit_task_calibration(synthetic(4, 5, 1), "f").ok());
}

TEST(TaskCalibrationFile, RoundTripsAndRejectsBadFields) {
  auto cal = fit_task_calibration(synthetic(50, 6, 3), std::string(64, 'c'));
  ASSERT_TRUE(cal.ok());
  const std::string text = cal->to_yaml();
  auto back = TaskCalibration::parse(text, "tc.yaml");
  ASSERT_TRUE(back.ok()) << back.error().message();
  EXPECT_EQ(back->features, cal->features);
  EXPECT_EQ(back->coef, cal->coef);  // 17 significant digits: the same doubles
  EXPECT_EQ(back->model_sd, cal->model_sd);
  EXPECT_EQ(back->lengths, cal->lengths);
  const TaskFeatures f{.needles = 0.3, .mass = 0.7, .needle_mass = 0.4, .full_score = 1};
  EXPECT_EQ(back->instance_probability(f), cal->instance_probability(f));
  auto expect_error = [&](const std::string& from, const std::string& to, const std::string& field) {
    std::string bad = text;
    const size_t at = bad.find(from);
    ASSERT_NE(at, std::string::npos) << from;
    bad.replace(at, from.size(), to);
    auto r = TaskCalibration::parse(bad, "tc.yaml");
    ASSERT_FALSE(r.ok()) << field;
    EXPECT_NE(r.error().message().find("tc.yaml: " + field), std::string::npos) << r.error().message();
  };
  expect_error("format: kvplan-task-calibration", "format: kvplan-calibration", "format");
  expect_error("features: [", "features: [bogus, ", "model.features");
  expect_error("coef: [", "coef: [1, ", "model.coef");
  expect_error("z: 1.96", "z: -1", "model.z");
  expect_error("model_sd:", "model_sdx:", "model");
}

TEST(TaskPredictionCheck, MetricsOnAHandMadeCheck) {
  // One memory (budget 100), three configurations on two instances each.
  std::vector<TaskObservation> obs;
  auto add = [&](const std::string& config, const std::string& inst, double score) {
    obs.push_back(TaskObservation{.config = config, .policy = config, .instance = inst, .length = 4096, .budget = 100,
                                  .score = score});
  };
  add("a", "i0", 1), add("a", "i1", 1);  // measured 1.0
  add("b", "i0", 1), add("b", "i1", 0);  // 0.5
  add("c", "i0", 0), add("c", "i1", 0);  // 0.0
  const std::vector<double> p = {0.9, 0.9, 0.5, 0.5, 0.2, 0.0};  // predicted 0.9, 0.5, 0.1
  TaskCalibration cal;
  cal.model_sd = 0;
  const TaskPredictionCheck c = check_task_predictions(cal, obs, p);
  ASSERT_EQ(c.configs.size(), 3u);
  EXPECT_NEAR(c.mae, (0.1 + 0.0 + 0.1) / 3, 1e-12);
  ASSERT_EQ(c.memories.size(), 1u);
  EXPECT_DOUBLE_EQ(c.memories[0].spearman, 1.0);
  EXPECT_EQ(c.memories[0].predicted_best, "a");
  EXPECT_TRUE(c.memories[0].best_ok);
  EXPECT_DOUBLE_EQ(c.best_rate, 1.0);
  // Intervals: a: 0.9 ± 1.96 √(2 × 0.09 / 4) = [0.484, 1]: covers 1; b: 0.5 ± 1.96 √(0.5/4): covers
  // 0.5; c: 0.1 ± 1.96 √(0.16/4) = [0, 0.492]: covers 0.
  EXPECT_DOUBLE_EQ(c.coverage, 1.0);
  EXPECT_NEAR(c.configs[0].predicted.low, 0.9 - 1.96 * std::sqrt(0.18 / 4), 1e-12);
}

}  // namespace task_predict_test
}  // namespace kvp
