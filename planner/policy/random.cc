// random: evicts an unprotected token at random. The "random" score is a hash of (seed, layer,
// head, position), so replay and executors evict the same tokens.
#include "kernels/score_rule.h"
#include "planner/policy/policies.h"

namespace kvp {

void RandomPolicy::init_slot(SlotArrays& s, int slot, const NewToken& token) const {
  s.score[slot] = math::random_score(params().seed, token.layer_idx, token.kv_head_idx, token.pos);
}

}  // namespace kvp
