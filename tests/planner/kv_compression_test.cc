// ThinK and Mustafar on a head's slots: the counts from the ratios, the bytes of the layout counted
// by hand, the magnitude and channel choices against hand-made cases, and compressed attention
// against a plain double-precision reference that rebuilds each key and value as the methods
// define them (dropped channels and elements zero, except for the newest tokens' windows).
#include "planner/policy/kv_compression.h"

#include <gtest/gtest.h>

#include "common/aligned_vector.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "planner/plan/kv_budgets.h"
#include "planner/policy/layer_step.h"

namespace kvp {
namespace {

TEST(SlotCompressionCounts, FromTheRatiosByFloor) {
  auto c = slot_compression(8, 0.4, 0.5, 0.5, "--think", "--mustafar-k", "--mustafar-v");
  ASSERT_TRUE(c.ok()) << c.error().message();
  EXPECT_EQ(c->key_channels, 5);    // 8 − ⌊3.2⌋
  EXPECT_EQ(c->key_elements, 3);    // 5 − ⌊2.5⌋
  EXPECT_EQ(c->value_elements, 4);  // 8 − ⌊4⌋
  c = slot_compression(128, 0.4, 0.7, 0.0, "t", "k", "v");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->key_channels, 77);  // 128 − ⌊51.2⌋
  EXPECT_EQ(c->key_elements, 24);  // 77 − ⌊53.9⌋
  EXPECT_EQ(c->value_elements, 128);
  EXPECT_TRUE(c->sparse_keys());
  EXPECT_FALSE(c->sparse_values(128));
  c = slot_compression(100, 0.29, 0.0, 0.0, "t", "k", "v");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->key_channels, 71);  // ⌊29⌋ dropped, not ⌊28.999...⌋
  // All ratios 0: a dense layer.
  c = slot_compression(8, 0.0, 0.0, 0.0, "t", "k", "v");
  ASSERT_TRUE(c.ok());
  EXPECT_FALSE(c->compressed());
}

TEST(SlotCompressionCounts, RatiosOutsideZeroToOneAreRefusedByName) {
  auto c = slot_compression(8, 1.0, 0.0, 0.0, "--think", "--mustafar-k", "--mustafar-v");
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.error().message(), "--think: expected a ratio in [0, 1), found 1");
  c = slot_compression(8, 0.0, -0.1, 0.0, "--think", "--mustafar-k", "--mustafar-v");
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.error().message(), "--mustafar-k: expected a ratio in [0, 1), found -0.1");
  c = slot_compression(8, 0.0, 0.0, std::nan(""), "--think", "--mustafar-k", "--mustafar-v");
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.error().message().find("--mustafar-v"), std::string::npos);
}

SlotCompression think_and_mustafar(int think_recent, int dense_recent) {
  SlotCompression c = slot_compression(8, 0.4, 0.5, 0.5, "t", "k", "v").value();
  c.think_recent = think_recent;
  c.dense_recent = dense_recent;
  return c;
}

TEST(SlotCompressionLayout, BytesCountedByHand) {
  // head_dim 8, 10 slots, VATP's aux float; ThinK keeps 5 channels, Mustafar 3 of them and 4 of 8
  // value elements; windows of 32.
  const HeadShape shape{.budget = 10, .head_dim = 8, .aux_floats = 1, .compression = think_and_mustafar(32, 32)};
  const HeadLayout l = head_layout(shape);
  const size_t keys = 10 * 3 * 4, values = 10 * 4 * 4, k_drop = 32 * 3 * 4, k_resid = 32 * 2 * 4,
               v_resid = 32 * 4 * 4, meta = 3 * 10 * 4, channels = 8 * 4, masks = 12 + 12;  // 10 bytes each, padded
  EXPECT_EQ(l.bytes, keys + values + k_drop + k_resid + v_resid + meta + channels + masks);
  EXPECT_EQ(l.bytes, 1608u);
  // A dense head: the layout of every dense cache; budget 0: nothing.
  EXPECT_EQ(head_layout({.budget = 10, .head_dim = 8, .aux_floats = 1}).bytes, 10u * (2 * 8 * 4 + 8 + 4));
  EXPECT_EQ(head_layout({.budget = 0, .head_dim = 8, .compression = think_and_mustafar(32, 32)}).bytes, 0u);
  // KvBudgets sums the heads' layouts.
  KvBudgets b = KvBudgets::uniform(2, 3, 8, 10);
  b.aux_floats_per_slot = 1;
  b.compression = {think_and_mustafar(32, 32), SlotCompression{}};
  EXPECT_EQ(b.kv_bytes(), 3 * 1608 + 3 * 10 * (2 * 8 * 4 + 8 + 4));
  // Its prefill scratch is dense, plus ThinK's query sums (head_dim floats) on the ThinK layer.
  const KvBudgets scratch = b.prefill_scratch(40, 0);
  EXPECT_EQ(scratch.kv_bytes(), 6 * 40 * (2 * 8 * 4 + 8 + 4) + 3 * 8 * 4);
}

