// knorm: key-norm eviction (Devoto et al., 2024) — keys of low L2 norm draw high attention, so
// the token with the highest key norm is evicted first. Needs no attention at all.
#include "kernels/score_rule.h"
#include "planner/policy/policies.h"

namespace kvp {

void KnormPolicy::init_slot(SlotArrays& s, int slot, const NewToken& token) const {
  s.score[slot] = math::key_norm_score(token.k, token.head_dim);
}

}  // namespace kvp
