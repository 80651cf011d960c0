// plan.yaml: byte-stable round trips and strict validation.
#include "planner/plan/plan.h"

#include <gtest/gtest.h>

namespace kvp {
namespace {

PlanModel stories() {
  return PlanModel{.fingerprint = std::string(64, 'b'), .dim = 64, .n_layers = 5, .n_heads = 8,
                   .n_kv_heads = 4, .head_dim = 8, .vocab_size = 512, .seq_len = 512};
}

Plan ragged_vatp() {
  auto plan = uniform_plan(stories(), "vatp", {.sinks = 4, .recent = 16, .vatp_base = VatpBase::kMean}, 64,
                           KvDtype::kF32);
  EXPECT_TRUE(plan.ok());
  plan->budgets[2] = {32, 48, 64, 96};
  plan->kv_bytes_per_sequence = plan->kv_budgets().kv_bytes();
  plan->provenance["tool"] = "test";
  return *plan;
}

TEST(Plan, RoundTripsByteForByte) {
  const Plan plan = ragged_vatp();
  const std::string yaml = plan.to_yaml();
  auto back = Plan::parse(yaml, "plan.yaml");
  ASSERT_TRUE(back.ok()) << back.error().message();
  EXPECT_EQ(back->budgets, plan.budgets);
  EXPECT_EQ(back->params.vatp_base, VatpBase::kMean);
  EXPECT_EQ(back->to_yaml(), yaml);
  EXPECT_NE(yaml.find("- [32, 48, 64, 96]"), std::string::npos) << yaml;
}

TEST(Plan, KvBytesCountVatpsValueNormPerSlot) {
  const Plan plan = ragged_vatp();
  // 4 layers x 4 heads x 64 + (32 + 48 + 64 + 96) slots, each 2 x 8 x 4 + 8 + 4 (value norm) bytes.
  EXPECT_EQ(plan.kv_bytes_per_sequence, (16 * 64 + 240) * 76);
  auto h2o = uniform_plan(stories(), "h2o", {.sinks = 0, .recent = 32}, 64, KvDtype::kF32);
  EXPECT_EQ(h2o->kv_bytes_per_sequence, 20 * 64 * 72);
}

void replace(std::string& s, const std::string& from, const std::string& to);

// Version 2: VATP with ThinK per layer and Mustafar, round-tripped; the bytes are the layout's.
Plan compressed_vatp() {
  PlanCompression c{.think_ratio = {0.4, 0.4, 0.5, 0.25, 0.4}, .think_window = 16, .think_recent = 24,
                    .key_sparsity = {0.5}, .value_sparsity = {0.5}, .dense_recent = 32};
  auto plan = uniform_plan(stories(), "vatp", {.sinks = 4, .recent = 16}, 64, KvDtype::kF32, c);
  EXPECT_TRUE(plan.ok()) << plan.error().message();
  plan->provenance["tool"] = "test";
  return *plan;
}

TEST(Plan, CompressionRoundTripsAsVersionTwo) {
  const Plan plan = compressed_vatp();
  const std::string yaml = plan.to_yaml();
  EXPECT_NE(yaml.find("version: 2"), std::string::npos) << yaml;
  EXPECT_NE(yaml.find("key_channels:\n  ratio: [0.4, 0.4, 0.5, 0.25, 0.4]\n  window: 16\n  recent: 24"),
            std::string::npos) << yaml;
  EXPECT_NE(yaml.find("sparsity:\n  keys: 0.5\n  values: 0.5\n  recent: 32"), std::string::npos) << yaml;
  auto back = Plan::parse(yaml, "plan.yaml");
  ASSERT_TRUE(back.ok()) << back.error().message();
  EXPECT_EQ(back->to_yaml(), yaml);
  const KvBudgets b = back->kv_budgets();
  ASSERT_EQ(b.compression.size(), 5u);
  EXPECT_EQ(b.compression[2].key_channels, 4);  // 8 − ⌊4⌋
  EXPECT_EQ(b.compression[3].key_channels, 6);  // 8 − ⌊2⌋
  EXPECT_EQ(b.compression[0].think_queries, 16);
  EXPECT_EQ(b.compression[0].think_recent, 24);
  // Layer 0 (5 channels, 3 key and 4 value elements): each head as head_layout counts it.
  const HeadLayout l = head_layout(b.head_shape(0, 0));
  EXPECT_EQ(l.bytes, 64 * 3 * 4 + 64 * 4 * 4 + 24 * 3 * 4 + 32 * 2 * 4 + 32 * 4 * 4 + 64 * 12 + 8 * 4 + 64 + 64);
  EXPECT_EQ(back->kv_bytes_per_sequence, b.kv_bytes());
  EXPECT_LT(b.kv_bytes(), ragged_vatp().kv_budgets().kv_bytes());
  // Without compression a plan stays version 1, and version 1 files are read as before.
  EXPECT_NE(ragged_vatp().to_yaml().find("version: 1"), std::string::npos);
}

TEST(Plan, CompressionFieldsAreCheckedByName) {
  const std::string good = compressed_vatp().to_yaml();
  const std::pair<std::string, std::string> cases[] = {
      {"  keys: 0.5", "  keys: 1.5"}, {"[0.4, 0.4, 0.5, 0.25, 0.4]", "[0.4, 0.4, 0.5]"},
      {"[0.4, 0.4, 0.5, 0.25, 0.4]", "[0.4, 0.4, 0.5, -0.25, 0.4]"}, {"version: 2", "version: 1"},
      {"  recent: 24", "  recent: 0"}, {"  values: 0.5\n", "  values: 0.5\n  dense: 3\n"}};
  const std::string expect[] = {
      "plan.yaml: sparsity.keys: expected a ratio in [0, 1), found 1.5",
      "plan.yaml: key_channels.ratio: 3 ratios listed, the model has 5 layers",
      "plan.yaml: key_channels.ratio[3]: expected a ratio in [0, 1), found -0.25",
      "plan.yaml: key_channels: unknown field",
      "plan.yaml: key_channels.recent",
      "plan.yaml: sparsity.dense: unknown field"};
  for (size_t i = 0; i < std::size(cases); ++i) {
    std::string yaml = good;
    replace(yaml, cases[i].first, cases[i].second);
    auto plan = Plan::parse(yaml, "plan.yaml");
    ASSERT_FALSE(plan.ok()) << yaml;
    EXPECT_EQ(plan.error().message().rfind(expect[i], 0), 0u) << plan.error().message();
  }
}

struct BadPlan {
  std::string name;
  std::function<void(std::string&)> edit;
  std::string expect;
  friend void PrintTo(const BadPlan& b, std::ostream* os) { *os << b.name; }
};

void replace(std::string& s, const std::string& from, const std::string& to) {
  const size_t at = s.find(from);
  ASSERT_NE(at, std::string::npos) << from;
  s.replace(at, from.size(), to);
}

std::vector<BadPlan> bad_plans() {
  return {
      {"unknown_top_key", [](std::string& s) { s += "extra: 1\n"; }, "extra: unknown field"},
      {"unknown_policy_key", [](std::string& s) { replace(s, "  sinks: 4", "  sinkz: 4\n  sinks: 4"); },
       "policy.sinkz: unknown field"},
      {"budget_below_sinks_plus_recent", [](std::string& s) { replace(s, "  - 64\n  - 64\n  - [", "  - 12\n  - 64\n  - ["); },
       "budgets[0]: expected 20..512 tokens (at least sinks 4 + recent 16), found 12"},
      {"too_few_layers", [](std::string& s) { replace(s, "  - 64\n  - 64\n  - [", "  - 64\n  - ["); },
       "budgets: 4 layers listed, the model has 5"},
      {"wrong_head_count", [](std::string& s) { replace(s, "[32, 48, 64, 96]", "[32, 48, 64]"); },
       "budgets[2]: 3 heads listed, the model has 4 KV heads"},
      {"future_version", [](std::string& s) { replace(s, "version: 1", "version: 9"); }, "version: this kvplan reads versions 1 to 3, found 9"},
      {"unknown_policy", [](std::string& s) { replace(s, "name: vatp", "name: lru"); }, "'lru'"},
      {"bad_base", [](std::string& s) { replace(s, "base: mean", "base: median"); }, "policy.base"},
      {"bytes_disagree", [](std::string& s) { replace(s, "kv_bytes_per_sequence: ", "kv_bytes_per_sequence: 1"); },
       "predictions.kv_bytes_per_sequence: the budgets cost"},
      {"bad_fingerprint", [](std::string& s) { replace(s, std::string(64, 'b'), "abc"); }, "model.fingerprint"},
      {"not_yaml", [](std::string& s) { s = "budgets: [1, 2"; }, "not valid YAML"},
  };
}

class MalformedPlan : public ::testing::TestWithParam<BadPlan> {};

TEST_P(MalformedPlan, IsAnErrorNamingTheField) {
  std::string yaml = ragged_vatp().to_yaml();
  GetParam().edit(yaml);
  auto plan = Plan::parse(yaml, "plan.yaml");
  ASSERT_FALSE(plan.ok()) << yaml;
  EXPECT_NE(plan.error().message().find(GetParam().expect), std::string::npos) << plan.error().message();
  EXPECT_EQ(plan.error().message().rfind("plan.yaml", 0), 0u);
}

INSTANTIATE_TEST_SUITE_P(Cases, MalformedPlan, ::testing::ValuesIn(bad_plans()),
                         [](const auto& info) { return info.param.name; });

TEST(Plan, AnotherModelIsRefused) {
  const Plan plan = ragged_vatp();
  PlanModel other = stories();
  other.fingerprint = std::string(64, 'c');
  Status s = plan.check_model(other, "plan.yaml", "other.bin");
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.error().message().find("model.fingerprint"), std::string::npos);
  other = stories();
  other.n_layers = 6;
  s = plan.check_model(other, "plan.yaml", "other.bin");
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.error().message().find("model.n_layers: the plan says 5"), std::string::npos);
  EXPECT_TRUE(plan.check_model(stories(), "plan.yaml", "m.bin").ok());
}

