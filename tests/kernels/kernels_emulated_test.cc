// Every decoder kernel's body, run on the CPU through the emulation layer, against its plain C++
// reference over awkward shapes (partial warps, sizes that are not multiples of the block, ragged
// per-head capacities). Runs in every build.
#include "kernels/gpu_compat.h"
#include "tests/kernels/kernels_test_cases.h"

namespace kvp {
namespace {

// The emulated target works on host memory directly.
struct Emulated {
  std::vector<int32_t> pos;  // slot positions of the last view
  void q8_0_gemv(const std::vector<uint8_t>& w, int out, int in, const std::vector<float>& x, std::vector<float>& y,
                 int rows, bool accumulate, int threads) {
    emulated::q8_0_gemv(w.data(), out, in, x.data(), y.data(), rows, accumulate, threads);
  }
  void rmsnorm(const std::vector<float>& x, const std::vector<float>& w, std::vector<float>& y, int rows, int n,
               float eps, int threads) {
    emulated::rmsnorm(x.data(), w.data(), y.data(), rows, n, eps, threads);
  }
  void rope(std::vector<float>& x, const std::vector<int32_t>& pos, const std::vector<float>& c,
            const std::vector<float>& s, int n_heads, int head_dim, int threads) {
    emulated::rope(x.data(), pos.data(), c.data(), s.data(), static_cast<int>(pos.size()), n_heads, head_dim, threads);
  }
  void swiglu(std::vector<float>& gate, const std::vector<float>& up, int threads) {
    emulated::swiglu(gate.data(), up.data(), static_cast<int64_t>(gate.size()), threads);
  }
  void embedding(const std::vector<int32_t>& tokens, const std::vector<float>& table, std::vector<float>& out, int dim,
                 int threads) {
    emulated::embedding(tokens.data(), table.data(), out.data(), static_cast<int>(tokens.size()), dim, threads);
  }
  std::vector<int32_t> argmax(const std::vector<float>& x, int n, int threads) {
    std::vector<int32_t> out(x.size() / n);
    emulated::argmax(x.data(), static_cast<int>(out.size()), n, out.data(), threads);
    return out;
  }
  std::vector<int32_t> sample(const std::vector<float>& logits, int n, float temperature, float top_p,
                              const std::vector<float>& uniform, int threads) {
    std::vector<int32_t> out(uniform.size());
    std::vector<float> probs(logits.size());
    emulated::sample(logits.data(), static_cast<int>(out.size()), n, temperature, top_p, uniform.data(), probs.data(),
                     out.data(), threads);
    return out;
  }
  SlotCacheView view(std::vector<float>& k, std::vector<float>& v, std::vector<float>& score, std::vector<float>& l1,
                     const std::vector<int64_t>& offset, const std::vector<int32_t>& capacity,
                     const std::vector<int32_t>& n_used) {
    pos.assign(score.size(), 0);
    return SlotCacheView{k.data(), v.data(), false,         pos.data(),      score.data(),
                         l1.data(), offset.data(), capacity.data(), n_used.data()};
  }
  void attention(const std::vector<float>& q, std::vector<float>& k, std::vector<float>& v, std::vector<float>& score,
                 std::vector<float>& l1, const std::vector<int64_t>& offset, const std::vector<int32_t>& capacity,
                 const std::vector<int32_t>& n_used, const std::vector<float>& k_new, const std::vector<float>& v_new,
                 std::vector<float>& out, std::vector<float>& self, int group, int head_dim, int threads) {
    const int stride = *std::max_element(capacity.begin(), capacity.end()) + 1;
    std::vector<float> weights(offset.size() * group * stride);
    const DecodeRows rows{.q = q.data(), .k_new = k_new.data(), .v_new = v_new.data(), .out = out.data(),
                          .self_weight = self.data(), .heads = static_cast<int>(offset.size()), .group = group,
                          .head_dim = head_dim};
    emulated::decode_attention(rows, view(k, v, score, l1, offset, capacity, n_used), weights.data(), stride,
                               math::kScoreAttention, {}, threads);
  }
  std::vector<int32_t> victim(const std::vector<float>& keys, const std::vector<int32_t>& positions,
                              const std::vector<int64_t>& offset, const std::vector<int32_t>& n_used,
                              const std::vector<int32_t>& newest, int sinks, int recent, int threads) {
    // Full heads (capacity = n_used), so place chooses a victim in each.
    std::vector<int32_t> out(offset.size()), evicted(offset.size());
    std::vector<float> evicted_key(offset.size());
    std::vector<float> key_copy = keys;
    std::vector<int32_t> pos_copy = positions;
    const SlotCacheView cache{nullptr, nullptr, false, pos_copy.data(), key_copy.data(), nullptr,
                              offset.data(), n_used.data(), n_used.data()};
    emulated::place(cache, newest.data(), VictimRule{.sinks = sinks, .recent = recent},
                    Placement{.slot = out.data(), .evicted_pos = evicted.data(), .evicted_key = evicted_key.data()},
                    static_cast<int>(out.size()), threads);
    for (size_t h = 0; h < out.size(); ++h) {
      EXPECT_EQ(evicted[h], out[h] < 0 ? -1 : positions[offset[h] + out[h]]) << h;
    }
    return out;
  }
  std::vector<float> prefill_column_sums(const std::vector<float>& q, const std::vector<float>& k, int P, int kvh,
                                         int group, int hd, int threads) {
    std::vector<float> row_max(size_t(P) * kvh * group), row_sum(row_max.size()), out(size_t(kvh) * P);
    emulated::prefill_column_sums(PrefillRows{.q = q.data(), .k = k.data(), .v = nullptr, .row_max = row_max.data(),
                                              .row_sum = row_sum.data(), .prompt_len = P, .n_kv_heads = kvh,
                                              .group = group, .head_dim = hd},
                                  out.data(), threads);
    return out;
  }
  std::vector<int32_t> prefill_keep(const std::vector<float>& keys, int heads, int P, int sinks, int recent, int budget,
                                    int threads) {
    std::vector<int32_t> out(size_t(heads) * budget);
    emulated::prefill_keep(keys.data(), heads, P, sinks, recent, budget, out.data(), threads);
    return out;
  }
  void insert(std::vector<float>& k, std::vector<float>& v, std::vector<float>& score, std::vector<float>& l1,
              const std::vector<int64_t>& offset, const std::vector<int32_t>& capacity, const std::vector<int32_t>& n_used,
              const std::vector<float>& k_new, const std::vector<float>& v_new, const std::vector<int32_t>& slots,
              int head_dim, int threads) {
    const std::vector<int32_t> position(offset.size(), 7);
    const DecodeRows rows{.q = nullptr, .k_new = k_new.data(), .v_new = v_new.data(), .out = nullptr,
                          .self_weight = nullptr, .heads = static_cast<int>(offset.size()), .group = 1,
                          .head_dim = head_dim};
    emulated::insert(rows, view(k, v, score, l1, offset, capacity, n_used), slots.data(), position.data(),
                     math::ScoreArgs{.rule = math::kScoreAttention}, 1, threads);
    for (size_t h = 0; h < offset.size(); ++h) EXPECT_EQ(pos[offset[h] + slots[h]], 7);
  }
};

TEST(EmulatedKernels, Q8_0GemvMatchesTheReference) {
  Emulated t;
  test::check_q8_0_gemv(t);
}

TEST(EmulatedKernels, RmsnormMatchesTheReference) {
  Emulated t;
  test::check_rmsnorm(t);
}

TEST(EmulatedKernels, RopeSwigluEmbeddingArgmaxMatchTheReferences) {
  Emulated t;
  test::check_rope_swiglu_embedding_argmax(t);
}

TEST(EmulatedKernels, SamplingFollowsTheSamplersRule) {
  Emulated t;
  test::check_sample(t);
}

TEST(EmulatedKernels, DecodeAttentionOverARaggedCacheAccumulatesScores) {
  Emulated t;
  test::check_attention(t);
}

TEST(EmulatedKernels, VictimsAreTheCpuExecutorsChoices) {
  Emulated t;
  test::check_victim(t);
}

TEST(EmulatedKernels, PrefillColumnSumsAndKeptPositionsMatchTheCpu) {
  Emulated t;
  test::check_prefill(t);
}

// The emulation itself: a barrier orders shared-memory writes before reads, and warp shuffles
// exchange between lanes, including in a partial last warp (shuffling within its lanes).
// --prefill-evict's cut in place: kept rows 0, 2, 5 and 6 of 7 move down to rows 0..3 (keys and
// values of 3 floats, positions, column sums), by hand; the rows past them are untouched.
TEST(EmulatedKernels, PrefillCompactMovesTheKeptRowsDownInOrder) {
  const int hd = 3, rows = 7;
  std::vector<float> k(rows * hd), v(rows * hd), sums(rows);
  std::vector<int32_t> pos(rows);
  for (int r = 0; r < rows; ++r) {
    for (int d = 0; d < hd; ++d) k[r * hd + d] = 10.0f * r + d, v[r * hd + d] = -10.0f * r - d;
    pos[r] = 100 + r;
    sums[r] = 0.5f * r;
  }
  const std::vector<int32_t> keep = {0, 2, 5, 6};
  emulated::prefill_compact(k.data(), v.data(), pos.data(), sums.data(), keep.data(), 4, hd, 32);
  for (int s = 0; s < 4; ++s) {
    for (int d = 0; d < hd; ++d) {
      EXPECT_EQ(k[s * hd + d], 10.0f * keep[s] + d);
      EXPECT_EQ(v[s * hd + d], -10.0f * keep[s] - d);
    }
    EXPECT_EQ(pos[s], 100 + keep[s]);
    EXPECT_EQ(sums[s], 0.5f * keep[s]);
  }
  EXPECT_EQ(pos[4], 104);
  EXPECT_EQ(k[4 * hd], 40.0f);
}

// A launch of one KV head over that head's own rows (first_head, heads = 1, k_row = head_dim, as
// --prefill-evict runs it) gives that head's outputs, column sums and scores of the launch of all
// heads over the interleaved rows, bit for bit; copy_rows makes the head's rows.
TEST(EmulatedKernels, OneHeadsLaunchOverItsOwnRowsEqualsTheAllHeadsLaunch) {
  const int P = 37, H = 3, group = 2, hd = 8;
  std::vector<float> q(size_t(P) * H * group * hd), k(size_t(P) * H * hd), v(k.size());
  uint64_t state = 5;
  auto next = [&] { return static_cast<float>((state = math::splitmix64(state)) >> 40) * 0x1.0p-23f - 1.0f; };
  for (float& x : q) x = next();
  for (float& x : k) x = next();
  for (float& x : v) x = next();
  std::vector<float> row_max(size_t(P) * H * group), row_sum(row_max.size()), out(q.size()), sums(size_t(H) * P);
  const PrefillRows all{.q = q.data(), .k = k.data(), .v = v.data(), .row_max = row_max.data(),
                        .row_sum = row_sum.data(), .prompt_len = P, .n_kv_heads = H, .group = group, .head_dim = hd};
  emulated::prefill_attention(all, out.data(), sums.data(), ColumnSpan{}, 64);
  const math::ScoreArgs args{.rule = math::kScoreValueAttention, .per_query_key = 1};
  std::vector<float> score(size_t(H) * P), l1(score.size()), key(score.size());
  emulated::prefill_scores(all, sums.data(), score.data(), l1.data(), key.data(), args, 64);
  for (int h = 0; h < H; ++h) {
    SCOPED_TRACE(h);
    std::vector<float> hk(size_t(P) * hd), hv(hk.size()), hout(q.size(), 0.0f), hsums(P);
    emulated::copy_rows(k.data() + h * hd, H * hd, hk.data(), hd, P, hd, 32);
    emulated::copy_rows(v.data() + h * hd, H * hd, hv.data(), hd, P, hd, 32);
    std::vector<int32_t> positions(P);
    for (int j = 0; j < P; ++j) positions[j] = j;
    const PrefillRows one{.q = q.data(), .k = hk.data(), .v = hv.data(), .row_max = row_max.data(),
                          .row_sum = row_sum.data(), .prompt_len = P, .n_kv_heads = H, .group = group,
                          .head_dim = hd, .first_head = h, .heads = 1, .k_row = hd, .positions = positions.data()};
    emulated::prefill_attention(one, hout.data(), hsums.data(), ColumnSpan{}, 64);
    std::vector<float> hscore(P), hl1(P), hkey(P);
    emulated::prefill_scores(one, hsums.data(), hscore.data(), hl1.data(), hkey.data(), args, 64);
    for (int j = 0; j < P; ++j) {
      ASSERT_EQ(hsums[j], sums[size_t(h) * P + j]) << j;
      ASSERT_EQ(hscore[j], score[size_t(h) * P + j]) << j;
      ASSERT_EQ(hkey[j], key[size_t(h) * P + j]) << j;
      for (int g = 0; g < group; ++g) {
        for (int d = 0; d < hd; ++d) {
          const size_t at = ((size_t(j) * H + h) * group + g) * hd + d;
          ASSERT_EQ(hout[at], out[at]) << j << " " << g << " " << d;
        }
      }
    }
  }
}

TEST(Emulation, BarriersAndShufflesBehaveAsOnTheGpu) {
  std::vector<int> out(40, -1);
  emu::launch(dim3(1), dim3(40), [](int* o) {
    static int shared[40];
    const int t = static_cast<int>(threadIdx.x);
    shared[t] = t * 10;
    gpu::sync_threads();
    const int neighbour = shared[(t + 1) % 40];  // written by another thread before the barrier
    const int swapped = gpu::shfl_xor(t, 1);
    o[t] = neighbour + swapped;
  }, out.data());
  for (int t = 0; t < 40; ++t) EXPECT_EQ(out[t], ((t + 1) % 40) * 10 + (t ^ 1)) << t;
}

// A shuffle from a lane the block does not have is undefined on the GPU; the emulation stops.
TEST(EmulationDeathTest, ShuffleFromAMissingLaneAborts) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(emu::launch(dim3(1), dim3(8), [](int) { (void)gpu::shfl_xor(1.0f, 16); }, 0),
               "warp shuffle from lane 1[0-9]* of a 8-thread warp");
}

// Threads that wait at different barriers never meet (lane 0 at the block's, its warp at a shuffle):
// on the GPU a hang, here a report.
TEST(EmulationDeathTest, DivergentBarrierIsReportedAsADeadlock) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(emu::launch(dim3(1), dim3(64), [](int) {
    if (threadIdx.x == 0) {
      gpu::sync_threads();
    } else {
      (void)gpu::shfl_xor(1.0f, 1);
    }
  }, 0), "emulation: deadlock");
}

// Guarded early returns leave the barriers, as exited threads do on the GPU.
TEST(Emulation, ThreadsThatReturnEarlyDoNotHoldUpTheBarrier) {
  std::vector<int> out(64, 0);
  emu::launch(dim3(2), dim3(64), [](int* o) {
    static int shared[64];
    const int t = static_cast<int>(threadIdx.x);
    if (t >= 40) return;
    shared[t] = t + static_cast<int>(blockIdx.x);
    gpu::sync_threads();
    o[t] += shared[39 - t];
  }, out.data());
  for (int t = 0; t < 64; ++t) EXPECT_EQ(out[t], t < 40 ? 2 * (39 - t) + 1 : 0) << t;
}

}  // namespace
}  // namespace kvp
