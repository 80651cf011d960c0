// KVCrush: the selection against hand-computed kept sets, its bad parameters, and its plan fields.
#include <gtest/gtest.h>

#include "planner/calibration.h"
#include "planner/plan/plan.h"
#include "planner/policy/policies.h"

namespace kvp {
namespace {

// Two heads over ten slots at positions 0..9; the base is h2o, so a slot's key is its score.
struct TwoHeads {
  std::vector<int32_t> pos = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9};
  std::vector<float> h0 = {9, 8, 7, 1, 2, 3, 4, 5, 0.5f, 6};
  std::vector<float> h1 = {9, 8, 7, 6, 5, 1, 2, 3, 4, 0.5f};
  std::vector<SlotArrays> views() {
    return {SlotArrays{.n_used = 10, .budget = 10, .pos = pos.data(), .score = h0.data()},
            SlotArrays{.n_used = 10, .budget = 10, .pos = pos.data(), .score = h1.data()}};
  }
};

std::unique_ptr<Policy> crush(CrushAnchor anchor, double ratio = 0.5, uint64_t seed = 0) {
  // Nothing protected among the slots: no sinks, and the one recent position is the new token's (10).
  auto p = make_policy("kvcrush", {.sinks = 0, .recent = 1, .seed = seed, .crush_base = "h2o", .crush_ratio = ratio,
                                   .crush_anchor = anchor, .crush_period = 2});
  EXPECT_TRUE(p.ok()) << p.error().message();
  return std::move(p).value();
}

// Budget 6, ρ 0.5: 3 representatives, 3 by importance. Summed keys 18, 16, 14, 7, 7, 4, 6, 8, 4.5,
// 6.5 keep slots 0, 1, 2. Top halves (5 of 10): head 0 {0, 1, 2, 9, 7}, head 1 {0, 1, 2, 3, 4}, so
// the candidates 3..9 carry bits (0,1) (0,1) (0,0) (0,0) (1,0) (0,0) (1,0). Mean anchor: 2 of 7
// ones in each head, so (0,0); distances 1 1 0 0 1 0 1; ordered 5 6 8 3 4 7 9; stride 7/3 picks
// positions 0, 2, 4 of that order: slots 5, 8, 4.
TEST(KvCrush, MeanAnchorKeepsRepresentativesAtAnEvenStrideByHammingDistance) {
  TwoHeads t;
  const auto views = t.views();
  EXPECT_EQ(select_kept(*crush(CrushAnchor::kMean), views, 10, 6), (std::vector<int>{0, 1, 2, 4, 5, 8}));
  // The base alone keeps the six highest sums (slots 3 and 4 tie at 7: both kept).
  const auto h2o = make_policy("h2o", {.sinks = 0, .recent = 1}).value();
  EXPECT_EQ(select_kept(*h2o, views, 10, 6), (std::vector<int>{0, 1, 2, 3, 4, 7}));
}

// Alternating anchor (1, 0): distances 2 2 1 1 0 1 0; ordered 7 9 5 6 8 3 4; picks 7, 5, 8.
TEST(KvCrush, AlternatingAnchorOrdersByDistanceToOneZero) {
  TwoHeads t;
  EXPECT_EQ(select_kept(*crush(CrushAnchor::kAlternating), t.views(), 10, 6), (std::vector<int>{0, 1, 2, 5, 7, 8}));
}

TEST(KvCrush, RatioZeroIsTheBaseAndProtectedPositionsStay) {
  TwoHeads t;
  const auto views = t.views();
  const auto h2o = make_policy("h2o", {.sinks = 0, .recent = 1}).value();
  EXPECT_EQ(select_kept(*crush(CrushAnchor::kMean, 0.0), views, 10, 6), select_kept(*h2o, views, 10, 6));
  // Sinks 2 and recent 3 (positions 8, 9 and the new 10) protect 0, 1, 8, 9: of budget 8, the 4
  // selectable slots give 2 representatives and 2 by importance (slots 2, 7 by sums 14, 8).
  auto p = make_policy("kvcrush", {.sinks = 2, .recent = 3, .crush_base = "h2o", .crush_ratio = 0.5, .crush_period = 1});
  ASSERT_TRUE(p.ok());
  const std::vector<int> kept = select_kept(**p, views, 10, 8);
  ASSERT_EQ(kept.size(), 8u);
  for (int must : {0, 1, 2, 7, 8, 9}) EXPECT_NE(std::find(kept.begin(), kept.end(), must), kept.end()) << must;
}

TEST(KvCrush, RandomAnchorIsTheSeedsAndDeterministic) {
  TwoHeads t;
  const auto views = t.views();
  const std::vector<int> a = select_kept(*crush(CrushAnchor::kRandom, 0.5, 7), views, 10, 6);
  EXPECT_EQ(select_kept(*crush(CrushAnchor::kRandom, 0.5, 7), views, 10, 6), a);
  // Some seed's anchor differs from the mean's (0,0) and so keeps other representatives.
  bool differs = false;
  for (uint64_t seed = 0; seed < 16 && !differs; ++seed) {
    differs = select_kept(*crush(CrushAnchor::kRandom, 0.5, seed), views, 10, 6) != select_kept(*crush(CrushAnchor::kMean), views, 10, 6);
  }
  EXPECT_TRUE(differs);
}

TEST(KvCrush, SharesOneSetPerLayerAndCutsEveryPeriod) {
  const auto p = crush(CrushAnchor::kMean);
  EXPECT_TRUE(p->shared_per_layer());
  EXPECT_EQ(p->cut_period(), 2);
  EXPECT_EQ(p->min_budget(), 0 + 1 + 2);
  EXPECT_EQ(static_cast<const KvCrushPolicy&>(*p).base().name(), "h2o");
  const auto on_vatp = make_policy("kvcrush", {.crush_base = "vatp"}).value();
  EXPECT_EQ(on_vatp->aux_floats_per_slot(), 1);  // the value norm of its base
}

TEST(KvCrush, BadParametersAreErrorsNamingTheField) {
  EXPECT_TRUE(make_policy("kvcrush", {.crush_ratio = 0.0}).ok());
  EXPECT_TRUE(make_policy("kvcrush", {.crush_ratio = 0.99, .crush_period = 1}).ok());
  const std::pair<PolicyParams, std::string> cases[] = {
      {{.crush_ratio = 1.0}, "policy kvcrush: ratio: expected a share in [0, 1), found 1"},
      {{.crush_ratio = -0.1}, "policy kvcrush: ratio: expected a share in [0, 1), found -0.1"},
      {{.crush_period = 0}, "policy kvcrush: period: expected at least 1 decode step, found 0"},
      {{.crush_base = "full"}, "policy kvcrush: base: expected an evicting policy"},
      {{.crush_base = "kvcrush"}, "policy kvcrush: base: expected an evicting policy"},
      {{.crush_base = "lru"}, "policy kvcrush: base: policy: expected one of"},
  };
  for (const auto& [params, expect] : cases) {
    auto p = make_policy("kvcrush", params);
    ASSERT_FALSE(p.ok()) << expect;
    EXPECT_EQ(p.error().message().rfind(expect, 0), 0u) << p.error().message();
  }
}

PlanModel stories() {
  return PlanModel{.fingerprint = std::string(64, 'b'), .dim = 64, .n_layers = 5, .n_heads = 8,
                   .n_kv_heads = 4, .head_dim = 8, .vocab_size = 512, .seq_len = 512};
}

Plan crush_plan() {
  auto plan = uniform_plan(stories(), "kvcrush",
                           {.sinks = 4, .recent = 16, .vatp_base = VatpBase::kMean, .crush_base = "vatp",
                            .crush_ratio = 0.3, .crush_anchor = CrushAnchor::kAlternating, .crush_period = 6},
                           64, KvDtype::kF32);
  EXPECT_TRUE(plan.ok()) << plan.error().message();
  return *plan;
}

void replace(std::string& s, const std::string& from, const std::string& to) {
  const size_t at = s.find(from);
  ASSERT_NE(at, std::string::npos) << from;
  s.replace(at, from.size(), to);
}

TEST(KvCrushPlan, RoundTripsWithItsBaseAndCostsTheBasesBytes) {
  const Plan plan = crush_plan();
  const std::string yaml = plan.to_yaml();
  EXPECT_NE(yaml.find("name: kvcrush\n  sinks: 4\n  recent: 16\n  base: vatp\n  ratio: 0.3\n  anchor: alternating\n"
                      "  period: 6\n  vatp_base: mean\n"),
            std::string::npos)
      << yaml;
  auto back = Plan::parse(yaml, "plan.yaml");
  ASSERT_TRUE(back.ok()) << back.error().message();
  EXPECT_EQ(back->to_yaml(), yaml);
  EXPECT_EQ(back->params.crush_base, "vatp");
  EXPECT_EQ(back->params.crush_ratio, 0.3);
  EXPECT_EQ(back->params.crush_anchor, CrushAnchor::kAlternating);
  EXPECT_EQ(back->params.crush_period, 6);
  EXPECT_EQ(back->params.vatp_base, VatpBase::kMean);
  // The budget's slots at VATP's bytes (keys, values, position, score and value norm): exact.
  const Plan vatp = uniform_plan(stories(), "vatp", {.sinks = 4, .recent = 16}, 64, KvDtype::kF32).value();
  EXPECT_EQ(plan.kv_bytes_per_sequence, vatp.kv_bytes_per_sequence);
}

TEST(KvCrushPlan, BadFieldsAreErrorsNamingTheField) {
  const std::string good = crush_plan().to_yaml();
  const std::pair<std::string, std::string> cases[] = {
      {"  ratio: 0.3", "  ratio: 1"},
      {"  period: 6", "  period: 0"},
      {"  base: vatp", "  base: full"},
      {"  anchor: alternating", "  anchor: median"},
      {"  vatp_base: mean", "  vatp_base: sum"},
      {"  vatp_base: mean", "  vatp_base: mean\n  window: 4"},
      {"budgets:\n  - 64", "budgets:\n  - 25"},
      {"budgets:\n  - 64\n  - 64", "budgets:\n  - 64\n  - [64, 64, 64, 32]"},
  };
  const std::string expect[] = {
      "plan.yaml: policy.ratio: expected a share in [0, 1), found 1",
      "plan.yaml: policy.period: expected at least 1 decode step, found 0",
      "plan.yaml: policy.base: expected an evicting policy",
      "plan.yaml: policy.anchor: expected mean, random or alternating, found 'median'",
      "plan.yaml: policy.vatp_base: expected h2o or mean, found 'sum'",
      "plan.yaml: policy.window: unknown field",
      "plan.yaml: budgets[0]: expected 26..512 tokens (at least sinks 4 + recent 16 + kvcrush's period 6), found 25",
      "plan.yaml: budgets[1]: policy kvcrush keeps one set per layer, so its heads need equal budgets",
  };
  for (size_t i = 0; i < std::size(cases); ++i) {
    std::string yaml = good;
    replace(yaml, cases[i].first, cases[i].second);
    auto plan = Plan::parse(yaml, "plan.yaml");
    ASSERT_FALSE(plan.ok()) << yaml;
    EXPECT_EQ(plan.error().message().rfind(expect[i], 0), 0u) << plan.error().message();
  }
}

TEST(KvCrushPlan, CompressedLayoutsAreRefused) {
  PlanCompression think;
  think.think_ratio = {0.4};
  auto plan = uniform_plan(stories(), "kvcrush", {.sinks = 4, .recent = 16}, 64, KvDtype::kF32, think);
  ASSERT_FALSE(plan.ok());
  EXPECT_EQ(plan.error().message(),
            "--think/--mustafar: policy kvcrush re-selects its kept tokens every 8 steps; it runs on dense caches "
            "only (no key_channels or sparsity)");
  EXPECT_TRUE(uniform_plan(stories(), "vatp", {.sinks = 4, .recent = 16}, 64, KvDtype::kF32, think).ok());
}

// A measured run's detail string carries every kvcrush setting, so calibrate replays what ran.
TEST(KvCrushPlan, MeasuredDetailReadsBackEverySetting) {
  const PolicyParams p{.sinks = 3, .recent = 7, .vatp_base = VatpBase::kMean, .seed = 11, .crush_base = "vatp",
                       .crush_ratio = 0.3, .crush_anchor = CrushAnchor::kRandom, .crush_period = 5};
  Measured m;
  m.policy = "kvcrush", m.sinks = 3, m.recent = 7;
  m.policy_detail = policy_detail("kvcrush", p);
  EXPECT_EQ(m.policy_detail, "crush_base=vatp ratio=0.3 anchor=random period=5 base=mean seed=11");
  auto back = measured_params(m, "m.yaml");
  ASSERT_TRUE(back.ok()) << back.error().message();
  EXPECT_EQ(back->crush_base, "vatp");
  EXPECT_EQ(back->crush_ratio, 0.3);
  EXPECT_EQ(back->crush_anchor, CrushAnchor::kRandom);
  EXPECT_EQ(back->crush_period, 5);
  EXPECT_EQ(back->vatp_base, VatpBase::kMean);
  EXPECT_EQ(back->seed, 11u);
  m.policy_detail = "crush_base=vatp anchor=median";
  EXPECT_FALSE(measured_params(m, "m.yaml").ok());
}

}  // namespace
}  // namespace kvp
