#include "planner/policy/policy.h"

#include <algorithm>
#include <numeric>

namespace kvp {

bool is_protected(const PolicyParams& p, int32_t pos, int32_t newest_pos) {
  return pos < p.sinks || pos > newest_pos - p.recent;
}

namespace {

// Lower key first; on equal keys the older position first.
bool evict_before(double key_a, int32_t pos_a, double key_b, int32_t pos_b) {
  return key_a < key_b || (key_a == key_b && pos_a < pos_b);
}

}  // namespace

int choose_victim(const Policy& policy, const SlotArrays& s, int32_t newest_pos) {
  int victim = -1;
  double victim_key = 0;
  for (int j = 0; j < s.n_used; ++j) {
    if (is_protected(policy.params(), s.pos[j], newest_pos)) continue;
    const double key = policy.eviction_key(s, j, newest_pos);
    if (victim < 0 || evict_before(key, s.pos[j], victim_key, s.pos[victim])) {
      victim = j;
      victim_key = key;
    }
  }
  return victim;
}

int choose_shared_victim(const Policy& policy, std::span<const SlotArrays> heads, int32_t newest_pos) {
  const SlotArrays& first = heads.front();
  int victim = -1;
  double victim_key = 0;
  for (int j = 0; j < first.n_used; ++j) {
    if (is_protected(policy.params(), first.pos[j], newest_pos)) continue;
    double key = 0;
    for (const SlotArrays& h : heads) {
      KVP_CHECK(h.pos[j] == first.pos[j], "heads of a shared-set policy disagree at slot {}", j);
      key += policy.eviction_key(h, j, newest_pos);
    }
    if (victim < 0 || evict_before(key, first.pos[j], victim_key, first.pos[victim])) {
      victim = j;
      victim_key = key;
    }
  }
  return victim;
}

std::vector<int> select_prefill_kept(const Policy& policy, std::span<const SlotArrays> heads,
                                     int prompt_len, int budget) {
  const SlotArrays& first = heads.front();
  KVP_CHECK(first.n_used == prompt_len);
  std::vector<int> kept, candidates;
  const int32_t newest = prompt_len - 1;
  for (int j = 0; j < prompt_len; ++j) {
    KVP_CHECK(first.pos[j] == j, "prefill slots must hold positions in order");
    (is_protected(policy.params(), j, newest) ? kept : candidates).push_back(j);
  }
  if (prompt_len <= budget) {
    std::vector<int> all(prompt_len);
    std::iota(all.begin(), all.end(), 0);
    return all;
  }
  KVP_CHECK(static_cast<int>(kept.size()) <= budget, "budget {} below the {} protected positions",
            budget, kept.size());
  std::vector<double> key(prompt_len, 0.0);
  for (int j : candidates) {
    for (const SlotArrays& h : heads) key[j] += policy.eviction_key(h, j, newest);
  }
  // Highest key first; the newer position first on ties (ties evict the older).
  std::stable_sort(candidates.begin(), candidates.end(), [&](int a, int b) {
    return evict_before(key[b], b, key[a], a);
  });
  candidates.resize(budget - kept.size());
  kept.insert(kept.end(), candidates.begin(), candidates.end());
  std::sort(kept.begin(), kept.end());
  return kept;
}

Result<VatpBase> parse_vatp_base(std::string_view name) {
  if (name == "h2o") return VatpBase::kH2o;
  if (name == "mean") return VatpBase::kMean;
  return make_error("vatp base: expected h2o or mean, found '{}'", name);
}

std::string_view vatp_base_name(VatpBase base) { return base == VatpBase::kH2o ? "h2o" : "mean"; }

}  // namespace kvp
