#include "planner/policy/policy.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <limits>
#include <numeric>

#include "planner/policy/lanes.h"

namespace kvp {

bool same_prefill(const Policy& a, const Policy& b) {
  const PolicyParams &x = a.params(), &y = b.params();
  return a.name() == b.name() && x.crush_base == y.crush_base && x.vatp_base == y.vatp_base && x.seed == y.seed &&
         x.snap_window == y.snap_window && x.snap_kernel == y.snap_kernel;
}

bool is_protected(const PolicyParams& p, int32_t pos, int32_t newest_pos) {
  return pos < p.sinks || pos > newest_pos - p.recent;
}

namespace {

// Lower key first; on equal keys the older position first.
bool evict_before(float key_a, int32_t pos_a, float key_b, int32_t pos_b) {
  return key_a < key_b || (key_a == key_b && pos_a < pos_b);
}

// The unprotected slot of lowest key (older position on ties), or -1; when every unprotected key
// is +inf, the oldest unprotected slot. One pass of lane-wise lexicographic minima of (key,
// position), exact in any order, so it vectorises: protected slots enter as (+inf, INT32_MAX).
int lowest_unprotected(const PolicyParams& p, const int32_t* pos, const float* keys, int n, int32_t newest_pos) {
  using F = lanes::NF;
  using I = lanes::NI;
  constexpr int W = lanes::kNativeWidth;
  const int32_t first = p.sinks, last = newest_pos - p.recent;
  const I first_v = I{} + first, last_v = I{} + last, none_v = I{} + INT32_MAX;
  const F inf_v = F{} + INFINITY;
  F best_key = inf_v;
  I best_pos = none_v, best_slot = I{} - 1;
  I slot;
  for (int l = 0; l < W; ++l) slot[l] = l;
  auto take = [&](I q, F k) {
    const I open = (q >= first_v) & (q <= last_v);
    k = open ? k : inf_v;
    q = open ? q : none_v;
    const I better = (k < best_key) | ((k == best_key) & (q < best_pos));
    best_key = better ? k : best_key;
    best_pos = better ? q : best_pos;
    best_slot = better ? slot : best_slot;
  };
  int j = 0;
  for (; j + W <= n; j += W, slot += W) take(lanes::load_as<I>(pos + j), lanes::load_as<F>(keys + j));
  if (j < n) {
    take(lanes::load_partial_as<I>(pos + j, n - j, INT32_MAX), lanes::load_partial_as<F>(keys + j, n - j, INFINITY));
  }
  // Across the lanes: the lowest key, then the oldest position among the lanes holding it (a
  // position sits in one lane only), then that lane's slot.
  const float key = lanes::reduce_min(best_key);
  const int32_t oldest = lanes::reduce_min(best_key == key ? best_pos : none_v);
  if (oldest == INT32_MAX) return -1;
  return lanes::reduce_min(best_pos == oldest ? best_slot : I{} + INT32_MAX);
}

std::vector<float>& key_buffer(size_t n) {
  thread_local std::vector<float> keys;
  if (keys.size() < n) keys.resize(n);
  return keys;
}

}  // namespace

namespace {

// Keys with +inf for the positions at or after `unscored_from` (evicted last, oldest first), into
// `out` (which may be `keys`).
const float* defer_unscored(const float* keys, const int32_t* pos, int n, int32_t unscored_from, float* out) {
  if (unscored_from == kNoUnscored) return keys;
  for (int j = 0; j < n; ++j) out[j] = pos[j] >= unscored_from ? std::numeric_limits<float>::infinity() : keys[j];
  return out;
}

}  // namespace

int choose_victim(const Policy& policy, const SlotArrays& s, int32_t newest_pos, int32_t unscored_from) {
  std::vector<float>& buffer = key_buffer(2 * size_t(s.n_used));
  const float* keys = policy.eviction_keys(s, newest_pos, buffer.data());
  keys = defer_unscored(keys, s.pos, s.n_used, unscored_from, buffer.data() + s.n_used);
  return lowest_unprotected(policy.params(), s.pos, keys, s.n_used, newest_pos);
}

int choose_shared_victim(const Policy& policy, std::span<const SlotArrays> heads, int32_t newest_pos,
                         int32_t unscored_from) {
  const SlotArrays& first = heads.front();
  std::vector<float>& sum = key_buffer(2 * size_t(first.n_used));
  float* total = sum.data();
  float* buffer = sum.data() + first.n_used;
  std::fill(total, total + first.n_used, 0.0f);
  for (const SlotArrays& h : heads) {
    KVP_CHECK(h.n_used == first.n_used && std::equal(h.pos, h.pos + h.n_used, first.pos),
              "heads of a shared-set policy hold different positions");
    const float* keys = policy.eviction_keys(h, newest_pos, buffer);
    for (int j = 0; j < first.n_used; ++j) total[j] += keys[j];
  }
  const float* keys = defer_unscored(total, first.pos, first.n_used, unscored_from, total);
  return lowest_unprotected(policy.params(), first.pos, keys, first.n_used, newest_pos);
}

std::vector<int> select_kept(const Policy& policy, std::span<const SlotArrays> heads, int32_t newest_pos, int budget) {
  const SlotArrays& first = heads.front();
  const int n = first.n_used;
  for (int j = 1; j < n; ++j) KVP_CHECK(first.pos[j] > first.pos[j - 1], "slots to cut must hold increasing positions");
  if (n <= budget) {
    std::vector<int> all(n);
    std::iota(all.begin(), all.end(), 0);
    return all;
  }
  return policy.choose_kept(heads, newest_pos, budget);
}

std::vector<int> Policy::choose_kept(std::span<const SlotArrays> heads, int32_t newest_pos, int budget) const {
  const SlotArrays& first = heads.front();
  const int n = first.n_used;
  std::vector<int> kept, candidates;
  for (int j = 0; j < n; ++j) (is_protected(params_, first.pos[j], newest_pos) ? kept : candidates).push_back(j);
  KVP_CHECK(static_cast<int>(kept.size()) <= budget, "budget {} below the {} protected positions",
            budget, kept.size());
  // Keys summed over the heads in order, as choose_shared_victim sums them.
  std::vector<float> key(n, 0.0f), head_keys(n);
  for (const SlotArrays& h : heads) {
    const float* keys = eviction_keys(h, newest_pos, head_keys.data());
    for (int j = 0; j < n; ++j) key[j] += keys[j];
  }
  // Highest key first; the newer position first on ties (ties evict the older; slots are in
  // position order, so the slot index orders positions).
  std::stable_sort(candidates.begin(), candidates.end(), [&](int a, int b) {
    return evict_before(key[b], b, key[a], a);
  });
  candidates.resize(std::min<size_t>(candidates.size(), budget - kept.size()));
  kept.insert(kept.end(), candidates.begin(), candidates.end());
  std::sort(kept.begin(), kept.end());
  return kept;
}

std::vector<int> select_prefill_kept(const Policy& policy, std::span<const SlotArrays> heads,
                                     int prompt_len, int budget) {
  const SlotArrays& first = heads.front();
  KVP_CHECK(first.n_used == prompt_len);
  for (int j = 0; j < prompt_len; ++j) KVP_CHECK(first.pos[j] == j, "prefill slots must hold positions in order");
  return select_kept(policy, heads, prompt_len - 1, budget);
}

Result<VatpBase> parse_vatp_base(std::string_view name) {
  if (name == "h2o") return VatpBase::kH2o;
  if (name == "mean") return VatpBase::kMean;
  return make_error("vatp base: expected h2o or mean, found '{}'", name);
}

std::string_view vatp_base_name(VatpBase base) { return base == VatpBase::kH2o ? "h2o" : "mean"; }

std::optional<ParamError> kvcrush_param_error(const PolicyParams& p) {
  if (!(p.crush_ratio >= 0.0 && p.crush_ratio < 1.0)) {
    return ParamError{"ratio", fmt::format("expected a share in [0, 1), found {}", p.crush_ratio)};
  }
  if (p.crush_period < 1) {
    return ParamError{"period", fmt::format("expected at least 1 decode step, found {}", p.crush_period)};
  }
  if (p.crush_base == "full" || p.crush_base == "kvcrush") {
    return ParamError{"base", fmt::format("expected an evicting policy (window, h2o, vatp, tova, snapkv, knorm, "
                                          "random), found '{}'", p.crush_base)};
  }
  return std::nullopt;
}

Result<CrushAnchor> parse_crush_anchor(std::string_view name) {
  if (name == "mean") return CrushAnchor::kMean;
  if (name == "random") return CrushAnchor::kRandom;
  if (name == "alternating") return CrushAnchor::kAlternating;
  return make_error("kvcrush anchor: expected mean, random or alternating, found '{}'", name);
}

std::string_view crush_anchor_name(CrushAnchor anchor) {
  switch (anchor) {
    case CrushAnchor::kMean: return "mean";
    case CrushAnchor::kRandom: return "random";
    case CrushAnchor::kAlternating: return "alternating";
  }
  return "?";
}

}  // namespace kvp
