// slot_attention and the victim search against plain double-precision / linear-scan references,
// over counts of slots that leave every possible remainder of the 16-lane blocks.
#include "planner/policy/slot_attention.h"

#include <gtest/gtest.h>

#include "common/aligned_vector.h"

#include <climits>
#include <cmath>
#include <random>
#include <vector>

#include <Eigen/Core>

namespace kvp {
namespace {

struct Case {
  int head_dim, group, n, capacity;
};

struct Head {
  std::vector<float> k, v, q, k_new, v_new;
};

Head random_head(const Case& c, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  auto fill = [&](size_t n) {
    std::vector<float> x(n);
    for (float& e : x) e = normal(rng);
    return x;
  };
  Head h;
  h.k = fill(size_t(c.head_dim) * c.capacity);
  h.v = fill(size_t(c.head_dim) * c.capacity);
  h.q = fill(size_t(c.group) * c.head_dim);
  h.k_new = fill(c.head_dim);
  h.v_new = fill(c.head_dim);
  return h;
}

struct AttendResult {
  std::vector<float> out, weights, softmax;
};

AttendResult run(const Case& c, const Head& h) {
  AttendResult r{std::vector<float>(size_t(c.group) * c.head_dim), std::vector<float>(c.n + 17),
                 std::vector<float>(2 * c.group)};
  Aligned64Vector<float> scratch(c.n + 17);
  slot_attention(h.q.data(), c.group, SlotKv{.k = h.k.data(), .v = h.v.data(), .capacity = c.capacity, .n_used = c.n,
                                             .head_dim = c.head_dim},
                 h.k_new.data(), h.v_new.data(),
                 SlotAttentionOut{.out = r.out.data(), .weights = r.weights.data(), .softmax = r.softmax.data(),
                                  .scratch = scratch.data()});
  return r;
}

class SlotAttention : public ::testing::TestWithParam<Case> {};

TEST_P(SlotAttention, MatchesADoublePrecisionSoftmaxAttention) {
  const Case c = GetParam();
  const Head h = random_head(c, 7);
  const AttendResult r = run(c, h);
  std::vector<double> weight_sum(c.n + 1, 0.0);
  for (int g = 0; g < c.group; ++g) {
    const float* q = h.q.data() + size_t(g) * c.head_dim;
    std::vector<double> s(c.n + 1);
    for (int j = 0; j <= c.n; ++j) {
      double dot = 0;
      for (int d = 0; d < c.head_dim; ++d) {
        dot += double(q[d]) * (j < c.n ? h.k[slot_element(c.capacity, c.head_dim, d, j)] : h.k_new[d]);
      }
      s[j] = dot / std::sqrt(double(c.head_dim));
    }
    const double m = *std::max_element(s.begin(), s.end());
    double z = 0;
    for (double& x : s) z += (x = std::exp(x - m));
    EXPECT_NEAR(r.softmax[2 * g] + std::log(r.softmax[2 * g + 1]), m + std::log(z), 1e-5);
    EXPECT_NEAR(r.softmax[2 * g], m, 1e-5);
    for (int d = 0; d < c.head_dim; ++d) {
      double o = 0;
      for (int j = 0; j <= c.n; ++j) {
        o += s[j] / z * (j < c.n ? h.v[slot_element(c.capacity, c.head_dim, d, j)] : h.v_new[d]);
      }
      EXPECT_NEAR(r.out[size_t(g) * c.head_dim + d], o, 2e-5) << "query " << g << " element " << d;
    }
    for (int j = 0; j <= c.n; ++j) weight_sum[j] += s[j] / z;
  }
  for (int j = 0; j <= c.n; ++j) EXPECT_NEAR(r.weights[j], weight_sum[j], 1e-6) << "slot " << j;
}

// The blocked layout by hand: 20 slots of head_dim 3 are a block of 16 (rows of 16) and one of 4
// (rows of 4), every element once.
TEST(SlotLayout, BlocksOf16SlotsThenTheRest) {
  EXPECT_EQ(slot_element(20, 3, 0, 0), 0u);
  EXPECT_EQ(slot_element(20, 3, 1, 0), 16u);
  EXPECT_EQ(slot_element(20, 3, 2, 15), 47u);
  EXPECT_EQ(slot_element(20, 3, 0, 16), 48u);
  EXPECT_EQ(slot_element(20, 3, 2, 17), 48u + 2 * 4 + 1);
  std::vector<int> seen(60, 0);
  for (int d = 0; d < 3; ++d) {
    for (int j = 0; j < 20; ++j) ++seen.at(slot_element(20, 3, d, j));
  }
  EXPECT_EQ(seen, std::vector<int>(60, 1));
}

TEST_P(SlotAttention, GivesTheSameBitsWhereverTheSlotsSit) {
  const Case c = GetParam();
  const Head h = random_head(c, 11);
  // The same slots in a wider buffer: every key and value at another address and stride.
  Case wide = c;
  wide.capacity = c.capacity + 5;
  Head moved = h;
  moved.k.assign(size_t(c.head_dim) * wide.capacity, NAN);  // unused slots hold NaN: never read
  moved.v = moved.k;
  for (int d = 0; d < c.head_dim; ++d) {
    for (int j = 0; j < c.n; ++j) {
      moved.k[slot_element(wide.capacity, c.head_dim, d, j)] = h.k[slot_element(c.capacity, c.head_dim, d, j)];
      moved.v[slot_element(wide.capacity, c.head_dim, d, j)] = h.v[slot_element(c.capacity, c.head_dim, d, j)];
    }
  }
  const AttendResult a = run(c, h), b = run(wide, moved);
  EXPECT_EQ(a.out, b.out);
  EXPECT_EQ(a.weights, b.weights);
  EXPECT_EQ(a.softmax, b.softmax);
}

std::vector<Case> cases() {
  std::vector<Case> out;
  for (int hd : {8, 5, 64}) {
    for (int group : {1, 3}) {
      for (int n : {0, 1, 15, 16, 17, 31, 33, 100}) out.push_back({hd, group, n, n + 3});
    }
  }
  out.push_back({128, 2, 47, 47});
  return out;
}

INSTANTIATE_TEST_SUITE_P(Shapes, SlotAttention, ::testing::ValuesIn(cases()), [](const auto& info) {
  const Case& c = info.param;
  return "hd" + std::to_string(c.head_dim) + "_g" + std::to_string(c.group) + "_n" + std::to_string(c.n);
});

// The victim by a linear scan: lowest key among unprotected slots, the older position on ties;
// when every unprotected key is +inf, the oldest unprotected slot.
int reference_victim(const PolicyParams& p, const std::vector<int32_t>& pos, const std::vector<float>& key,
                     int32_t newest) {
  int best = -1;
  for (size_t j = 0; j < pos.size(); ++j) {
    if (is_protected(p, pos[j], newest)) continue;
    if (best < 0 || key[j] < key[best] || (key[j] == key[best] && pos[j] < pos[best])) best = static_cast<int>(j);
  }
  return best;
}

TEST(Victim, MatchesALinearScanWithTiesAndInfiniteKeys) {
  auto h2o = std::move(make_policy("h2o", PolicyParams{.sinks = 2, .recent = 3})).value();
  std::mt19937 rng(3);
  for (int n : {1, 4, 15, 16, 17, 40, 64, 129}) {
    for (int trial = 0; trial < 50; ++trial) {
      // Distinct positions in shuffled slot order; keys from a small set so ties are common.
      std::vector<int32_t> pos(n);
      for (int j = 0; j < n; ++j) pos[j] = j * 2 + (trial % 2);
      std::shuffle(pos.begin(), pos.end(), rng);
      std::vector<float> key(n);
      for (float& k : key) k = trial % 7 == 0 ? INFINITY : float(rng() % 4);
      const int32_t newest = 2 * n + 1;
      std::vector<float> score = key;
      SlotArrays s{.n_used = n, .budget = n, .pos = pos.data(), .score = score.data(), .aux = nullptr};
      EXPECT_EQ(choose_victim(*h2o, s, newest), reference_victim(h2o->params(), pos, key, newest))
          << "n " << n << " trial " << trial;
    }
  }
}

}  // namespace
}  // namespace kvp
