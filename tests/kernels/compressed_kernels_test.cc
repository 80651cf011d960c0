// The compressed-cache kernels (kernels/compressed_kernels.cuh) on the emulated device against the
// CPU executor's implementation (planner/policy/kv_compression.cc), which kv_compression_test checks
// against a rebuilt dense reference: the same bytes where the layouts agree (masks, packed
// elements, rings), the same short keys element by element, the same channels, and attention to
// rounding.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "common/aligned_vector.h"
#include "kernels/compressed_layout.h"
#include "kernels/launch.h"
#include "kernels/score_rule.h"
#include "planner/policy/kv_compression.h"
#include "planner/policy/layer_step.h"

namespace kvp {
namespace {

TEST(CompressedLayout, DeviceBlockPlusSlotRegionsAreTheMemoryModelsBytes) {
  for (int hd : {8, 12, 64, 128}) {
    for (double think : {0.0, 0.4}) {
      for (double keys : {0.0, 0.5, 0.7}) {
        for (double values : {0.0, 0.5}) {
          for (int eb : {2, 4}) {
            for (int aux : {0, 1}) {
              for (int budget : {0, 1, 3, 17, 64}) {
                SlotCompression c = slot_compression(hd, think, keys, values, "t", "k", "v").value();
                c.think_recent = 7, c.dense_recent = 5;
                const HeadShape host{.budget = budget, .head_dim = hd, .elem_bytes = eb, .aux_floats = aux,
                                     .compression = c};
                const int64_t device =
                    compressed_parts(compressed_shape(c, hd, eb), budget).bytes + int64_t{budget} * (8 + 4 * aux);
                ASSERT_EQ(device, static_cast<int64_t>(head_layout(host).bytes))
                    << "hd " << hd << " think " << think << " keys " << keys << " values " << values << " eb " << eb
                    << " budget " << budget;
              }
            }
          }
        }
      }
    }
  }
}

// One compressed head on the device: per-slot positions and scores, and its block.
struct DeviceHead {
  std::vector<int32_t> pos;
  std::vector<float> score;
  std::vector<uint32_t> block;  // 4-byte aligned
  CompressedShape shape;
  int64_t offset = 0, block_at = 0;
  int32_t cap = 0, n_used = 0, newest = 0;