TEST(MagnitudeMask, KeepsTheLargestMagnitudesAndTheLowerIndexOnTies) {
  const float x[10] = {0.5f, -3.0f, 2.0f, -2.0f, 0.0f, 1.0f, -1.0f, 2.0f, 0.1f, -0.2f};
  uint8_t mask[2];
  magnitude_mask(x, 10, 4, mask);
  // |x| ranks index 1 (3) first, then the 2s at indices 2, 3 and 7 in index order: keeping 4 keeps
  // 1, 2, 3, 7; keeping 3 leaves 7 out.
  EXPECT_EQ(mask[0], (1u << 1) | (1u << 2) | (1u << 3) | (1u << 7));
  EXPECT_EQ(mask[1], 0u);
  magnitude_mask(x, 10, 3, mask);
  EXPECT_EQ(mask[0], (1u << 1) | (1u << 2) | (1u << 3));
}

TEST(ThinkChannels, ScoresQueryEnergyTimesKeyEnergyOfTheKeptKeys) {
  // head_dim 4, three slots; slot 1 is not kept. Σ q² = (1, 4, 0.25, 2); Σ over kept slots of k² =
  // (1 + 1, 0.01 + 0, 100 + 4, 1 + 0) = (2, 0.01, 104, 1): scores (2, 0.04, 26, 2). Keep 2: channel
  // 2, then channel 0 (tied with 3, the lower wins).
  const int hd = 4, B = 3;
  const HeadShape shape{.budget = B, .head_dim = hd, .query_sums = true};
  std::vector<uint32_t> storage(head_layout(shape).bytes / 4);
  int32_t n_used = 3;
  HeadSlots head = carve_head(reinterpret_cast<std::byte*>(storage.data()), shape, &n_used);
  const float keys[3][4] = {{1, 0.1f, 10, 1}, {50, 50, 50, 50}, {1, 0, 2, 0}};
  for (int j = 0; j < B; ++j) {
    for (int d = 0; d < hd; ++d) head.k[slot_element(B, hd, d, j)] = keys[j][d];
  }
  const float sums[4] = {1, 4, 0.25f, 2};
  std::copy_n(sums, 4, head.query_sums);
  const int kept[2] = {0, 2};
  int32_t channels[4];
  think_channels(head, kept, 2, channels);
  EXPECT_EQ(std::vector<int32_t>(channels, channels + 4), (std::vector<int32_t>{0, 2, 1, 3}));
}

// The reference: each slot's key and value as the methods define them, then softmax attention in
// double precision.
struct Reference {
  std::vector<double> out;      // [group, head_dim]
  std::vector<double> weights;  // [n + 1] summed over the group
};

std::vector<bool> top_magnitudes(const std::vector<float>& x, int keep) {
  std::vector<bool> kept(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    int above = 0;  // elements ranked before i
    for (size_t j = 0; j < x.size(); ++j) {
      above += std::fabs(x[j]) > std::fabs(x[i]) || (std::fabs(x[j]) == std::fabs(x[i]) && j < i);
    }
    kept[i] = above < keep;
  }
  return kept;
}

