// vatp: Value-Aware Token Pruning (Guo et al., 2024) — S_j = A_j · ‖v_j‖₁, with A_j the base
// attention score: accumulated attention (base h2o, as in the paper's code) or accumulated
// attention divided by the number of queries that saw j (base mean). The value norm is computed
// once, when the token enters the cache, and kept as the slot's aux float.
//
// Since ‖v_j‖₁ is fixed, the score accumulates weight · ‖v_j‖₁ directly. For base mean the
// divisor is derived from positions: a cached token at position p has been seen by the queries
// p..newest, prefill queries included, i.e. newest - p + 1 of them.
#include <cmath>

#include "planner/policy/policies.h"

namespace kvp {

void VatpPolicy::init_slot(SlotArrays& s, int slot, const NewToken& token) const {
  float l1 = 0.0f;
  for (int d = 0; d < token.head_dim; ++d) l1 += std::abs(token.v[d]);
  s.aux[slot] = l1;
  s.score[slot] = token.self_weight * l1;
}

void VatpPolicy::observe(SlotArrays& s, const float* weights, int /*query_pos*/, int /*prompt_len*/) const {
  // Distinct arrays: __restrict lets the compiler vectorise the hot loop.
  float* __restrict score = s.score;
  const float* __restrict aux = s.aux;
  const float* __restrict w = weights;
  for (int j = 0; j < s.n_used; ++j) score[j] += w[j] * aux[j];
}

float VatpPolicy::eviction_key(const SlotArrays& s, int slot, int query_pos) const {
  if (params().vatp_base == VatpBase::kH2o) return s.score[slot];
  return s.score[slot] / static_cast<float>(query_pos - s.pos[slot] + 1);
}

const float* VatpPolicy::eviction_keys(const SlotArrays& s, int query_pos, float* buffer) const {
  if (params().vatp_base == VatpBase::kH2o) return s.score;
  for (int j = 0; j < s.n_used; ++j) buffer[j] = s.score[j] / static_cast<float>(query_pos - s.pos[j] + 1);
  return buffer;
}

}  // namespace kvp
