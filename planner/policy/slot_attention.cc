#include "planner/policy/slot_attention.h"

#include <Eigen/Core>
#include <cmath>

namespace kvp {

float fixed_order_sum(const float* x, int n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int j = 0;
  for (; j + 8 <= n; j += 8) {
    for (int l = 0; l < 8; ++l) acc[l] += x[j + l];
  }
  float tail = 0.0f;
  for (; j < n; ++j) tail += x[j];
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7])) + tail;
}

void slot_attention(const float* q, int group, const SlotKv& kv, const float* k_new, const float* v_new,
                    const SlotAttentionOut& r) {
  using ColStrideMap = Eigen::Map<const Eigen::MatrixXf, 0, Eigen::OuterStride<>>;
  using RowStrideMap =
      Eigen::Map<const Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>, 0, Eigen::OuterStride<>>;
  const int n = kv.n_used, hd = kv.head_dim;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  // Keys as [n, head_dim] column-major and values as [head_dim, n] row-major: views of the
  // transposed storage, so both products vectorise across tokens. Eigen's GEMV loads unaligned and
  // sums each output in a fixed order.
  const ColStrideMap keys(kv.k, n, hd, Eigen::OuterStride<>(kv.capacity));
  const RowStrideMap values(kv.v, hd, n, Eigen::OuterStride<>(kv.capacity));
  Eigen::Map<Eigen::VectorXf> s(r.scratch, n + 1);
  if (r.weights) std::fill(r.weights, r.weights + n + 1, 0.0f);
  for (int g = 0; g < group; ++g) {
    const float* qg = q + size_t(g) * hd;
    s.head(n).noalias() = scale * (keys * Eigen::Map<const Eigen::VectorXf>(qg, hd));
    float dot = 0.0f;
    for (int d = 0; d < hd; ++d) dot += qg[d] * k_new[d];
    s[n] = scale * dot;
    const float max_score = s.maxCoeff();
    s = (s.array() - max_score).exp();
    const float sum = fixed_order_sum(r.scratch, n + 1);
    if (r.log_z) r.log_z[g] = max_score + std::log(sum);
    s *= 1.0f / sum;
    Eigen::Map<Eigen::VectorXf> out(r.out + size_t(g) * hd, hd);
    out.noalias() = values * s.head(n);
    for (int d = 0; d < hd; ++d) out[d] += s[n] * v_new[d];
    if (r.weights) {
      for (int j = 0; j <= n; ++j) r.weights[j] += r.scratch[j];
    }
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
