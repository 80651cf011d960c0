// random: evicts an unprotected token at random. The "random" score is a hash of (seed, layer,
// head, position), so replay and executor evict the same tokens.
#include "planner/policy/policies.h"

namespace kvp {
namespace {

uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

}  // namespace

void RandomPolicy::init_slot(SlotArrays& s, int slot, const NewToken& token) const {
  const uint64_t h = splitmix64(params().seed ^ splitmix64((uint64_t(token.layer_idx) << 48) ^
                                                           (uint64_t(token.kv_head_idx) << 32) ^
                                                           uint64_t(uint32_t(token.pos))));
  s.score[slot] = static_cast<float>(h >> 40) * 0x1.0p-24f;
}

}  // namespace kvp