Reference reference_attention(const std::vector<float>& q, int group, int hd, const std::vector<std::vector<float>>& keys,
                              const std::vector<std::vector<float>>& values, const std::vector<int32_t>& positions,
                              const std::vector<int32_t>& channels, const SlotCompression& c, int32_t newest,
                              const std::vector<float>& k_new, const std::vector<float>& v_new) {
  const size_t n = keys.size();
  std::vector<std::vector<double>> k(n + 1, std::vector<double>(hd)), v = k;
  for (size_t j = 0; j < n; ++j) {
    const bool think_full = positions[j] > newest - c.think_recent, dense = positions[j] > newest - c.dense_recent;
    std::vector<float> thin;
    for (int i = 0; i < c.key_channels; ++i) thin.push_back(keys[j][channels[i]]);
    const std::vector<bool> kept = top_magnitudes(thin, c.key_elements);
    for (int i = 0; i < hd; ++i) {
      const bool kept_channel = i < c.key_channels;
      const bool stored = kept_channel ? (dense || kept[i]) : think_full;
      k[j][channels[i]] = stored ? keys[j][channels[i]] : 0.0;
    }
    const std::vector<bool> kept_v = top_magnitudes(values[j], c.value_elements);
    for (int d = 0; d < hd; ++d) v[j][d] = dense || kept_v[d] ? values[j][d] : 0.0;
  }
  for (int d = 0; d < hd; ++d) k[n][d] = k_new[d], v[n][d] = v_new[d];
  Reference r{std::vector<double>(size_t(group) * hd), std::vector<double>(n + 1)};
  for (int g = 0; g < group; ++g) {
    std::vector<double> logit(n + 1);
    double max = -INFINITY, sum = 0;
    for (size_t j = 0; j <= n; ++j) {
      for (int d = 0; d < hd; ++d) logit[j] += double(q[size_t(g) * hd + d]) * k[j][d];
      logit[j] /= std::sqrt(double(hd));
      max = std::max(max, logit[j]);
    }
    for (double& x : logit) sum += x = std::exp(x - max);
    for (size_t j = 0; j <= n; ++j) {
      r.weights[j] += logit[j] / sum;
      for (int d = 0; d < hd; ++d) r.out[size_t(g) * hd + d] += logit[j] / sum * v[j][d];
    }
  }
  return r;
}

struct AttentionCase {
  int head_dim, n, budget;
  double think, keys, values;
};

class CompressedAttention : public ::testing::TestWithParam<AttentionCase> {};

