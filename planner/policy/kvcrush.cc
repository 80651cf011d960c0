// kvcrush: KVCrush (Jha et al., 2025) — on top of an importance policy, a share of the budget holds
// representatives of the tokens that policy would evict, chosen by how the heads treat them.
//
// A selection over a layer's slots within `budget` (at the prompt's cut, then every `period`
// decode steps, cutting to budget − period; Policy::cut_period):
//   1. the protected positions (sinks, recent) are kept; of the F = budget − protected selectable
//      slots, R = ⌊ρ·F⌋ hold representatives and F − R the highest keys of the base policy summed
//      over the heads (Policy::choose_kept);
//   2. every slot gets a head-behaviour bit per KV head: 1 if its base key is in that head's top
//      half over the whole cache (rank·2 < n, the newer slot ranked higher on ties);
//   3. the candidates are the slots step 1 did not keep; the anchor is their majority bit per head
//      (mean; a tie gives 0), a hash of (seed, head) (random) or 1, 0, 1, ... (alternating);
//   4. candidates ordered by Hamming distance to the anchor (the older slot first on ties), and
//      the representatives taken at an even stride along that order: candidate ⌊i·C/R⌋ for
//      i = 0 .. R − 1, so every group of behaviour keeps someone.
// The kept set is shared by the layer's heads, as TOVA's is.
#include <algorithm>
#include <numeric>

#include "kernels/score_rule.h"
#include "planner/policy/policies.h"

namespace kvp {

std::vector<int> KvCrushPolicy::choose_kept(std::span<const SlotArrays> heads, int32_t newest_pos, int budget) const {
  const SlotArrays& first = heads.front();
  const int n = first.n_used;
  int n_protected = 0;
  for (int j = 0; j < n; ++j) n_protected += is_protected(params(), first.pos[j], newest_pos);
  const int selectable = std::max(0, budget - n_protected);
  const int reps = static_cast<int>(params().crush_ratio * selectable);
  std::vector<int> kept = Policy::choose_kept(heads, newest_pos, budget - reps);
  if (reps == 0) return kept;

  std::vector<char> in_kept(n, 0);
  for (int j : kept) in_kept[j] = 1;
  std::vector<int> candidates;
  for (int j = 0; j < n; ++j) {
    if (!in_kept[j]) candidates.push_back(j);
  }
  const int n_heads = static_cast<int>(heads.size());
  const int c = static_cast<int>(candidates.size());
  KVP_CHECK(c > reps, "kvcrush: {} candidates for {} representatives", c, reps);
  // bits[j * n_heads + h]: slot j is in head h's top half.
  std::vector<uint8_t> bits(size_t(n) * n_heads);
  std::vector<float> buffer(n);
  std::vector<int> order(n);
  for (int h = 0; h < n_heads; ++h) {
    const float* key = eviction_keys(heads[h], newest_pos, buffer.data());
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(), [&](int a, int b) { return key[a] > key[b] || (key[a] == key[b] && a > b); });
    for (int r = 0; r < n; ++r) bits[size_t(order[r]) * n_heads + h] = 2 * r < n;
  }
  std::vector<uint8_t> anchor(n_heads);
  for (int h = 0; h < n_heads; ++h) {
    switch (params().crush_anchor) {
      case CrushAnchor::kMean: {
        int ones = 0;
        for (int j : candidates) ones += bits[size_t(j) * n_heads + h];
        anchor[h] = 2 * ones > c;
        break;
      }
      case CrushAnchor::kRandom: anchor[h] = math::random_score(params().seed, 0, h, 0) >= 0.5f; break;
      case CrushAnchor::kAlternating: anchor[h] = h % 2 == 0; break;
    }
  }
  std::vector<int> distance(n, 0);
  for (int j : candidates) {
    for (int h = 0; h < n_heads; ++h) distance[j] += bits[size_t(j) * n_heads + h] != anchor[h];
  }
  std::stable_sort(candidates.begin(), candidates.end(), [&](int a, int b) { return distance[a] < distance[b]; });
  for (int i = 0; i < reps; ++i) kept.push_back(candidates[static_cast<size_t>(int64_t{i} * c / reps)]);
  std::sort(kept.begin(), kept.end());
  return kept;
}

}  // namespace kvp
