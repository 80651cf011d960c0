// full: the reference — every position is kept; a plan must give it the whole context.
#include "planner/policy/policies.h"

namespace kvp {

void FullPolicy::init_slot(SlotArrays& s, int slot, const NewToken& /*token*/) const {
  s.score[slot] = 0.0f;
}

}  // namespace kvp
