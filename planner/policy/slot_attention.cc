#include "planner/policy/slot_attention.h"

#include <Eigen/Core>
#include <cmath>

namespace kvp {

// Both sums use 16 interleaved partial sums (lane l takes elements l, l + 16, ...) and then a
// fixed halving tree: the same bits wherever the data sits, and the 16-wide body vectorises.
namespace {
float reduce16(float (&acc)[16]) {
  for (int w = 8; w >= 1; w /= 2) {
    for (int l = 0; l < w; ++l) acc[l] += acc[l + w];
  }
  return acc[0];
}
}  // namespace

float fixed_order_sum(const float* x, int n) {
  float acc[16] = {};
  int j = 0;
  for (; j + 16 <= n; j += 16) {
    for (int l = 0; l < 16; ++l) acc[l] += x[j + l];
  }
  for (int l = 0; j + l < n; ++l) acc[l] += x[j + l];
  return reduce16(acc);
}

float fixed_order_dot(const float* a, const float* b, int n) {
  float acc[16] = {};
  int j = 0;
  for (; j + 16 <= n; j += 16) {
    for (int l = 0; l < 16; ++l) acc[l] += a[j + l] * b[j + l];
  }
  for (int l = 0; j + l < n; ++l) acc[l] += a[j + l] * b[j + l];
  return reduce16(acc);
}

namespace {

// kHeadDim > 0: head_dim known at compile time (loops over it unroll); 0: runtime. Both run the
// same operations in the same order, so they give the same bits.
template <int kHeadDim>
void slot_attention_impl(const float* q, int group, const SlotKv& kv, const float* k_new, const float* v_new,
                         const SlotAttentionOut& r) {
  KVP_CHECK(reinterpret_cast<uintptr_t>(r.scratch) % 64 == 0, "slot_attention scratch must be 64-byte aligned");
  const int n = kv.n_used, hd = kHeadDim > 0 ? kHeadDim : kv.head_dim;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  float* s = r.scratch;  // [n + 1], the new token last, padded to whole 16-float packets
  if (r.weights) std::fill(r.weights, r.weights + n + 1, 0.0f);
  for (int g = 0; g < group; ++g) {
    const float* qg = q + size_t(g) * hd;
    // Each token's score accumulates over head_dim in order (d = 0, 1, ...). Keys are stored
    // [head_dim, capacity], so 16 tokens at a time stay in registers and the work vectorises.
    int j0 = 0;
    for (; j0 + 16 <= n; j0 += 16) {
      float acc[16] = {};
      for (int d = 0; d < hd; ++d) {
        const float qd = qg[d];
        const float* kd = kv.k + size_t(d) * kv.capacity + j0;
        for (int l = 0; l < 16; ++l) acc[l] += kd[l] * qd;
      }
      for (int l = 0; l < 16; ++l) s[j0 + l] = acc[l];
    }
    for (int j = j0; j < n; ++j) {
      float acc = 0.0f;
      for (int d = 0; d < hd; ++d) acc += kv.k[size_t(d) * kv.capacity + j] * qg[d];
      s[j] = acc;
    }
    float dot = 0.0f;
    for (int d = 0; d < hd; ++d) dot += qg[d] * k_new[d];
    s[n] = dot;
    float max_score = -INFINITY;
    for (int j = 0; j <= n; ++j) {
      s[j] *= scale;
      max_score = std::max(max_score, s[j]);
    }
    // Eigen's vectorised exp over whole 16-float packets of a 64-byte aligned buffer, so every
    // element takes the same path wherever it sits (the padding holds -inf: exp gives 0).
    const int padded = (n + 1 + 15) / 16 * 16;
    std::fill(s + n + 1, s + padded, -INFINITY);
    Eigen::Map<Eigen::ArrayXf, Eigen::Aligned64> e(s, padded);
    e = (e - max_score).exp();
    const float sum = fixed_order_sum(s, n + 1);
    if (r.log_z) r.log_z[g] = max_score + std::log(sum);
    const float inv_sum = 1.0f / sum;
    for (int j = 0; j <= n; ++j) s[j] *= inv_sum;
    float* out = r.out + size_t(g) * hd;
    if constexpr (kHeadDim > 0 && kHeadDim <= 16) {
      // fixed_order_dot for every d at once: the same lanes and tree, all rows in registers.
      float acc[kHeadDim][16] = {};
      int j = 0;
      for (; j + 16 <= n; j += 16) {
        for (int d = 0; d < kHeadDim; ++d) {
          const float* vd = kv.v + size_t(d) * kv.capacity + j;
          for (int l = 0; l < 16; ++l) acc[d][l] += vd[l] * s[j + l];
        }
      }
      for (int l = 0; j + l < n; ++l) {
        for (int d = 0; d < kHeadDim; ++d) acc[d][l] += kv.v[size_t(d) * kv.capacity + j + l] * s[j + l];
      }
      for (int d = 0; d < kHeadDim; ++d) out[d] = reduce16(acc[d]) + s[n] * v_new[d];
    } else {
      for (int d = 0; d < hd; ++d) out[d] = fixed_order_dot(kv.v + size_t(d) * kv.capacity, s, n) + s[n] * v_new[d];
    }
    if (r.weights) {
      for (int j = 0; j <= n; ++j) r.weights[j] += s[j];
    }
  }
}

}  // namespace

void slot_attention(const float* q, int group, const SlotKv& kv, const float* k_new, const float* v_new,
                    const SlotAttentionOut& r) {
  switch (kv.head_dim) {
    case 8: return slot_attention_impl<8>(q, group, kv, k_new, v_new, r);
    case 64: return slot_attention_impl<64>(q, group, kv, k_new, v_new, r);
    case 128: return slot_attention_impl<128>(q, group, kv, k_new, v_new, r);
    default: return slot_attention_impl<0>(q, group, kv, k_new, v_new, r);
  }
}

void place_new_token(const Policy& policy, std::span<const SlotArrays> heads, int32_t newest_pos,
                     std::span<int> slot, std::span<int32_t> victim_pos) {
  int shared_victim = -2;
  for (size_t h = 0; h < heads.size(); ++h) {
    const SlotArrays& s = heads[h];
    if (s.n_used < s.budget) {
      slot[h] = s.n_used;
      victim_pos[h] = -1;
      continue;
    }
    KVP_CHECK(policy.evicts(), "head {}: the cache of {} slots is full and policy {} does not evict", h,
              s.budget, policy.name());
    if (policy.shared_per_layer()) {
      if (shared_victim == -2) shared_victim = choose_shared_victim(policy, heads, newest_pos);
      slot[h] = shared_victim;
    } else {
      slot[h] = choose_victim(policy, s, newest_pos);
    }
    KVP_CHECK(slot[h] >= 0, "head {}: every slot is protected (budget {} < sinks + recent)", h, s.budget);
    victim_pos[h] = s.pos[slot[h]];
  }
}

}  // namespace kvp
