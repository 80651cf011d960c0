// tova: Token Omission Via Attention (Oren et al., 2024) — at each step the token with the lowest
// attention from the current query, averaged over the layer's heads, is dropped: one kept set per
// layer. A slot's score is the current query's weight (not accumulated).
#include "planner/policy/policies.h"

namespace kvp {

void TovaPolicy::init_slot(SlotArrays& s, int slot, const NewToken& token) const {
  s.score[slot] = token.self_weight;
}

void TovaPolicy::observe(SlotArrays& s, const float* weights, int /*query_pos*/, int /*prompt_len*/) const {
  for (int j = 0; j < s.n_used; ++j) s.score[j] = weights[j];
}

}  // namespace kvp