TEST(Plan, SharedSetPoliciesNeedEqualHeadBudgets) {
  auto tova = uniform_plan(stories(), "tova", {.sinks = 0, .recent = 1}, 32, KvDtype::kF32);
  ASSERT_TRUE(tova.ok());
  std::string yaml = tova->to_yaml();
  yaml.replace(yaml.find("  - 32\n"), 7, "  - [32, 16, 32, 32]\n");
  auto parsed = Plan::parse(yaml, "p.yaml");
  ASSERT_FALSE(parsed.ok());
  EXPECT_NE(parsed.error().message().find("equal budgets"), std::string::npos) << parsed.error().message();
}

// DELTA's roles in the plan: written as version 3 and read back equal; a plan without them stays
// version 1. Bad role lists and pages are errors naming the field, beside the accepted plan.
TEST(Plan, DeltaRolesRoundTripAndBadOnesNameTheField) {
  PolicyParams params{.sinks = 4, .recent = 16, .delta = {.layers = "fsppp", .pages = 8, .page_size = 16, .last = 2}};
  auto plan = uniform_plan(stories(), "vatp", params, 64, KvDtype::kF32);
  ASSERT_TRUE(plan.ok()) << plan.error().message();
  const std::string yaml = plan->to_yaml();
  EXPECT_NE(yaml.find("version: 3"), std::string::npos);
  EXPECT_NE(yaml.find("delta:\n  layers: fsppp\n  pages: 8\n  page_size: 16\n  last: 2\n"), std::string::npos) << yaml;
  auto back = Plan::parse(yaml, "p.yaml");
  ASSERT_TRUE(back.ok()) << back.error().message();
  EXPECT_EQ(back->params.delta, params.delta);
  EXPECT_EQ(back->to_yaml(), yaml);
  EXPECT_EQ(back->kv_bytes_per_sequence, uniform_plan(stories(), "vatp", {.sinks = 4, .recent = 16}, 64, KvDtype::kF32)
                                             ->kv_bytes_per_sequence);  // DELTA keeps the cache whole
  EXPECT_NE(uniform_plan(stories(), "vatp", {.sinks = 4, .recent = 16}, 64, KvDtype::kF32)->to_yaml().find("version: 1"),
            std::string::npos);
  auto error = [&](const std::string& from, const std::string& to) {
    std::string edited = yaml;
    replace(edited, from, to);
    auto p = Plan::parse(edited, "p.yaml");
    return p.ok() ? std::string("accepted") : p.error().message();
  };
  EXPECT_EQ(error("layers: fsppp", "layers: fspp"),
            "p.yaml: delta.layers: expected one role per layer (5 letters of f, s, p), found 4 in 'fspp'");
  EXPECT_EQ(error("layers: fsppp", "layers: fpspp"),
            "p.yaml: delta.layers: layer 1 is sparse (p) before any selection layer (s) in 'fpspp'");
  EXPECT_EQ(error("pages: 8", "pages: 0"), "p.yaml: delta.pages: expected 1..4194304, found 0");
  EXPECT_EQ(error("last: 2", "lasts: 2"),
            "p.yaml: delta.lasts: unknown field (expected one of: last, layers, page_size, pages)");
  EXPECT_EQ(error("version: 3", "version: 2").rfind("p.yaml: delta: unknown field", 0), 0u);
  EXPECT_EQ(error("layers: fsppp", "layers: ffspp"), "accepted");
  auto flags = uniform_plan(stories(), "vatp", {.sinks = 4, .recent = 16, .delta = {.layers = "fs"}}, 64, KvDtype::kF32);
  ASSERT_FALSE(flags.ok());
  EXPECT_EQ(flags.error().message(), "--delta-layers: expected one role per layer (5 letters of f, s, p), found 2 in 'fs'");
}

TEST(Plan, UniformFromFlagsRefusesBudgetsBelowTheProtectedPositions) {
  auto plan = uniform_plan(stories(), "vatp", {.sinks = 4, .recent = 16}, 16, KvDtype::kF32);
  ASSERT_FALSE(plan.ok());
  EXPECT_NE(plan.error().message().find("--budget"), std::string::npos);
}

}  // namespace
}  // namespace kvp
