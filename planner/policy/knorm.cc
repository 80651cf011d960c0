// knorm: key-norm eviction (Devoto et al., 2024) — keys of low L2 norm draw high attention, so
// the token with the highest key norm is evicted first. Needs no attention at all.
#include <cmath>

#include "planner/policy/policies.h"

namespace kvp {

void KnormPolicy::init_slot(SlotArrays& s, int slot, const NewToken& token) const {
  float ss = 0.0f;
  for (int d = 0; d < token.head_dim; ++d) ss += token.k[d] * token.k[d];
  s.score[slot] = -std::sqrt(ss);
}

}  // namespace kvp