  DeviceHead(const CompressedShape& s, int budget)
      : pos(budget), score(budget), block(compressed_parts(s, budget).bytes / 4), shape(s), cap(budget) {}
  uint8_t* bytes() { return reinterpret_cast<uint8_t*>(block.data()); }
  SlotCacheView view() {
    return SlotCacheView{.k = nullptr, .v = nullptr, .half = shape.elem_bytes == 2, .pos = pos.data(),
                         .score = score.data(), .value_l1 = nullptr, .offset = &offset, .capacity = &cap,
                         .n_used = &n_used, .blocks = bytes(), .block = &block_at, .shape = shape, .newest = &newest};
  }
  CompressedParts parts() const { return compressed_parts(shape, cap); }
  template <typename T>
  const T* at(int64_t offset_bytes) {
    return reinterpret_cast<const T*>(bytes() + offset_bytes);
  }
};

struct StoreCase {
  int head_dim, n, budget;
  double think, keys, values;
};

class CompressedKernels : public ::testing::TestWithParam<StoreCase> {};

// Tokens stored one by one through the insert kernel (some into slots already used, as evictions
// do) hold what HeadSlots::store_compressed holds; decode attention over them is the CPU's.
TEST_P(CompressedKernels, InsertAndDecodeAttentionAreTheCpusCompressedHead) {
  const StoreCase sc = GetParam();
  const int hd = sc.head_dim, B = sc.budget, group = 2;
  SlotCompression c = slot_compression(hd, sc.think, sc.keys, sc.values, "t", "k", "v").value();
  c.think_recent = 7;
  c.dense_recent = 5;
  const HeadShape shape{.budget = B, .head_dim = hd, .aux_floats = 0, .compression = c};
  std::vector<uint32_t> storage(head_layout(shape).bytes / 4);
  int32_t cpu_used = 0;
  const HeadSlots cpu = carve_head(reinterpret_cast<std::byte*>(storage.data()), shape, &cpu_used);
  const CompressedShape ds = compressed_shape(c, hd, 4);
  DeviceHead gpu(ds, B);
  std::mt19937 rng(hd * 7919 + sc.n);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<int32_t> channels(hd);
  std::iota(channels.begin(), channels.end(), 0);
  if (cpu.channels) {
    std::shuffle(channels.begin(), channels.end(), rng);
    std::sort(channels.begin(), channels.begin() + c.key_channels);
    std::sort(channels.begin() + c.key_channels, channels.end());
    std::copy(channels.begin(), channels.end(), cpu.channels);
    std::memcpy(gpu.bytes() + gpu.parts().channels, channels.data(), channels.size() * 4);
  }
  // n tokens at positions 0..n-1: the first B fill the slots, the rest replace random ones.
  std::vector<float> key(hd), value(hd);
  const math::ScoreArgs args{.rule = math::kScoreAttention};
  for (int t = 0; t < sc.n; ++t) {
    for (int d = 0; d < hd; ++d) key[d] = normal(rng), value[d] = normal(rng);
    if (t % 5 == 0) key[1] = -key[0], value[2] = value[3];  // ties of magnitude
    const int32_t slot = t < B ? t : static_cast<int32_t>(rng() % B);
    cpu.store(slot, key.data(), value.data(), t);
    const DecodeRows rows{.q = nullptr, .k_new = key.data(), .v_new = value.data(), .out = nullptr,
                          .self_weight = nullptr, .heads = 1, .group = group, .head_dim = hd};
    emulated::insert(rows, gpu.view(), &slot, &t, args, 1, 32);
    ASSERT_EQ(gpu.pos[slot], t);
  }
  const int n = std::min(sc.n, B);
  cpu_used = gpu.n_used = n;
  // The parts whose bytes both layouts share.
  const CompressedParts p = gpu.parts();
  const HeadLayout hl = head_layout(shape);
  const auto* host = reinterpret_cast<const uint8_t*>(storage.data());
  auto same_bytes = [&](int64_t device_at, size_t host_at, size_t bytes, const char* what) {
    EXPECT_EQ(0, std::memcmp(gpu.bytes() + device_at, host + host_at, bytes)) << what;
  };
  if (ds.sparse_keys()) {
    same_bytes(p.k_mask, hl.k_mask, size_t(B) * ds.key_mask_bytes(), "key masks");
    same_bytes(p.k, hl.k, size_t(B) * ds.key_elements * 4, "packed keys");
    same_bytes(p.k_resid, hl.k_resid, size_t(ds.dense_recent) * (ds.key_channels - ds.key_elements) * 4, "key ring");
  } else {
    for (int i = 0; i < ds.key_channels; ++i) {
      for (int j = 0; j < n; ++j) {
        ASSERT_EQ(gpu.at<float>(p.k)[int64_t(i) * B + j], cpu.k[slot_element(B, ds.key_channels, i, j)]) << i << " " << j;
      }
    }
  }
  if (ds.sparse_values()) {
    same_bytes(p.v_mask, hl.v_mask, size_t(B) * ds.value_mask_bytes(), "value masks");
    same_bytes(p.v, hl.v, size_t(B) * ds.value_elements * 4, "packed values");
    same_bytes(p.v_resid, hl.v_resid, size_t(ds.dense_recent) * (hd - ds.value_elements) * 4, "value ring");
  }
  if (ds.thin()) same_bytes(p.k_drop, hl.k_drop, size_t(ds.think_recent) * (hd - ds.key_channels) * 4, "ThinK ring");

  std::vector<float> q(size_t(group) * hd), k_new(hd), v_new(hd);
  for (float& x : q) x = normal(rng);
  for (int d = 0; d < hd; ++d) k_new[d] = normal(rng), v_new[d] = normal(rng);
  const int32_t newest = sc.n;
  std::vector<float> want(q.size()), want_weights(n + 32), softmax(2 * group);
  Aligned64Vector<float> scratch(n + 32);
  compressed_slot_attention_reference(q.data(), group, cpu, newest, k_new.data(), v_new.data(),
                                      SlotAttentionOut{.out = want.data(), .weights = want_weights.data(),
                                                       .softmax = softmax.data(), .scratch = scratch.data()});
  for (int threads : {32, 96, 256}) {
    SCOPED_TRACE(threads);
    std::fill(gpu.score.begin(), gpu.score.end(), 0.0f);
    gpu.newest = newest;
    std::vector<float> got(q.size()), weights(size_t(group) * (B + 1));
    float self = 0;
    const DecodeRows rows{.q = q.data(), .k_new = k_new.data(), .v_new = v_new.data(), .out = got.data(),
                          .self_weight = &self, .heads = 1, .group = group, .head_dim = hd};
    emulated::decode_attention(rows, gpu.view(), weights.data(), B + 1, math::kScoreAttention, {}, threads);
    for (size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], want[i], 2e-5) << i;
    for (int j = 0; j < n; ++j) ASSERT_NEAR(gpu.score[j], want_weights[j], 2e-6) << j;
    ASSERT_NEAR(self, want_weights[n], 2e-6);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Layouts, CompressedKernels,
    ::testing::Values(StoreCase{8, 60, 40, 0.4, 0.5, 0.5}, StoreCase{8, 16, 16, 0.4, 0.0, 0.0},
                      StoreCase{8, 35, 30, 0.0, 0.5, 0.0}, StoreCase{8, 35, 30, 0.0, 0.0, 0.5},
                      StoreCase{64, 70, 48, 0.4, 0.5, 0.5}, StoreCase{64, 33, 33, 0.5, 0.0, 0.7},
                      StoreCase{128, 40, 20, 0.4, 0.7, 0.7}, StoreCase{12, 50, 24, 0.3, 0.4, 0.6}));

// binary16 short forms: the same elements kept (chosen on the f32 token), attention within
// half-precision rounding of the f32 CPU head.
TEST(CompressedKernels, HalfPrecisionBlocksKeepTheSameElements) {
  const int hd = 64, B = 32, group = 4;
  SlotCompression c = slot_compression(hd, 0.4, 0.5, 0.5, "t", "k", "v").value();
  c.think_recent = 6, c.dense_recent = 4;
  const HeadShape shape{.budget = B, .head_dim = hd, .compression = c};
  std::vector<uint32_t> storage(head_layout(shape).bytes / 4);
  int32_t cpu_used = 0;
  const HeadSlots cpu = carve_head(reinterpret_cast<std::byte*>(storage.data()), shape, &cpu_used);
  DeviceHead gpu(compressed_shape(c, hd, 2), B);
  std::mt19937 rng(3);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> key(hd), value(hd);
  for (int t = 0; t < 45; ++t) {
    for (int d = 0; d < hd; ++d) key[d] = normal(rng), value[d] = normal(rng);
    const int32_t slot = t < B ? t : t % B;
    cpu.store(slot, key.data(), value.data(), t);
    const DecodeRows rows{.k_new = key.data(), .v_new = value.data(), .heads = 1, .group = group, .head_dim = hd};
    emulated::insert(rows, gpu.view(), &slot, &t, math::ScoreArgs{.rule = math::kScoreAttention}, 1, 64);
  }
  cpu_used = gpu.n_used = B;
  const HeadLayout hl = head_layout(shape);
  const auto* host = reinterpret_cast<const uint8_t*>(storage.data());
  EXPECT_EQ(0, std::memcmp(gpu.bytes() + gpu.parts().k_mask, host + hl.k_mask, size_t(B) * gpu.shape.key_mask_bytes()));
  EXPECT_EQ(0, std::memcmp(gpu.bytes() + gpu.parts().v_mask, host + hl.v_mask, size_t(B) * gpu.shape.value_mask_bytes()));
  std::vector<float> q(size_t(group) * hd), k_new(hd), v_new(hd);
  for (float& x : q) x = normal(rng);
  for (int d = 0; d < hd; ++d) k_new[d] = normal(rng), v_new[d] = normal(rng);
  std::vector<float> want(q.size()), got(q.size()), weights(size_t(group) * (B + 1)), want_weights(B + 32);
  Aligned64Vector<float> scratch(B + 32);
  compressed_slot_attention_reference(q.data(), group, cpu, 45, k_new.data(), v_new.data(),
                                      SlotAttentionOut{.out = want.data(), .weights = want_weights.data(),
                                                       .scratch = scratch.data()});
  float self = 0;
  gpu.newest = 45;
  const DecodeRows rows{.q = q.data(), .k_new = k_new.data(), .v_new = v_new.data(), .out = got.data(),
                        .self_weight = &self, .heads = 1, .group = group, .head_dim = hd};
  emulated::decode_attention(rows, gpu.view(), weights.data(), B + 1, math::kScoreAttention, {}, 64);
  for (size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], want[i], 5e-3) << i;
}

// The prompt's cut: ThinK's query sums over the last window's rows, the channels from the kept
// keys, and the kept rows gathered in position order — the CPU's think_channels and stores.
TEST(CompressedKernels, PromptCutChoosesTheCpusChannelsAndStoresTheSameTokens) {
  const int hd = 16, P = 50, H = 2, group = 2, B = 24, window = 9;
  SlotCompression c = slot_compression(hd, 0.4, 0.5, 0.5, "t", "k", "v").value();
  c.think_recent = 6, c.dense_recent = 5, c.think_queries = window;
  std::mt19937 rng(17);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> q(size_t(P) * H * group * hd), k(size_t(P) * H * hd), v(k.size());
  for (float& x : q) x = normal(rng);
  for (float& x : k) x = normal(rng);
  for (float& x : v) x = normal(rng);
  for (int j = 0; j < P; ++j) k[(size_t(j) * H + 1) * hd + 3] = k[(size_t(j) * H + 1) * hd + 4] = 0.0f;  // tied channels
  // Query sums in two chunks (rows 0..29, then 30..49), against the CPU's loop in layer_step.
  std::vector<float> sums(size_t(H) * hd, -1.0f), want_sums(size_t(H) * hd, 0.0f);
  for (int r = P - window; r < P; ++r) {
    for (int h = 0; h < H; ++h) {
      for (int g = 0; g < group; ++g) {
        for (int d = 0; d < hd; ++d) {
          const float x = q[((size_t(r) * H + h) * group + g) * hd + d];
          want_sums[size_t(h) * hd + d] += x * x;
        }
      }
    }
  }
  for (auto [c0, c1] : {std::pair{0, 30}, std::pair{30, P}}) {
    const PrefillRows rows{.q = q.data() + size_t(c0) * H * group * hd, .prompt_len = c1, .n_kv_heads = H,
                           .group = group, .head_dim = hd, .first_query = c0};
    emulated::query_sums(rows, c0, P - window, c0 == 0, sums.data(), 32);
  }
  for (size_t i = 0; i < sums.size(); ++i) ASSERT_NEAR(sums[i], want_sums[i], 1e-6 * want_sums[i]) << i;

  // The kept rows: every other one from the head's first, and the last five, up to the budget.
  std::vector<int32_t> keep(size_t(H) * B, -1);
  for (int h = 0; h < H; ++h) {
    int s = 0;
    for (int j = 0; j < P && s < B; ++j) {
      if (j % 2 == h || j >= P - 5) keep[size_t(h) * B + s++] = j;
    }
  }
  const CompressedShape ds = compressed_shape(c, hd, 4);
  const int64_t block_bytes = compressed_parts(ds, B).bytes;
  std::vector<uint32_t> blocks(size_t(H) * block_bytes / 4);
  std::vector<int32_t> pos(size_t(H) * B), cap(H, B), used(H, 0);
  std::vector<float> score(size_t(H) * B), l1(size_t(H) * B), prompt_score(size_t(H) * P), prompt_l1(size_t(H) * P);
  for (size_t i = 0; i < prompt_score.size(); ++i) prompt_score[i] = 0.5f * i, prompt_l1[i] = 2.0f * i;
  const std::vector<int64_t> offset = {0, B}, block = {0, block_bytes};
  const SlotCacheView cache{.k = nullptr, .v = nullptr, .half = false, .pos = pos.data(), .score = score.data(),
                            .value_l1 = l1.data(), .offset = offset.data(), .capacity = cap.data(),
                            .n_used = used.data(), .blocks = reinterpret_cast<uint8_t*>(blocks.data()),
                            .block = block.data(), .shape = ds};
  const PrefillRows prompt{.q = q.data(), .k = k.data(), .v = v.data(), .prompt_len = P, .n_kv_heads = H,
                           .group = group, .head_dim = hd};
  emulated::think_channels(prompt, sums.data(), cache, keep.data(), B, 64);
  emulated::prefill_gather(prompt, cache, prompt_score.data(), prompt_l1.data(), keep.data(), B, 64);

  for (int h = 0; h < H; ++h) {
    SCOPED_TRACE(h);
    // The CPU: a dense scratch of the prompt's rows with the same query sums, cut into a compressed head.
    const HeadShape scratch_shape{.budget = P, .head_dim = hd, .compression = SlotCompression{.think_queries = window},
                                  .query_sums = true};
    std::vector<uint32_t> scratch_storage(head_layout(scratch_shape).bytes / 4);
    int32_t scratch_used = P;
    const HeadSlots scratch =
        carve_head(reinterpret_cast<std::byte*>(scratch_storage.data()), scratch_shape, &scratch_used);
    for (int j = 0; j < P; ++j) scratch.store(j, &k[(size_t(j) * H + h) * hd], &v[(size_t(j) * H + h) * hd], j);
    std::copy_n(sums.data() + size_t(h) * hd, hd, scratch.query_sums);
    std::vector<int> kept;
    for (int s = 0; s < B; ++s) kept.push_back(keep[size_t(h) * B + s]);
    const HeadShape shape{.budget = B, .head_dim = hd, .compression = c};
    std::vector<uint32_t> storage(head_layout(shape).bytes / 4);
    int32_t n_used = 0;
    const HeadSlots cpu = carve_head(reinterpret_cast<std::byte*>(storage.data()), shape, &n_used);
    think_channels(scratch, kept, c.key_channels, cpu.channels);
    for (int s = 0; s < B; ++s) {
      const int j = kept[s];
      cpu.store(s, &k[(size_t(j) * H + h) * hd], &v[(size_t(j) * H + h) * hd], j);
    }
    const auto* dev = reinterpret_cast<const uint8_t*>(blocks.data()) + block[h];
    const auto* host = reinterpret_cast<const uint8_t*>(storage.data());
    const CompressedParts p = compressed_parts(ds, B);
    const HeadLayout hl = head_layout(shape);
    EXPECT_EQ(0, std::memcmp(dev + p.channels, host + hl.channels, size_t(hd) * 4)) << "channels";
    EXPECT_EQ(0, std::memcmp(dev + p.k, host + hl.k, size_t(B) * ds.key_elements * 4)) << "packed keys";
    EXPECT_EQ(0, std::memcmp(dev + p.k_mask, host + hl.k_mask, size_t(B) * ds.key_mask_bytes())) << "key masks";
    EXPECT_EQ(0, std::memcmp(dev + p.v, host + hl.v, size_t(B) * ds.value_elements * 4)) << "packed values";
    EXPECT_EQ(0, std::memcmp(dev + p.k_drop, host + hl.k_drop, size_t(c.think_recent) * (hd - ds.key_channels) * 4))
        << "ThinK ring";
    EXPECT_EQ(0, std::memcmp(dev + p.v_resid, host + hl.v_resid,
                             size_t(c.dense_recent) * (hd - ds.value_elements) * 4))
        << "value ring";
    for (int s = 0; s < B; ++s) {
      EXPECT_EQ(pos[size_t(h) * B + s], kept[s]);
      EXPECT_EQ(score[size_t(h) * B + s], prompt_score[size_t(h) * P + kept[s]]);
      EXPECT_EQ(l1[size_t(h) * B + s], prompt_l1[size_t(h) * P + kept[s]]);
    }
  }
}

}  // namespace
}  // namespace kvp
