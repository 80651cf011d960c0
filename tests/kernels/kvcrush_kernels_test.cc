// KVCrush's kernels (kernels/kvcrush_kernels.cuh) on the emulated device against the CPU's
// selection (planner/policy/kvcrush.cc): the same kept rows, ties and every anchor included; and
// the in-place cut of a dense cache against moving its slots by hand.
#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "kernels/launch.h"
#include "planner/policy/policies.h"

namespace kvp {
namespace {

TEST(KvCrushKernels, KeepTheCpusRows) {
  std::mt19937 rng(7);
  int cases = 0;
  for (int n : {10, 37, 100, 300}) {
    for (int heads : {1, 2, 4, 8}) {
      for (double ratio : {0.0, 0.25, 0.5}) {
        for (int anchor = 0; anchor < 3; ++anchor) {
          const int sinks = n % 3, recent = 1 + n % 5, budget = std::max(sinks + recent + 1, n / 3);
          std::vector<int32_t> pos(n);
          int32_t p = 0;
          for (int j = 0; j < n; ++j) pos[j] = p, p += 1 + static_cast<int>(rng() % 3);  // gaps, as after cuts
          const int32_t newest = p;
          // Keys from a few values, so ranks tie within a head and between sums.
          std::vector<float> keys(size_t(heads) * n);
          for (float& k : keys) k = static_cast<float>(rng() % 7) * 0.25f;
          std::vector<SlotArrays> views;
          for (int h = 0; h < heads; ++h) {
            views.push_back(SlotArrays{.n_used = n, .budget = n, .pos = pos.data(), .score = keys.data() + size_t(h) * n});
          }
          const PolicyParams params{.sinks = sinks, .recent = recent, .seed = 5, .crush_base = "h2o", .crush_ratio = ratio,
                                    .crush_anchor = static_cast<CrushAnchor>(anchor), .crush_period = 1};
          const auto policy = make_policy("kvcrush", params).value();
          const std::vector<int> want = select_kept(*policy, views, newest, budget);
          std::vector<int32_t> work(2 * size_t(n)), keep(budget, -7);
          emulated::kvcrush_keep(keys.data(), heads, n, n, pos.data(),
                                 CrushRule{.newest = newest, .sinks = sinks, .recent = recent, .ratio = ratio,
                                           .anchor = anchor, .seed = 5},
                                 budget, work.data(), keep.data(), 64);
          std::vector<int> got;
          for (int32_t r : keep) {
            if (r >= 0) got.push_back(r);
          }
          ASSERT_EQ(got, want) << "n " << n << " heads " << heads << " ratio " << ratio << " anchor " << anchor;
          ++cases;
        }
      }
    }
  }
  EXPECT_EQ(cases, 4 * 4 * 3 * 3);
}

TEST(KvCrushKernels, ANarrowCacheIsKeptWhole) {
  const std::vector<float> keys = {3, 1, 2};
  const std::vector<int32_t> pos = {0, 1, 2};
  std::vector<int32_t> work(6), keep(5, -7);
  emulated::kvcrush_keep(keys.data(), 1, 3, 3, pos.data(), CrushRule{.newest = 3, .recent = 1, .ratio = 0.5}, 5,
                         work.data(), keep.data(), 32);
  EXPECT_EQ(keep, (std::vector<int32_t>{0, 1, 2, -1, -1}));
}

// Two f32 heads of capacity 6 (keys and values transposed, [head_dim, capacity]): slots 1, 3, 4
// move to 0, 1, 2 with their positions, scores and value norms; the keys are math::eviction_key's.
TEST(KvCrushKernels, SlotCompactMovesTheKeptSlotsDown) {
  const int hd = 3, cap = 6;
  std::vector<float> k(2 * hd * cap), v(2 * hd * cap), score(2 * cap), l1(2 * cap);
  std::vector<int32_t> pos(2 * cap);
  for (int h = 0; h < 2; ++h) {
    for (int s = 0; s < cap; ++s) {
      for (int d = 0; d < hd; ++d) {
        k[(h * hd + d) * cap + s] = 100.0f * h + 10.0f * d + s;
        v[(h * hd + d) * cap + s] = -(100.0f * h + 10.0f * d + s);
      }
      pos[h * cap + s] = 2 * s, score[h * cap + s] = 0.5f * s + h, l1[h * cap + s] = 7.0f + s;
    }
  }
  const std::vector<int64_t> offset = {0, cap};
  const std::vector<int32_t> capacity = {cap, cap};
  const SlotCacheView view{.k = k.data(), .v = v.data(), .half = false, .pos = pos.data(), .score = score.data(),
                           .value_l1 = l1.data(), .offset = offset.data(), .capacity = capacity.data()};
  std::vector<float> keys(2 * cap);
  emulated::slot_keys(view, 2, cap, 11, 1, keys.data(), cap, 32);
  for (int h = 0; h < 2; ++h) {
    for (int s = 0; s < cap; ++s) EXPECT_EQ(keys[h * cap + s], (0.5f * s + h) / static_cast<float>(11 - 2 * s + 1));
  }
  const std::vector<int32_t> keep = {1, 3, 4};
  emulated::slot_compact(view, 2, keep.data(), 3, hd, 32);
  for (int h = 0; h < 2; ++h) {
    for (int s = 0; s < 3; ++s) {
      for (int d = 0; d < hd; ++d) {
        EXPECT_EQ(k[(h * hd + d) * cap + s], 100.0f * h + 10.0f * d + keep[s]);
        EXPECT_EQ(v[(h * hd + d) * cap + s], -(100.0f * h + 10.0f * d + keep[s]));
      }
      EXPECT_EQ(pos[h * cap + s], 2 * keep[s]);
      EXPECT_EQ(score[h * cap + s], 0.5f * keep[s] + h);
      EXPECT_EQ(l1[h * cap + s], 7.0f + keep[s]);
    }
  }
}

}  // namespace
}  // namespace kvp
