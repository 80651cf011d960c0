// Greedy picking against the plain loop it must equal: the first index of the largest value.
#include "executor/sampler.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>

namespace kvp {
namespace {

int32_t plain_argmax(const std::vector<float>& v) {
  int32_t best = 0;
  for (size_t i = 1; i < v.size(); ++i) {
    if (v[i] > v[best]) best = static_cast<int32_t>(i);
  }
  return best;
}

TEST(Sampler, ArgmaxIsTheFirstLargestAtEveryLengthAndPlace) {
  std::mt19937 rng(3);
  std::uniform_int_distribution<int> small(-3, 3);  // few distinct values: many ties
  for (int n = 1; n <= 70; ++n) {
    for (int trial = 0; trial < 20; ++trial) {
      std::vector<float> v(n);
      for (float& x : v) x = static_cast<float>(small(rng));
      ASSERT_EQ(argmax(v), plain_argmax(v)) << "n " << n;
      v[rng() % n] = 9.0f;  // one winner anywhere, the tail included
      ASSERT_EQ(argmax(v), plain_argmax(v)) << "n " << n;
    }
  }
}

TEST(Sampler, ArgmaxTreatsNanAsThePlainLoopDoes) {
  std::vector<float> v(40, 1.0f);
  v[17] = 2.0f;
  v[5] = NAN;
  v[39] = NAN;
  EXPECT_EQ(argmax(v), 17);  // a NaN never wins
  v[0] = NAN;
  EXPECT_EQ(argmax(v), 0);  // nothing compares greater than a NaN first
  std::vector<float> zeros = {-0.0f, 0.0f, -0.0f};
  EXPECT_EQ(argmax(zeros), 0);
  std::vector<float> infs(33, -INFINITY);
  EXPECT_EQ(argmax(infs), 0);
  infs[32] = INFINITY;
  EXPECT_EQ(argmax(infs), 32);
}

TEST(Sampler, GreedyPickIsTheArgmax) {
  std::vector<float> logits(512, 0.0f);
  logits[300] = 1.5f;
  logits[400] = 1.5f;
  EXPECT_EQ(pick_token(logits, SamplerOptions{.temperature = 0.0f}, 0.7f), 300);
}

}  // namespace
}  // namespace kvp
