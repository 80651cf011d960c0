#include "planner/policy/slot_attention.h"

#include <algorithm>

#include <Eigen/Core>
#include <cmath>

#include "planner/policy/lanes.h"

namespace kvp {

// 16 interleaved partial sums (lane l takes elements l, l + 16, ...) and then a fixed halving tree:
// the same bits wherever the data sits, and the 16-wide body vectorises.
float fixed_order_dot(const float* a, const float* b, int n) {
  lanes::F16 acc{};
  int j = 0;
  for (; j + lanes::kWidth <= n; j += lanes::kWidth) acc += lanes::load(a + j) * lanes::load(b + j);
  for (int l = 0; j + l < n; ++l) acc[l] += a[j + l] * b[j + l];
  return lanes::reduce_add(acc);
}

namespace {

// kHeadDim > 0: head_dim known at compile time (loops over it unroll); 0: runtime. Both run the
// same operations in the same order, so they give the same bits.
template <int kHeadDim>
void slot_attention_impl(const float* q, int group, const SlotKv& kv, const float* k_new, const float* v_new,
                         const SlotAttentionOut& r) {
  using lanes::F16;
  constexpr int W = lanes::kWidth;
  KVP_CHECK(reinterpret_cast<uintptr_t>(r.scratch) % 64 == 0, "slot_attention scratch must be 64-byte aligned");
  const int n = kv.n_used, hd = kHeadDim > 0 ? kHeadDim : kv.head_dim;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  float* s = r.scratch;  // [n + 1], the new token last, padded to whole 16-float packets
  const int padded = (n + 1 + W - 1) / W * W;
  for (int g = 0; g < group; ++g) {
    const float* qg = q + size_t(g) * hd;
    // Each token's score accumulates over head_dim in order (d = 0, 1, ...). Keys are stored in
    // blocks of 16 slots (SlotKv), so 16 tokens at a time stay in one register.
    // Scaled logits, 16 tokens at a time, and their lane-wise maxima (max is exact in any order).
    F16 lane_max = lanes::splat(-INFINITY);
    int j0 = 0;
    for (; j0 + W <= n; j0 += W) {
      F16 acc{};
      const float* block = kv.k + size_t(j0) * hd;  // a whole block: rows of 16
      for (int d = 0; d < hd; ++d) acc += lanes::load(block + size_t(d) * W) * qg[d];
      acc *= scale;
      lanes::store(s + j0, acc);
      lane_max = lanes::max(lane_max, acc);
    }
    // The last packet, built in a register and stored once: the remaining slots' logits, the new
    // token's, then -inf padding (it leaves the maximum alone and exponentiates to 0).
    const int rest = n - j0;
    F16 tail{};
    if (rest > 0) {
      for (int d = 0; d < hd; ++d) {
        tail += lanes::load_partial(kv.k + slot_block_row(kv.capacity, hd, d, j0), rest) * qg[d];
      }
      tail *= scale;
    }
    float dot = 0.0f;
    for (int d = 0; d < hd; ++d) dot += qg[d] * k_new[d];
    tail = lanes::blend_first(tail, rest, lanes::blend_first(lanes::splat(dot * scale), rest + 1, lanes::splat(-INFINITY)));
    lanes::store(s + j0, tail);
    lane_max = lanes::max(lane_max, tail);
    const float max_score = lanes::reduce_max(lane_max);
    // exp(x − max) with Eigen's vectorised exp, one 16-float packet at a time (every element takes
    // the same path wherever it sits), summed in 16 lanes and the fixed tree: the padding's zeros
    // leave every lane's sum as it was.
    F16 lane_sum{};
    for (int j = 0; j < padded; j += W) {
      Eigen::Map<Eigen::Array<float, W, 1>, Eigen::Aligned64> e(s + j);
      e = (e - max_score).exp();
      lane_sum += lanes::load(s + j);
    }
    const float sum = lanes::reduce_add(lane_sum);
    if (r.softmax) r.softmax[2 * g] = max_score, r.softmax[2 * g + 1] = sum;
    const float inv_sum = 1.0f / sum;
    float* out = r.out + size_t(g) * hd;
    if constexpr (kHeadDim > 0 && kHeadDim <= 16) {
      // fixed_order_dot for every d at once: the same lanes and tree, all rows in registers, over
      // the unnormalised exps (the sums scaled once at the end). The normalised weights go
      // straight to r.weights in the same pass (the first query stores them, the others add).
      F16 acc[kHeadDim] = {};
      for (int j = 0; j < padded; j += W) {
        const F16 e = lanes::load(s + j);
        if (r.weights) {
          float* wj = r.weights + j;
          lanes::store(wj, g == 0 ? e * inv_sum : lanes::load(wj) + e * inv_sum);
        }
        if (r.head_max) {
          float* mj = r.head_max + j;
          lanes::store(mj, g == 0 ? e * inv_sum : lanes::max(lanes::load(mj), e * inv_sum));
        }
        if (j + W <= n) {
          const float* block = kv.v + size_t(j) * kHeadDim;  // a whole block: rows of 16
          for (int d = 0; d < kHeadDim; ++d) acc[d] += lanes::load(block + size_t(d) * W) * e;
        } else if (const int rest = n - j; rest > 0) {
          const F16 et = lanes::keep_first(e, rest);
          for (int d = 0; d < kHeadDim; ++d) {
            acc[d] += lanes::load_partial(kv.v + slot_block_row(kv.capacity, kHeadDim, d, j), rest) * et;
          }
        }
      }
      const float w_new = s[n] * inv_sum;
      if constexpr (kHeadDim == 8) {
        float sums[8];
        lanes::reduce_add8(acc, sums);
        for (int d = 0; d < 8; ++d) out[d] = sums[d] * inv_sum + w_new * v_new[d];
      } else {
        for (int d = 0; d < kHeadDim; ++d) out[d] = lanes::reduce_add(acc[d]) * inv_sum + w_new * v_new[d];
      }
      continue;  // the weights are written
    } else {
      for (int j = 0; j < padded; j += W) lanes::store(s + j, lanes::load(s + j) * inv_sum);
      // fixed_order_dot of each value row with the weights (the same lanes, order and tree), block
      // by block, so that a block's rows are read where they lie, one after another.
      KVP_CHECK(hd <= kMaxSlotHeadDim, "slot_attention: head_dim {} above {}", hd, kMaxSlotHeadDim);
      F16 acc[kMaxSlotHeadDim];
      for (int d = 0; d < hd; ++d) acc[d] = F16{};
      int j = 0;
      for (; j + W <= n; j += W) {
        const F16 e = lanes::load(s + j);
        const float* block = kv.v + size_t(j) * hd;
        for (int d = 0; d < hd; ++d) acc[d] += lanes::load(block + size_t(d) * W) * e;
      }
      for (int d = 0; j < n && d < hd; ++d) {
        const float* a = kv.v + slot_block_row(kv.capacity, hd, d, j);
        for (int l = 0; j + l < n; ++l) acc[d][l] += a[l] * s[j + l];
      }
      for (int d = 0; d < hd; ++d) out[d] = lanes::reduce_add(acc[d]) + s[n] * v_new[d];
    }
    if (r.head_max && g == 0) {
      std::copy(s, s + n + 1, r.head_max);
    } else if (r.head_max) {
      for (int j = 0; j <= n; ++j) r.head_max[j] = std::max(r.head_max[j], s[j]);
    }
    if (r.weights && g == 0) {
      std::copy(s, s + n + 1, r.weights);
    } else if (r.weights) {
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
                     std::span<int> slot, std::span<int32_t> victim_pos, int32_t unscored_from) {
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
      if (shared_victim == -2) shared_victim = choose_shared_victim(policy, heads, newest_pos, unscored_from);
      slot[h] = shared_victim;
    } else {
      slot[h] = choose_victim(policy, s, newest_pos, unscored_from);
    }
    KVP_CHECK(slot[h] >= 0, "head {}: every slot is protected (budget {} < sinks + recent)", h, s.budget);
    victim_pos[h] = s.pos[slot[h]];
  }
}

}  // namespace kvp