TEST_P(CompressedAttention, MatchesTheRebuiltDenseReference) {
  const AttentionCase ac = GetParam();
  const int hd = ac.head_dim, group = 2, B = ac.budget, n = ac.n;
  SlotCompression c = slot_compression(hd, ac.think, ac.keys, ac.values, "t", "k", "v").value();
  if (!c.compressed()) c = SlotCompression{.key_channels = hd, .key_elements = hd, .value_elements = hd};
  c.think_recent = 7;
  c.dense_recent = 5;
  const HeadShape shape{.budget = B, .head_dim = hd, .aux_floats = 0, .compression = c};
  std::vector<uint32_t> storage(head_layout(shape).bytes / 4);
  int32_t n_used = 0;
  const HeadSlots head = carve_head(reinterpret_cast<std::byte*>(storage.data()), shape, &n_used);
  std::mt19937 rng(hd * 1000 + n);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<int32_t> channels(hd);
  std::iota(channels.begin(), channels.end(), 0);
  if (head.channels) {
    std::shuffle(channels.begin(), channels.end(), rng);
    std::sort(channels.begin(), channels.begin() + c.key_channels);
    std::sort(channels.begin() + c.key_channels, channels.end());
    std::copy(channels.begin(), channels.end(), head.channels);
  }
  // Positions with gaps, in slots of no particular order; the newest land in both windows.
  std::vector<std::vector<float>> keys(n, std::vector<float>(hd)), values = keys;
  std::vector<int32_t> positions(n);
  for (int j = 0; j < n; ++j) positions[j] = 2 * j + (j % 3 == 0);
  std::shuffle(positions.begin(), positions.end(), rng);
  // Stored oldest first, as a cache fills (a ring entry ends with the newest position mapping to it).
  std::vector<int> by_age(n);
  std::iota(by_age.begin(), by_age.end(), 0);
  std::sort(by_age.begin(), by_age.end(), [&](int a, int b) { return positions[a] < positions[b]; });
  for (int j : by_age) {
    for (int d = 0; d < hd; ++d) keys[j][d] = normal(rng), values[j][d] = normal(rng);
    head.store(j, keys[j].data(), values[j].data(), positions[j]);
  }
  n_used = n;
  const int32_t newest = 2 * n + 1;
  std::vector<float> q(size_t(group) * hd), k_new(hd), v_new(hd);
  for (float& x : q) x = normal(rng);
  for (int d = 0; d < hd; ++d) k_new[d] = normal(rng), v_new[d] = normal(rng);
  std::vector<float> out(size_t(group) * hd), weights(n + 32), softmax(2 * group);
  Aligned64Vector<float> scratch(n + 32);
  compressed_slot_attention(q.data(), group, head, newest, k_new.data(), v_new.data(),
                            SlotAttentionOut{.out = out.data(), .weights = weights.data(), .softmax = softmax.data(),
                                             .scratch = scratch.data()});
  const Reference ref = reference_attention(q, group, hd, keys, values, positions, channels, c, newest, k_new, v_new);
  for (size_t i = 0; i < out.size(); ++i) EXPECT_NEAR(out[i], ref.out[i], 2e-5) << i;
  for (int j = 0; j <= n; ++j) EXPECT_NEAR(weights[j], ref.weights[j], 2e-6) << j;

  // The bit-by-bit reference form agrees with the expanded one to rounding.
  std::vector<float> out_ref(out.size()), weights_ref(n + 32), softmax_ref(2 * group);
  compressed_slot_attention_reference(q.data(), group, head, newest, k_new.data(), v_new.data(),
                                      SlotAttentionOut{.out = out_ref.data(), .weights = weights_ref.data(),
                                                       .softmax = softmax_ref.data(), .scratch = scratch.data()});
  for (size_t i = 0; i < out.size(); ++i) EXPECT_NEAR(out[i], out_ref[i], 1e-6) << i;
  for (int j = 0; j <= n; ++j) EXPECT_NEAR(weights[j], weights_ref[j], 1e-7) << j;

  // Nothing dropped: the compressed path computes what slot_attention does on the dense slots.
  if (c.key_elements == hd && c.value_elements == hd && c.key_channels == hd) {
    std::vector<float> k_dense(size_t(B) * hd), v_dense(size_t(B) * hd), out_dense(out.size()), w_dense(n + 32);
    for (int j = 0; j < n; ++j) {
      for (int d = 0; d < hd; ++d) {
        k_dense[slot_element(B, hd, d, j)] = keys[j][d];
        v_dense[slot_element(B, hd, d, j)] = values[j][d];
      }
    }
    slot_attention(q.data(), group, SlotKv{.k = k_dense.data(), .v = v_dense.data(), .capacity = B, .n_used = n, .head_dim = hd},
                   k_new.data(), v_new.data(),
                   SlotAttentionOut{.out = out_dense.data(), .weights = w_dense.data(), .softmax = nullptr,
                                    .scratch = scratch.data()});
    for (size_t i = 0; i < out.size(); ++i) EXPECT_NEAR(out[i], out_dense[i], 1e-6) << i;
  }
}

INSTANTIATE_TEST_SUITE_P(
    Layouts, CompressedAttention,
    ::testing::Values(AttentionCase{8, 37, 40, 0.4, 0.5, 0.5}, AttentionCase{8, 16, 16, 0.4, 0.0, 0.0},
                      AttentionCase{8, 21, 30, 0.0, 0.5, 0.0}, AttentionCase{8, 21, 30, 0.0, 0.0, 0.5},
                      AttentionCase{64, 45, 48, 0.4, 0.5, 0.5}, AttentionCase{64, 33, 33, 0.5, 0.0, 0.7},
                      AttentionCase{128, 19, 20, 0.4, 0.7, 0.7}, AttentionCase{8, 37, 40, 0.0, 0.0, 0.0},
                      AttentionCase{64, 50, 64, 0.0, 0.0, 0.0}));

}  // namespace
}  // namespace kvp
