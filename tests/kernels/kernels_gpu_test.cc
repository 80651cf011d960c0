// GPU suite (ctest label gpu): every decoder kernel on the device against its plain C++ reference,
// over the same awkward shapes as the emulated tests. Skips with the runtime's reason where there
// is no device (and says so where kvplan was built without CUDA).
#include <gtest/gtest.h>

#include "kernels/device_query.h"
#include "tests/kernels/kernels_test_cases.h"

#if KVP_HAVE_CUDA
#include <cuda_runtime.h>
#endif

namespace kvp {
namespace {

#if KVP_HAVE_CUDA
void check_cuda(cudaError_t e, const char* what) { ASSERT_EQ(e, cudaSuccess) << what << ": " << cudaGetErrorString(e); }

// Device copies of host vectors, copied back on sync().
template <typename T>
struct Dev {
  explicit Dev(const std::vector<T>& h) : n(h.size()) {
    check_cuda(cudaMalloc(&p, std::max<size_t>(1, n) * sizeof(T)), "cudaMalloc");
    check_cuda(cudaMemcpy(p, h.data(), n * sizeof(T), cudaMemcpyHostToDevice), "cudaMemcpy");
  }
  ~Dev() { cudaFree(p); }
  void back(std::vector<T>& h) {
    check_cuda(cudaDeviceSynchronize(), "kernel");
    check_cuda(cudaMemcpy(h.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost), "cudaMemcpy back");
  }
  T* p = nullptr;
  size_t n;
};

// The ragged cache's buffers on the device.
struct DevCache {
  DevCache(const std::vector<float>& k_, const std::vector<float>& v_, const std::vector<float>& score_,
           const std::vector<float>& l1_, const std::vector<int64_t>& offset_, const std::vector<int32_t>& capacity_,
           const std::vector<int32_t>& n_used_)
      : k(k_), v(v_), score(score_), l1(l1_), pos(std::vector<int32_t>(score_.size(), 0)), offset(offset_),
        capacity(capacity_), n_used(n_used_) {}
  SlotCacheView view() { return SlotCacheView{k.p, v.p, false, pos.p, score.p, l1.p, offset.p, capacity.p, n_used.p}; }
  Dev<float> k, v, score, l1;
  Dev<int32_t> pos;
  Dev<int64_t> offset;
  Dev<int32_t> capacity, n_used;
};

struct Device {
  void q8_0_gemv(const std::vector<uint8_t>& w, int out, int in, const std::vector<float>& x, std::vector<float>& y,
                 int rows, bool accumulate, int threads) {
    Dev dw(w);
    Dev dx(x);
    Dev dy(y);
    cuda::q8_0_gemv(dw.p, out, in, dx.p, dy.p, rows, accumulate, threads);
    dy.back(y);
  }
  void rmsnorm(const std::vector<float>& x, const std::vector<float>& w, std::vector<float>& y, int rows, int n,
               float eps, int threads) {
    Dev dx(x);
    Dev dw(w);
    Dev dy(y);
    cuda::rmsnorm(dx.p, dw.p, dy.p, rows, n, eps, threads);
    dy.back(y);
  }
  void rope(std::vector<float>& x, const std::vector<int32_t>& pos, const std::vector<float>& c,
            const std::vector<float>& s, int n_heads, int head_dim, int threads) {
    Dev dx(x);
    Dev dp(pos);
    Dev dc(c);
    Dev ds(s);
    cuda::rope(dx.p, dp.p, dc.p, ds.p, static_cast<int>(pos.size()), n_heads, head_dim, threads);
    dx.back(x);
  }
  void swiglu(std::vector<float>& gate, const std::vector<float>& up, int threads) {
    Dev dg(gate);
    Dev du(up);
    cuda::swiglu(dg.p, du.p, static_cast<int64_t>(gate.size()), threads);
    dg.back(gate);
  }
  void embedding(const std::vector<int32_t>& tokens, const std::vector<float>& table, std::vector<float>& out, int dim,
                 int threads) {
    Dev dt(tokens);
    Dev dtab(table);
    Dev dout(out);
    cuda::embedding(dt.p, dtab.p, dout.p, static_cast<int>(tokens.size()), dim, threads);
    dout.back(out);
  }
  std::vector<int32_t> argmax(const std::vector<float>& x, int n, int threads) {
    std::vector<int32_t> out(x.size() / n);
    Dev dx(x);
    Dev dout(out);
    cuda::argmax(dx.p, static_cast<int>(out.size()), n, dout.p, threads);
    dout.back(out);
    return out;
  }
  std::vector<int32_t> sample(const std::vector<float>& logits, int n, float temperature, float top_p,
                              const std::vector<float>& uniform, int threads) {
    std::vector<int32_t> out(uniform.size());
    Dev dx(logits);
    Dev du(uniform);
    Dev dprobs(logits);
    Dev dout(out);
    cuda::sample(dx.p, static_cast<int>(out.size()), n, temperature, top_p, du.p, dprobs.p, dout.p, threads);
    dout.back(out);
    return out;
  }
  void attention(const std::vector<float>& q, std::vector<float>& k, std::vector<float>& v, std::vector<float>& score,
                 std::vector<float>& l1, const std::vector<int64_t>& offset, const std::vector<int32_t>& capacity,
                 const std::vector<int32_t>& n_used, const std::vector<float>& k_new, const std::vector<float>& v_new,
                 std::vector<float>& out, std::vector<float>& self, int group, int head_dim, int threads) {
    Dev dq(q);
    DevCache c(k, v, score, l1, offset, capacity, n_used);
    Dev dkn(k_new);
    Dev dvn(v_new);
    Dev dout(out);
    Dev dself(self);
    const int stride = *std::max_element(capacity.begin(), capacity.end()) + 1;
    Dev dweights(std::vector<float>(offset.size() * group * stride));
    const DecodeRows rows{.q = dq.p, .k_new = dkn.p, .v_new = dvn.p, .out = dout.p, .self_weight = dself.p,
                          .heads = static_cast<int>(offset.size()), .group = group, .head_dim = head_dim};
    cuda::decode_attention(rows, c.view(), dweights.p, stride, math::kScoreAttention, {}, threads);
    dout.back(out);
    dself.back(self);
    c.score.back(score);
  }
  std::vector<int32_t> victim(const std::vector<float>& keys, const std::vector<int32_t>& positions,
                              const std::vector<int64_t>& offset, const std::vector<int32_t>& n_used,
                              const std::vector<int32_t>& newest, int sinks, int recent, int threads) {
    // Full heads (capacity = n_used), so place chooses a victim in each.
    std::vector<int32_t> out(offset.size()), evicted(offset.size());
    std::vector<float> evicted_key(offset.size());
    Dev dk(keys);
    Dev dp(positions);
    Dev doff(offset);
    Dev dn(n_used);
    Dev dnew(newest);
    Dev dout(out);
    Dev devicted(evicted);
    Dev dkey(evicted_key);
    const SlotCacheView cache{nullptr, nullptr, false, dp.p, dk.p, nullptr, doff.p, dn.p, dn.p};
    cuda::place(cache, dnew.p, VictimRule{.sinks = sinks, .recent = recent},
                Placement{.slot = dout.p, .evicted_pos = devicted.p, .evicted_key = dkey.p}, static_cast<int>(out.size()),
                threads);
    dout.back(out);
    devicted.back(evicted);
    for (size_t h = 0; h < out.size(); ++h) {
      EXPECT_EQ(evicted[h], out[h] < 0 ? -1 : positions[offset[h] + out[h]]) << h;
    }
    return out;
  }
  std::vector<float> prefill_column_sums(const std::vector<float>& q, const std::vector<float>& k, int P, int kvh,
                                         int group, int hd, int threads) {
    std::vector<float> stats(size_t(P) * kvh * group), out(size_t(kvh) * P);
    Dev dq(q);
    Dev dk(k);
    Dev dmax(stats);
    Dev dsum(stats);
    Dev dout(out);
    cuda::prefill_column_sums(PrefillRows{.q = dq.p, .k = dk.p, .v = nullptr, .row_max = dmax.p, .row_sum = dsum.p,
                                          .prompt_len = P, .n_kv_heads = kvh, .group = group, .head_dim = hd},
                              dout.p, threads);
    dout.back(out);
    return out;
  }
  std::vector<int32_t> prefill_keep(const std::vector<float>& keys, int heads, int P, int sinks, int recent, int budget,
                                    int threads) {
    std::vector<int32_t> out(size_t(heads) * budget);
    Dev dkeys(keys);
    Dev dout(out);
    cuda::prefill_keep(dkeys.p, heads, P, sinks, recent, budget, dout.p, threads);
    dout.back(out);
    return out;
  }
  void insert(std::vector<float>& k, std::vector<float>& v, std::vector<float>& score, std::vector<float>& l1,
              const std::vector<int64_t>& offset, const std::vector<int32_t>& capacity, const std::vector<int32_t>& n_used,
              const std::vector<float>& k_new, const std::vector<float>& v_new, const std::vector<int32_t>& slots,
              int head_dim, int threads) {
    DevCache c(k, v, score, l1, offset, capacity, n_used);
    Dev dkn(k_new);
    Dev dvn(v_new);
    Dev dslot(slots);
    const std::vector<int32_t> position(offset.size(), 7);
    Dev dposition(position);
    const DecodeRows rows{.q = nullptr, .k_new = dkn.p, .v_new = dvn.p, .out = nullptr, .self_weight = nullptr,
                          .heads = static_cast<int>(offset.size()), .group = 1, .head_dim = head_dim};
    cuda::insert(rows, c.view(), dslot.p, dposition.p, math::ScoreArgs{.rule = math::kScoreAttention}, 1, threads);
    c.k.back(k);
    c.v.back(v);
    c.l1.back(l1);
  }
};
#endif

#define KVP_REQUIRE_GPU()                                                              \
  do {                                                                                 \
    const CudaDeviceReport report = query_cuda_devices();                              \
    if (report.devices.empty()) GTEST_SKIP() << "no CUDA device: " << report.why_none; \
  } while (0)

TEST(GpuKernels, Q8_0GemvMatchesTheReference) {
  KVP_REQUIRE_GPU();
#if KVP_HAVE_CUDA
  Device t;
  test::check_q8_0_gemv(t);
#endif
}

TEST(GpuKernels, RmsnormMatchesTheReference) {
  KVP_REQUIRE_GPU();
#if KVP_HAVE_CUDA
  Device t;
  test::check_rmsnorm(t);
#endif
}

TEST(GpuKernels, SamplingFollowsTheSamplersRule) {
  KVP_REQUIRE_GPU();
#if KVP_HAVE_CUDA
  Device t;
  test::check_sample(t);
#endif
}

TEST(GpuKernels, RopeSwigluEmbeddingArgmaxMatchTheReferences) {
  KVP_REQUIRE_GPU();
#if KVP_HAVE_CUDA
  Device t;
  test::check_rope_swiglu_embedding_argmax(t);
#endif
}

TEST(GpuKernels, DecodeAttentionOverARaggedCacheAccumulatesScores) {
  KVP_REQUIRE_GPU();
#if KVP_HAVE_CUDA
  Device t;
  test::check_attention(t);
#endif
}

TEST(GpuKernels, PrefillColumnSumsAndKeptPositionsMatchTheCpu) {
  KVP_REQUIRE_GPU();
#if KVP_HAVE_CUDA
  Device t;
  test::check_prefill(t);
#endif
}

TEST(GpuKernels, VictimsAreTheCpuExecutorsChoices) {
  KVP_REQUIRE_GPU();
#if KVP_HAVE_CUDA
  Device t;
  test::check_victim(t);
#endif
}

}  // namespace
}  // namespace kvp
