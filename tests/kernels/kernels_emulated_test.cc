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
                               math::kScoreAttention, threads);
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
