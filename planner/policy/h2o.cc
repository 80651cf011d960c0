// h2o: Heavy-Hitter Oracle (Zhang et al., 2023) — a token's score is the attention it has
// accumulated over every query that saw it, summed over the query heads of its group.
#include "planner/policy/policies.h"

namespace kvp {

void H2oPolicy::init_slot(SlotArrays& s, int slot, const NewToken& token) const {
  s.score[slot] = token.self_weight;
}

void H2oPolicy::observe(SlotArrays& s, const float* weights, int /*query_pos*/, int /*prompt_len*/) const {
  float* __restrict score = s.score;
  const float* __restrict w = weights;
  for (int j = 0; j < s.n_used; ++j) score[j] += w[j];
}

}  // namespace kvp
