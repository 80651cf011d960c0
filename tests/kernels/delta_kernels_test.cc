// DELTA's kernels (delta_select_kernel, decode_attention's masks and maxima) on the emulated device
// against the CPU's choice and sparse attention (planner/policy/delta.cc, layer_step.cc): the same
// pages, ties included, and the same outputs and scores over the chosen pages.
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <random>
#include <vector>

#include "kernels/launch.h"
#include "kernels/score_rule.h"
#include "planner/policy/delta.h"
#include "planner/policy/layer_step.h"

namespace kvp {
namespace {

// Rows of 2 KV heads whose slots hold shuffled subsets of the positions before the newest; maxima
// from few values (pages tie) or all zero but one slot (every other page ties at 0).
TEST(DeltaKernels, SelectTheCpusPages) {
  std::mt19937 rng(3);
  int cases = 0;
  for (int page_size : {1, 4, 16}) {
    for (int pages : {1, 3, 8}) {
      for (int last : {0, 2}) {
        for (int sinks : {0, 4, 20}) {
          const int rows = 3, H = 2, cap = 64, stride = cap + 1;
          const std::vector<int32_t> newest_row = {37, 64, 23};
          std::vector<int32_t> pos(size_t(rows) * H * cap), n_used(rows * H), newest(rows * H);
          std::vector<int64_t> offset(rows * H);
          std::vector<float> head_max(size_t(rows) * H * stride, -1.0f);
          for (int r = 0; r < rows; ++r) {
            for (int h = 0; h < H; ++h) {
              const int e = r * H + h;
              offset[e] = int64_t(e) * cap, newest[e] = newest_row[r];
              std::vector<int32_t> all(newest_row[r]);
              std::iota(all.begin(), all.end(), 0);
              std::shuffle(all.begin(), all.end(), rng);
              n_used[e] = std::min<int>(newest_row[r], 20 + int(rng() % 30));
              for (int j = 0; j < n_used[e]; ++j) {
                pos[offset[e] + j] = all[j];
                head_max[size_t(e) * stride + j] = r == 2 ? (j == 5 ? 0.5f : 0.0f) : float(rng() % 4) * 0.125f;
              }
            }
          }
          const int chosen_stride = 64 / page_size + 2;
          std::vector<float> pos_weight(size_t(rows) * 64), page_score(size_t(rows) * chosen_stride);
          std::vector<uint8_t> chosen(size_t(rows) * chosen_stride, 7);
          const SlotCacheView view{nullptr, nullptr, false, pos.data(), nullptr, nullptr, offset.data(), nullptr,
                                   n_used.data()};
          emulated::delta_select(view, head_max.data(), stride, newest.data(), rows, H,
                                 DeltaRule{.pages = pages, .page_size = page_size, .last = last, .sinks = sinks},
                                 pos_weight.data(), 64, page_score.data(), chosen.data(), chosen_stride, 64);
          const DeltaParams d{.layers = "sp", .pages = pages, .page_size = page_size, .last = last};
          for (int r = 0; r < rows; ++r) {
            DeltaRow want;
            want.pos_weight.assign(newest_row[r], 0.0f);
            for (int h = 0; h < H; ++h) {
              const int e = r * H + h;
              for (int j = 0; j < n_used[e]; ++j) {
                float& w = want.pos_weight[pos[offset[e] + j]];
                w = std::max(w, head_max[size_t(e) * stride + j]);
              }
            }
            choose_pages(d, sinks, newest_row[r], want);
            const std::vector<uint8_t> got(chosen.begin() + size_t(r) * chosen_stride,
                                           chosen.begin() + size_t(r) * chosen_stride + want.chosen.size());
            EXPECT_EQ(got, want.chosen) << "page_size " << page_size << " pages " << pages << " last " << last
                                        << " sinks " << sinks << " row " << r;
            ++cases;
          }
        }
      }
    }
  }
  EXPECT_EQ(cases, 3 * 3 * 2 * 3 * 3);
}

// A sparse layer's decode attention (H2O's accumulating rule) over shuffled slots against the CPU's
// sparse_slot_attention: outputs and the new token's weight to rounding; slots off the chosen pages
// keep their scores, the others gain the CPU's weights. A selection layer's maxima are the CPU's.
TEST(DeltaKernels, MaskedAttentionAndMaximaAreTheCpus) {
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const int H = 2, group = 2, hd = 8, cap = 50, n = 45, page_size = 4, newest = 60;
  std::vector<float> k(size_t(H) * hd * cap), v(k.size()), score(size_t(H) * cap, 0.25f), l1(score.size(), 1.0f);
  std::vector<int32_t> pos(size_t(H) * cap), n_used(H, n), capacity(H, cap);
  std::vector<int64_t> offset = {0, cap};
  std::vector<float> q(size_t(H) * group * hd), k_new(size_t(H) * hd), v_new(k_new.size());
  for (float& x : k) x = normal(rng);
  for (float& x : v) x = normal(rng);
  for (float& x : q) x = normal(rng);
  for (float& x : k_new) x = normal(rng);
  for (float& x : v_new) x = normal(rng);
  for (int h = 0; h < H; ++h) {
    std::vector<int32_t> all(newest);
    std::iota(all.begin(), all.end(), 0);
    std::shuffle(all.begin(), all.end(), rng);
    std::copy_n(all.begin(), n, pos.begin() + offset[h]);
  }
  DeltaRow row;
  row.chosen.assign(newest / page_size + 1, 0);
  for (size_t p = 0; p < row.chosen.size(); ++p) row.chosen[p] = rng() % 3 == 0;
  row.pos_chosen.resize(newest);
  for (int p = 0; p < newest; ++p) row.pos_chosen[p] = row.chosen[p / page_size];

  const DecodeRows rows_base{.q = q.data(), .k_new = k_new.data(), .v_new = v_new.data(), .out = nullptr,
                             .self_weight = nullptr, .heads = H, .group = group, .head_dim = hd};
  std::vector<float> gpu_out(q.size()), self(H), weights(size_t(H) * group * (cap + 1)), head_max(size_t(H) * (cap + 1));
  std::vector<float> gpu_score = score;
  DecodeRows rows = rows_base;
  rows.out = gpu_out.data(), rows.self_weight = self.data();
  SlotCacheView view{k.data(), v.data(), false, pos.data(), gpu_score.data(), l1.data(), offset.data(), capacity.data(),
                     n_used.data()};
  emulated::decode_attention(rows, view, weights.data(), cap + 1, math::kScoreAttention,
                             DeltaPages{.chosen = row.chosen.data(), .chosen_stride = int(row.chosen.size()),
                                        .page_size = page_size, .n_kv_heads = H},
                             64);
  // The same head on the CPU: blocked slots, its sparse attention's weights over n + 1.
  StepScratch sc(cap + 1);
  int masked = 0;
  for (int h = 0; h < H; ++h) {
    std::vector<float> bk(size_t(cap) * hd), bv(bk.size()), s(cap), cpu_score(cap);
    std::vector<int32_t> p(pos.begin() + offset[h], pos.begin() + offset[h] + cap);
    int32_t used = n;
    for (int j = 0; j < cap; ++j) {
      for (int d = 0; d < hd; ++d) {
        bk[slot_element(cap, hd, d, j)] = k[size_t(offset[h]) * hd + size_t(d) * cap + j];
        bv[slot_element(cap, hd, d, j)] = v[size_t(offset[h]) * hd + size_t(d) * cap + j];
      }
    }
    const HeadSlots head{.k = bk.data(), .v = bv.data(), .pos = p.data(), .score = s.data(), .aux = nullptr,
                         .budget = cap, .n_used = &used, .head_dim = hd};
    std::vector<float> out(size_t(group) * hd), w(cap + 32);
    alignas(64) static float scratch[128];
    sparse_slot_attention(q.data() + size_t(h) * group * hd, group, head, k_new.data() + size_t(h) * hd,
                          v_new.data() + size_t(h) * hd,
                          {.out = out.data(), .weights = w.data(), .softmax = nullptr, .scratch = scratch}, row, sc);
    for (int i = 0; i < group * hd; ++i) EXPECT_NEAR(gpu_out[size_t(h) * group * hd + i], out[i], 1e-5) << h << " " << i;
    EXPECT_NEAR(self[h], w[n], 1e-6);
    for (int j = 0; j < n; ++j) {
      const float got = gpu_score[size_t(offset[h]) + j];
      if (!page_chosen(row, p[j])) {
        EXPECT_EQ(got, 0.25f) << "a masked slot's score is untouched";
        ++masked;
      } else {
        EXPECT_NEAR(got, 0.25f + w[j], 1e-6);
      }
    }
  }
  EXPECT_GT(masked, 20);

  // A selection layer: the maxima over the group's weights, as slot_attention's head_max.
  std::fill(gpu_score.begin(), gpu_score.end(), 0.0f);
  emulated::decode_attention(rows, view, weights.data(), cap + 1, math::kScoreAttention,
                             DeltaPages{.n_kv_heads = H, .head_max = head_max.data(), .head_max_stride = cap + 1}, 64);
  for (int h = 0; h < H; ++h) {
    std::vector<float> bk(size_t(cap) * hd), bv(bk.size()), out(size_t(group) * hd), w(cap + 32), hm(cap + 32);
    for (int j = 0; j < cap; ++j) {
      for (int d = 0; d < hd; ++d) {
        bk[slot_element(cap, hd, d, j)] = k[size_t(offset[h]) * hd + size_t(d) * cap + j];
        bv[slot_element(cap, hd, d, j)] = v[size_t(offset[h]) * hd + size_t(d) * cap + j];
      }
    }
    alignas(64) static float scratch[128];
    slot_attention(q.data() + size_t(h) * group * hd, group,
                   SlotKv{.k = bk.data(), .v = bv.data(), .capacity = cap, .n_used = n, .head_dim = hd},
                   k_new.data() + size_t(h) * hd, v_new.data() + size_t(h) * hd,
                   {.out = out.data(), .weights = w.data(), .softmax = nullptr, .scratch = scratch, .head_max = hm.data()});
    for (int j = 0; j < n; ++j) EXPECT_NEAR(head_max[size_t(h) * (cap + 1) + j], hm[j], 1e-6) << h << " " << j;
  }
}

}  // namespace
}  // namespace kvp
