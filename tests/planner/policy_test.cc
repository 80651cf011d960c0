// Policies against hand-computed scores and decisions on small hand-made slots.
#include "planner/policy/policy.h"

#include <gtest/gtest.h>

#include <cmath>

namespace kvp {
namespace {

// A head's slots held by the test.
struct Slots {
  std::vector<int32_t> pos;
  std::vector<float> score, aux;
  SlotArrays view() {
    return SlotArrays{.n_used = static_cast<int32_t>(pos.size()), .budget = static_cast<int32_t>(pos.size()),
                      .pos = pos.data(), .score = score.data(), .aux = aux.empty() ? nullptr : aux.data()};
  }
};

std::unique_ptr<Policy> policy(const std::string& name, PolicyParams p) {
  auto r = make_policy(name, p);
  EXPECT_TRUE(r.ok());
  return std::move(r).value();
}

NewToken token(int32_t pos, const std::vector<float>& k, const std::vector<float>& v, float self_weight) {
  return NewToken{.pos = pos, .layer_idx = 0, .kv_head_idx = 0, .k = k.data(), .v = v.data(),
                  .head_dim = static_cast<int>(k.size()), .self_weight = self_weight, .prompt_len = 0};
}

TEST(Protection, SinksAndTheRecentWindowIncludingTheNewToken) {
  const PolicyParams p{.sinks = 2, .recent = 3};
  EXPECT_TRUE(is_protected(p, 0, 10));
  EXPECT_TRUE(is_protected(p, 1, 10));
  EXPECT_FALSE(is_protected(p, 2, 10));
  EXPECT_FALSE(is_protected(p, 7, 10));
  EXPECT_TRUE(is_protected(p, 8, 10));  // recent 3 = positions 8, 9 and the new 10
  EXPECT_TRUE(is_protected(p, 9, 10));
}

TEST(H2o, AccumulatesGroupSummedAttentionAndEvictsTheLowest) {
  auto h2o = policy("h2o", {.sinks = 1, .recent = 1});
  Slots s{.pos = {0, 1, 2, 3}, .score = {0, 0, 0, 0}};
  SlotArrays v = s.view();
  for (int i = 0; i < 4; ++i) h2o->init_slot(v, i, token(i, {1}, {1}, 0.25f * i));
  EXPECT_FLOAT_EQ(s.score[3], 0.75f);
  const float w1[] = {0.5f, 0.2f, 0.2f, 0.1f};
  const float w2[] = {0.4f, 0.1f, 0.3f, 0.2f};
  h2o->observe(v, w1, 4, 0);
  h2o->observe(v, w2, 5, 0);
  EXPECT_FLOAT_EQ(s.score[0], 0.0f + 0.9f);
  EXPECT_FLOAT_EQ(s.score[1], 0.25f + 0.3f);
  EXPECT_FLOAT_EQ(s.score[2], 0.5f + 0.5f);
  EXPECT_FLOAT_EQ(s.score[3], 0.75f + 0.3f);
  // Newest position 6: position 0 is a sink; 1 has the lowest score among 1..3.
  EXPECT_EQ(choose_victim(*h2o, v, 6), 1);
}

TEST(Victim, TiesEvictTheOlderPosition) {
  auto h2o = policy("h2o", {.sinks = 0, .recent = 1});
  Slots s{.pos = {7, 3, 5}, .score = {0.5f, 0.5f, 0.5f}};
  EXPECT_EQ(choose_victim(*h2o, s.view(), 8), 1);  // position 3
  Slots all_protected{.pos = {7}, .score = {0.0f}};
  EXPECT_EQ(choose_victim(*policy("h2o", {.sinks = 8, .recent = 1}), all_protected.view(), 8), -1);
}

TEST(Vatp, ScoresAreAttentionTimesValueL1Norm) {
  auto vatp = policy("vatp", {.sinks = 1, .recent = 1, .vatp_base = VatpBase::kH2o});
  EXPECT_EQ(vatp->aux_floats_per_slot(), 1);
  Slots s{.pos = {0, 1, 2, 3}, .score = {0, 0, 0, 0}, .aux = {0, 0, 0, 0}};
  SlotArrays v = s.view();
  // Value L1 norms 0.1, 2, 1, 3 (sink tokens have tiny values, as the paper observes).
  const std::vector<std::vector<float>> values = {{0.05f, -0.05f}, {1.5f, -0.5f}, {-1.0f, 0.0f}, {2.0f, 1.0f}};
  for (int i = 0; i < 4; ++i) vatp->init_slot(v, i, token(i, {0, 0}, values[i], 0.0f));
  EXPECT_FLOAT_EQ(s.aux[1], 2.0f);
  const float w[] = {0.5f, 0.2f, 0.2f, 0.1f};
  vatp->observe(v, w, 4, 0);
  EXPECT_FLOAT_EQ(s.score[0], 0.05f);
  EXPECT_FLOAT_EQ(s.score[1], 0.4f);
  EXPECT_FLOAT_EQ(s.score[2], 0.2f);
  EXPECT_FLOAT_EQ(s.score[3], 0.3f);
  // H2O would evict position 3 (least attention, 0.1); VATP evicts position 2 (0.2 * 1).
  EXPECT_EQ(choose_victim(*vatp, v, 4), 2);
  Slots h{.pos = {0, 1, 2, 3}, .score = {0.5f, 0.2f, 0.2f, 0.1f}};
  EXPECT_EQ(choose_victim(*policy("h2o", {.sinks = 1, .recent = 1}), h.view(), 4), 3);
}

TEST(Vatp, MeanBaseDividesByTheQueriesThatSawTheToken) {
  auto mean = policy("vatp", {.sinks = 0, .recent = 1, .vatp_base = VatpBase::kMean});
  Slots s{.pos = {1, 2, 3}, .score = {0.4f, 0.3f, 0.25f}, .aux = {1, 1, 1}};
  // Newest position 4: queries 1..4 saw position 1 (4 of them), 2..4 saw 2 (3), 3..4 saw 3 (2).
  EXPECT_FLOAT_EQ(mean->eviction_key(s.view(), 0, 4), 0.4f / 4.0f);
  EXPECT_FLOAT_EQ(mean->eviction_key(s.view(), 1, 4), 0.3f / 3.0f);
  EXPECT_FLOAT_EQ(mean->eviction_key(s.view(), 2, 4), 0.25f / 2.0f);
  // The batched keys are the same values.
  float buffer[3];
  const float* keys = mean->eviction_keys(s.view(), 4, buffer);
  for (int j = 0; j < 3; ++j) EXPECT_EQ(keys[j], mean->eviction_key(s.view(), j, 4));
  // Keys 0.1, 0.1, 0.125 (in float): positions 1 and 2 tie up to rounding; the lower key goes.
  const int victim = choose_victim(*mean, s.view(), 4);
  EXPECT_TRUE(victim == 0 || victim == 1);
  Slots clear{.pos = {1, 2, 3}, .score = {0.8f, 0.3f, 0.25f}, .aux = {1, 1, 1}};
  EXPECT_EQ(choose_victim(*mean, clear.view(), 4), 1);  // 0.2, 0.1, 0.125
  // Base h2o on the same scores would evict position 3 (0.25).
  EXPECT_EQ(choose_victim(*policy("vatp", {.sinks = 0, .recent = 1}), clear.view(), 4), 2);
}

TEST(Tova, OneVictimPerLayerFromTheSummedCurrentAttention) {
  auto tova = policy("tova", {.sinks = 0, .recent = 1});
  EXPECT_TRUE(tova->shared_per_layer());
  Slots h0{.pos = {0, 1, 2}, .score = {9, 9, 9}};
  Slots h1{.pos = {0, 1, 2}, .score = {9, 9, 9}};
  SlotArrays v0 = h0.view(), v1 = h1.view();
  const float w0[] = {0.6f, 0.1f, 0.3f};
  const float w1[] = {0.1f, 0.5f, 0.4f};
  tova->observe(v0, w0, 3, 0);  // replaces: only the current query counts
  tova->observe(v1, w1, 3, 0);
  EXPECT_FLOAT_EQ(h0.score[0], 0.6f);
  // Sums: 0.7, 0.6, 0.7 -> position 1 goes from both heads, though head 0 alone would drop it too
  // and head 1 alone would drop position 0.
  std::vector<SlotArrays> heads = {v0, v1};
  EXPECT_EQ(choose_shared_victim(*tova, heads, 3), 1);
  EXPECT_EQ(choose_victim(*tova, v1, 3), 0);
}

TEST(SnapKv, ObservationWindowSumThenMaxPooling) {
  auto snap = policy("snapkv", {.sinks = 0, .recent = 2, .snap_window = 2, .snap_kernel = 3});
  // Prompt of 6 positions; only queries 4 and 5 (the last 2) count.
  Slots s{.pos = {0, 1, 2, 3, 4, 5}, .score = std::vector<float>(6, 0.0f)};
  SlotArrays v = s.view();
  for (int i = 0; i < 6; ++i) {
    NewToken t = token(i, {1}, {1}, 0.0f);
    t.prompt_len = 6;
    snap->init_slot(v, i, t);
  }
  const float ignored[] = {1, 1, 1, 1, 1, 1};
  const float q4[] = {0.1f, 0.0f, 0.6f, 0.0f, 0.3f, 0.0f};
  const float q5[] = {0.1f, 0.1f, 0.0f, 0.0f, 0.4f, 0.4f};
  snap->observe(v, ignored, 3, 6);
  snap->observe(v, q4, 4, 6);
  snap->observe(v, q5, 5, 6);
  // Sums 0.2, 0.1, 0.6, 0.0, 0.7, 0.4; max-pooled over 3 neighbours:
  snap->finish_prefill(v, 6);
  const std::vector<float> expected = {0.2f, 0.6f, 0.6f, 0.7f, 0.7f, 0.7f};
  for (int i = 0; i < 6; ++i) EXPECT_FLOAT_EQ(s.score[i], expected[i]) << i;
  // Keep 4 of 6: protected 4 and 5, then the highest pooled keys: 3 (0.7), then 1 vs 2 tie at 0.6
  // keeps the newer, 2.
  std::vector<SlotArrays> heads = {v};
  EXPECT_EQ(select_prefill_kept(*snap, heads, 6, 4), (std::vector<int>{2, 3, 4, 5}));
  // Generated tokens enter below every prompt token.
  Slots d{.pos = {0}, .score = {0}};
  SlotArrays dv = d.view();
  snap->init_slot(dv, 0, token(9, {1}, {1}, 0.9f));
  EXPECT_FLOAT_EQ(d.score[0], -1.0f);
}

TEST(Window, EvictsTheOldestUnprotected) {
  auto window = policy("window", {.sinks = 2, .recent = 2});
  Slots s{.pos = {0, 1, 6, 3, 7, 5}, .score = std::vector<float>(6)};
  SlotArrays v = s.view();
  for (int i = 0; i < 6; ++i) window->init_slot(v, i, token(s.pos[i], {1}, {1}, 0));
  EXPECT_EQ(choose_victim(*window, v, 8), 3);  // position 3: older than 5 and 6; 0, 1 are sinks
}

TEST(Knorm, EvictsTheLargestKeyNorm) {
  auto knorm = policy("knorm", {.sinks = 0, .recent = 1});
  Slots s{.pos = {0, 1, 2}, .score = std::vector<float>(3)};
  SlotArrays v = s.view();
  knorm->init_slot(v, 0, token(0, {3, 4}, {0, 0}, 0));   // norm 5
  knorm->init_slot(v, 1, token(1, {6, 8}, {0, 0}, 0));   // norm 10
  knorm->init_slot(v, 2, token(2, {1, 0}, {0, 0}, 0));   // norm 1
  EXPECT_FLOAT_EQ(s.score[1], -10.0f);
  EXPECT_EQ(choose_victim(*knorm, v, 3), 1);
}

TEST(Random, SeededPerLayerHeadAndPosition) {
  auto a = policy("random", {.sinks = 0, .recent = 1, .seed = 1});
  auto b = policy("random", {.sinks = 0, .recent = 1, .seed = 2});
  Slots sa{.pos = {0}, .score = {0}}, sb{.pos = {0}, .score = {0}};
  SlotArrays va = sa.view(), vb = sb.view();
  a->init_slot(va, 0, token(5, {1}, {1}, 0));
  const float first = sa.score[0];
  a->init_slot(va, 0, token(5, {2}, {2}, 0.7f));  // same seed, layer, head, position
  EXPECT_EQ(sa.score[0], first);
  b->init_slot(vb, 0, token(5, {1}, {1}, 0));
  EXPECT_NE(sb.score[0], first);
  EXPECT_GE(first, 0.0f);
  EXPECT_LT(first, 1.0f);
}

TEST(Prefill, KeepsProtectedThenHighestKeysInPositionOrder) {
  auto h2o = policy("h2o", {.sinks = 1, .recent = 2});
  Slots s{.pos = {0, 1, 2, 3, 4, 5, 6}, .score = {0.0f, 0.9f, 0.1f, 0.5f, 0.5f, 0.0f, 0.0f}};
  std::vector<SlotArrays> heads = {s.view()};
  // Protected 0, 5, 6; then 1 (0.9), then 3 vs 4 tie (0.5) keeps the newer, 4.
  EXPECT_EQ(select_prefill_kept(*h2o, heads, 7, 5), (std::vector<int>{0, 1, 4, 5, 6}));
  EXPECT_EQ(select_prefill_kept(*h2o, heads, 7, 7).size(), 7u);
}

TEST(Registry, EveryNameBuildsAndUnknownNamesAreErrors) {
  for (const std::string& name : policy_names()) {
    auto p = make_policy(name, published_defaults(name, 64));
    ASSERT_TRUE(p.ok()) << name;
    EXPECT_EQ((*p)->name(), name);
    const PolicyParams d = published_defaults(name, 64);
    EXPECT_LE(d.sinks + d.recent, 64) << name;
  }
  auto bad = make_policy("lru", {});
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().message().find("'lru'"), std::string::npos);
  EXPECT_EQ(published_defaults("h2o", 64).recent, 32);
  EXPECT_EQ(published_defaults("window", 64).sinks, 4);
}

}  // namespace
}  // namespace kvp
