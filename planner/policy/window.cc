// window: StreamingLLM (Xiao et al., 2023) — attention sinks plus a sliding window of recent
// tokens. The score is the position, so the oldest unprotected token is evicted first.
#include "planner/policy/policies.h"

namespace kvp {

void WindowPolicy::init_slot(SlotArrays& s, int slot, const NewToken& token) const {
  s.score[slot] = static_cast<float>(token.pos);
}

}  // namespace kvp
