#include "planner/trace_stats.h"

#include <gtest/gtest.h>

#include <cmath>

namespace kvp {
namespace {

TEST(CausalAttentionRow, MatchesAHandComputedSoftmax) {
  // 2 query heads sharing 1 KV head, head_dim 2, 3 positions.
  // q at t=2 for head 1 is (1, 0); keys (0,0), (2,0), (0,1) -> logits (0, 2, 0) / sqrt(2).
  const std::vector<float> q = {0, 0, 0, 0,  0, 0, 0, 0,  9, 9, 1, 0};  // [T=3, H=2, hd=2]
  const std::vector<float> k = {0, 0, 2, 0, 0, 1};                     // [T=3, KVH=1, hd=2]
  std::vector<double> p;
  causal_attention_row(q.data(), k.data(), 2, 1, 2, /*head_idx=*/1, /*t=*/2, &p);
  ASSERT_EQ(p.size(), 3u);
  const double e = std::exp(2.0 / std::sqrt(2.0));
  EXPECT_NEAR(p[0], 1.0 / (2.0 + e), 1e-12);
  EXPECT_NEAR(p[1], e / (2.0 + e), 1e-12);
  EXPECT_NEAR(p[2], 1.0 / (2.0 + e), 1e-12);
  // t = 0: only itself.
  causal_attention_row(q.data(), k.data(), 2, 1, 2, 0, 0, &p);
  ASSERT_EQ(p.size(), 1u);
  EXPECT_DOUBLE_EQ(p[0], 1.0);
}

}  // namespace
}  // namespace kvp
