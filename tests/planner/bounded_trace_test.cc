// Traces bounded at record time (a subset of layers, bf16 storage, a query stride, chunked
// forward passes) hold exactly what the full trace holds at what they keep, and the replay over
// them measures what the full trace measures where it can: the same layers bit for bit, the
// unrecorded layers interpolated, and only the positions whose query was recorded.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "executor/recorder.h"
#include "planner/replay.h"
#include "tests/support/test_support.h"
#include "traces/trace.h"

namespace kvp {
namespace {

using test::default_model;

const char* kText =
    "Once upon a time, there was a little dog named Max. Max liked to run in the park. He ran and ran "
    "until he was very tired, and then he lay down under a big tree and went to sleep.\n\n"
    "Sue had a cat. The cat was very happy and liked to sleep in the sun all day long. One day the cat "
    "saw a bird and wanted to play with it, but the bird flew away.\n";

const Corpus& corpus() {
  static const Corpus c = [] {
    const std::string path = test::make_temp_dir("corpus") + "/stories.txt";
    test::write_bytes(path, kText);
    return load_corpus(path, default_model().tokenizer, default_model().weights.config().seq_len).value();
  }();
  return c;
}

constexpr int kPromptLen = 16;

std::string record(RecordOptions options) {
  options.out_dir = test::make_temp_dir("bounded") + "/trace";
  options.prompt_len = kPromptLen;
  options.tool_version = "test";
  auto stats = record_trace(default_model(), corpus(), options);
  EXPECT_TRUE(stats.ok()) << stats.error().message();
  return options.out_dir;
}

const Trace& full_trace() {
  static const Trace t = Trace::open(record({.chunk = 512})).value();
  return t;
}

std::vector<float> as_bf16(const std::vector<float>& x) {
  std::vector<uint16_t> bits(x.size());
  f32_to_bf16(x, bits);
  std::vector<float> out(x.size());
  bf16_to_f32(bits, out);
  return out;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * 4) == 0;
}

TEST(BoundedTrace, RecordingInChunksGivesTheOnePassTraceBitForBit) {
  const Trace& full = full_trace();
  ASSERT_GT(full.length(0), 64) << "several chunks of 7";
  auto chunked = Trace::open(record({.chunk = 7}));
  ASSERT_TRUE(chunked.ok()) << chunked.error().message();
  for (int s = 0; s < full.n_sequences(); ++s) {
    EXPECT_EQ(chunked->tokens(s), full.tokens(s));
    EXPECT_TRUE(same_bits(chunked->ref_logprob(s), full.ref_logprob(s))) << "sequence " << s;
    for (int l = 0; l < full.model().n_layers; ++l) {
      const TraceLayer a = chunked->layer(s, l), b = full.layer(s, l);
      EXPECT_TRUE(same_bits(a.q, b.q) && same_bits(a.k, b.k) && same_bits(a.v, b.v) &&
                  same_bits(a.resid_norm, b.resid_norm))
          << "sequence " << s << " layer " << l;
    }
  }
}

TEST(BoundedTrace, HoldsTheChosenLayersTheStridedQueriesAndEveryKeyInBf16) {
  const Trace& full = full_trace();
  const int stride = 3;
  auto bounded = Trace::open(record({.qkv_dtype = TensorDtype::kBF16, .layers = {1, 3}, .query_stride = stride,
                                     .chunk = 5}));
  ASSERT_TRUE(bounded.ok()) << bounded.error().message();
  EXPECT_EQ(bounded->layers(), (std::vector<int>{1, 3}));
  EXPECT_EQ(bounded->query_stride(), stride);
  EXPECT_EQ(bounded->manifest().qkv_dtype, TensorDtype::kBF16);
  const TraceModelShape& m = full.model();
  const size_t q_dim = size_t(m.n_heads) * m.head_dim;
  for (int s = 0; s < full.n_sequences(); ++s) {
    const int T = full.length(s);
    const std::vector<int32_t> rows = bounded->query_rows(s);
    // Queries at t = P - 1 + k * stride (the prompt's last position among them), in order.
    std::vector<int> expected;
    for (int t = (kPromptLen - 1) % stride; t < T; t += stride) expected.push_back(t);
    std::vector<int> got;
    for (int t = 0; t < T; ++t) {
      if (rows[t] >= 0) {
        EXPECT_EQ(rows[t], static_cast<int>(got.size()));
        got.push_back(t);
      }
    }
    EXPECT_EQ(got, expected) << "sequence " << s;
    EXPECT_EQ(rows[kPromptLen - 1], (kPromptLen - 1) / stride);
    for (int l : {1, 3}) {
      const TraceLayer a = bounded->layer(s, l), b = full.layer(s, l);
      EXPECT_TRUE(same_bits(a.k, as_bf16(b.k)) && same_bits(a.v, as_bf16(b.v))) << "layer " << l;
      EXPECT_TRUE(same_bits(a.resid_norm, b.resid_norm)) << "resid_norm stays f32";
      std::vector<float> q_kept;
      for (int t : expected) q_kept.insert(q_kept.end(), b.q.begin() + t * q_dim, b.q.begin() + (t + 1) * q_dim);
      EXPECT_TRUE(same_bits(a.q, as_bf16(q_kept))) << "layer " << l;
    }
  }
  EXPECT_TRUE(same_bits(bounded->wo(3), full.wo(3)));
  // The bytes it saves: 2 of 5 layers, half the bytes per element, a third of the queries. Per
  // position and layer (q_dim 64, kv_dim 32): f32 (64 + 2 * 32) * 4 + 4 = 516 bytes against
  // 64 / 3 * 2 + 2 * 32 * 2 + 4 = 175, so about 7.4 times less over the 5 layers.
  EXPECT_LT(bounded->sequence_bytes() * 7, full.sequence_bytes());
}

TEST(BoundedTrace, ReplayOfALayerSubsetEqualsTheFullReplayThereAndInterpolatesBetween) {
  const Trace& full = full_trace();
  auto subset = Trace::open(record({.layers = {1, 3}}));
  ASSERT_TRUE(subset.ok()) << subset.error().message();
  const TraceModelShape& m = full.model();
  auto policy = std::shared_ptr<const Policy>(make_policy("vatp", {.sinks = 2, .recent = 4}).value());
  const ReplayConfig config{.policy = policy,
                            .budgets = std::vector<std::vector<int32_t>>(m.n_layers, std::vector<int32_t>(m.n_kv_heads, 24))};
  const ReplayResult a = (*ReplayEngine::create(*subset, 2))->run(config);
  const ReplayResult b = (*ReplayEngine::create(full, 2))->run(config);
  EXPECT_EQ(a.measured_layers, (std::vector<int>{1, 3}));
  for (int l : {1, 3}) {
    EXPECT_EQ(a.resid_energy[l], b.resid_energy[l]) << "layer " << l;
    EXPECT_EQ(a.rel_error[l], b.rel_error[l]) << "layer " << l;
    EXPECT_EQ(a.retained_mass[l], b.retained_mass[l]) << "layer " << l;
  }
  EXPECT_GT(b.resid_energy[1], 0.0);
  EXPECT_EQ(a.resid_energy[0], b.resid_energy[1]) << "before the first recorded layer: its value";
  EXPECT_DOUBLE_EQ(a.resid_energy[2], (b.resid_energy[1] + b.resid_energy[3]) / 2);
  EXPECT_EQ(a.resid_energy[4], b.resid_energy[3]) << "after the last recorded layer: its value";
  EXPECT_DOUBLE_EQ(a.rel_error[2][0], (b.rel_error[1][0] + b.rel_error[3][0]) / 2);
  EXPECT_EQ(a.head_steps * m.n_layers, b.head_steps * 2) << "only 2 of the 5 layers replayed";
}

TEST(BoundedTrace, ReplayOfAStridedTraceMeasuresOnlyTheRecordedQueriesAndKeepsEveryPosition) {
  const Trace& full = full_trace();
  const int stride = 4;
  auto strided = Trace::open(record({.query_stride = stride}));
  ASSERT_TRUE(strided.ok()) << strided.error().message();
  const TraceModelShape& m = full.model();
  auto engine = std::move(ReplayEngine::create(*strided, 1)).value();
  int64_t measured = 0;
  for (int s = 0; s < full.n_sequences(); ++s) {
    for (int t = kPromptLen; t < full.length(s); ++t) measured += (t - (kPromptLen - 1)) % stride == 0;
  }
  EXPECT_EQ(engine->decode_steps(), measured);
  auto budgets = [&](int b) {
    return std::vector<std::vector<int32_t>>(m.n_layers, std::vector<int32_t>(m.n_kv_heads, b));
  };
  // A budget that holds every position: every policy reproduces the full cache at the measured steps.
  for (const char* name : {"h2o", "vatp", "tova", "window"}) {
    auto policy = std::shared_ptr<const Policy>(make_policy(name, {.sinks = 2, .recent = 4}).value());
    const ReplayResult r = engine->run({.policy = policy, .budgets = budgets(engine->max_length())});
    EXPECT_EQ(r.total_resid_energy(), 0.0) << name;
    EXPECT_NEAR(r.mean_retained_mass(), 1.0, 1e-5) << name;
    EXPECT_EQ(r.head_steps, measured * m.n_heads * m.n_layers);
  }
  // Policies that ignore attention keep the same tokens at every step, queries recorded or not:
  // every position still enters the cache, and nothing defers their choice.
  for (const char* name : {"window", "knorm"}) {
    auto policy = std::shared_ptr<const Policy>(make_policy(name, {.sinks = 2, .recent = 4}).value());
    std::map<std::tuple<int, int, int, int>, std::vector<int32_t>> kept_full, kept_strided;
    auto log_into = [](auto& log) {
      return [&log](int s, int l, int h, int32_t t, std::span<const int32_t> kept) {
        log[{s, l, h, t}] = std::vector<int32_t>(kept.begin(), kept.end());
      };
    };
    (*ReplayEngine::create(full, 1))->run({.policy = policy, .budgets = budgets(12)}, log_into(kept_full));
    const ReplayResult r = engine->run({.policy = policy, .budgets = budgets(12)}, log_into(kept_strided));
    EXPECT_EQ(kept_strided, kept_full) << name;
    EXPECT_GT(r.total_resid_energy(), 0.0) << name;
  }
  // Attention-scored policies score from a quarter of the queries: their kept sets differ, but
  // their errors stay near the full trace's. TOVA (recent 1) shows why a token entering without a
  // query must not be evicted on the score it has not yet been given: evicting it at once made
  // the error several times the full trace's.
  // (Deferring acts as a recent window of up to stride - 1 tokens: near their published recent
  // windows, half the budget for H2O and one token for TOVA, that is what it changes.)
  for (const auto& [name, recent] : {std::pair{"h2o", 6}, {"tova", 1}}) {
    auto policy = std::shared_ptr<const Policy>(make_policy(name, {.sinks = 0, .recent = recent}).value());
    const double f = (*ReplayEngine::create(full, 1))->run({.policy = policy, .budgets = budgets(12)}).total_resid_energy();
    const double s = engine->run({.policy = policy, .budgets = budgets(12)}).total_resid_energy();
    EXPECT_NE(s, f) << name;
    EXPECT_NEAR(s / f, 1.0, 0.3) << name << ": strided " << s << ", full " << f;
  }
}

}  // namespace
}  // namespace kvp
