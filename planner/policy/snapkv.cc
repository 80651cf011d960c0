// snapkv: SnapKV (Li et al., 2024) — at prefill, the attention of the last `snap_window` prompt
// queries (the observation window) is summed per token, max-pooled over `snap_kernel` neighbouring
// positions, and the top tokens are kept with the observation window itself (protect it with
// recent >= snap_window for the paper's behaviour).
//
// SnapKV compresses the prompt only. Under a fixed budget the generated tokens must also be
// evicted: here they enter with score -1, below every prefill token, so beyond the recent window
// they leave first-in first-out; the prompt's selection is evicted (lowest pooled score first) only
// when no generated token is left to evict.
#include <algorithm>
#include <vector>

#include "planner/policy/policies.h"

namespace kvp {

void SnapKvPolicy::init_slot(SlotArrays& s, int slot, const NewToken& token) const {
  // Prompt tokens start at 0 and accumulate the observation window's attention; a token
  // generated after the prompt is marked -1.
  s.score[slot] = token.prompt_len > 0 ? 0.0f : -1.0f;
}

void SnapKvPolicy::observe(SlotArrays& s, const float* weights, int query_pos, int prompt_len) const {
  if (prompt_len <= 0 || query_pos < prompt_len - params().snap_window) return;
  for (int j = 0; j < s.n_used; ++j) s.score[j] += weights[j];
}

void SnapKvPolicy::finish_prefill(SlotArrays& s, int prompt_len) const {
  // Slots hold positions 0..prompt_len-1 in order (see select_prefill_kept).
  const int half = std::max(0, params().snap_kernel / 2);
  std::vector<float> pooled(prompt_len);
  for (int j = 0; j < prompt_len; ++j) {
    float m = s.score[j];
    for (int d = std::max(0, j - half); d <= std::min(prompt_len - 1, j + half); ++d) m = std::max(m, s.score[d]);
    pooled[j] = m;
  }
  std::copy(pooled.begin(), pooled.end(), s.score);
}

}  // namespace kvp
