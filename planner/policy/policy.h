// Token-eviction policies: one implementation, used by the planner's replay and by the executor's
// cache, so both make the same decisions on the same attention (docs/METHODS.md).
//
// A policy sees one KV head's slots as plain arrays and decides three things: the score a token
// starts with when it enters the cache, how a query's attention updates the scores of the cached
// tokens, and which unprotected slot to evict (the lowest eviction key; ties evict the older
// position). Protected: positions below `sinks`, and the `recent` newest positions (the new token
// included).
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "planner/policy/delta.h"

namespace kvp {

// VATP's base attention score.
enum class VatpBase { kH2o, kMean };  // on-disk names "h2o", "mean": frozen

// KVCrush's anchor: the head-behaviour vector candidates are ordered by their Hamming distance to.
enum class CrushAnchor { kMean, kRandom, kAlternating };  // on-disk names "mean", "random", "alternating"

// Every field also goes into replay.cc's layer_signature (the replay's memo of layers it has run).
struct PolicyParams {
  int sinks = 4;           // first positions never evicted
  int recent = 16;         // newest positions never evicted (the new token counts)
  VatpBase vatp_base = VatpBase::kH2o;
  uint64_t seed = 0;       // random
  int snap_window = 32;    // snapkv: observation window (last prompt queries)
  int snap_kernel = 7;     // snapkv: max-pooling width over positions (odd)
  // kvcrush (kvcrush.cc): the importance policy under it, the share of the selectable slots that hold
  // representatives, the anchor, and how many decode steps pass between selections.
  std::string crush_base = "vatp";
  double crush_ratio = 0.25;
  CrushAnchor crush_anchor = CrushAnchor::kMean;
  int crush_period = 8;
  // DELTA's layer roles and pages (delta.h): any policy may carry them; off unless layers are given.
  DeltaParams delta;
};

// One KV head's slots. The first n_used are valid; slot order is arbitrary.
struct SlotArrays {
  int32_t n_used = 0;
  int32_t budget = 0;
  int32_t* pos = nullptr;   // [budget] original position
  float* score = nullptr;   // [budget] policy score
  float* aux = nullptr;     // [budget] policy's per-slot extra (VATP: value L1 norm), or null
};

// A token about to enter a head's cache.
struct NewToken {
  int32_t pos;
  int layer_idx;
  int kv_head_idx;
  const float* k;     // [head_dim], post-RoPE
  const float* v;     // [head_dim]
  int head_dim;
  float self_weight;  // its own attention weight at its step, summed over the group's query heads
  int prompt_len;     // > 0 while the prompt is prefilled, 0 for generated tokens
};

class Policy {
 public:
  explicit Policy(const PolicyParams& params) : params_(params) {}
  virtual ~Policy() = default;

  virtual std::string_view name() const = 0;
  const PolicyParams& params() const { return params_; }

  // False only for `full`: the cache must hold every position.
  virtual bool evicts() const { return true; }
  // Whether observe() uses attention weights (the executor skips the bookkeeping otherwise).
  virtual bool uses_attention() const { return true; }
  // True when all KV heads of a layer keep the same positions (TOVA): victims are chosen per
  // layer from the eviction keys summed over the layer's heads.
  virtual bool shared_per_layer() const { return false; }
  // Floats of per-slot state beyond position and score (counted by the memory model).
  virtual int aux_floats_per_slot() const { return 0; }
  // > 0 for a policy that selects its kept set in one go every this many decode steps (KVCrush):
  // when a decode token finds the cache full, layer_step first cuts it to budget − period slots
  // (choose_kept), so the period's new tokens enter free slots. 0: one victim per step.
  virtual int cut_period() const { return 0; }
  // The smallest budget the policy runs with: sinks + recent (+ the cut period), 1 for `full`.
  virtual int min_budget() const { return evicts() ? params_.sinks + params_.recent + cut_period() : 1; }

  // The slots to keep of `heads` (all heads of a layer for shared_per_layer(), else one), which
  // hold increasing positions, the newest at `newest_pos`, within `budget` (select_kept calls it
  // when the slots do not all fit). The default: the protected positions, then the highest
  // eviction keys summed over the heads (the newer position on ties); in slot order.
  virtual std::vector<int> choose_kept(std::span<const SlotArrays> heads, int32_t newest_pos, int budget) const;

  // init_slot, observe and finish_prefill must not depend on sinks and recent (only the choice of
  // victims does): the planner's replay prefills a prompt once for every budget of a policy.
  // Writes the score (and aux) of `token` entering `slot`.
  virtual void init_slot(SlotArrays& s, int slot, const NewToken& token) const = 0;
  // Adds the attention of the query at `query_pos` (weights over slots [0, n_used), summed over
  // the group's query heads). `prompt_len` > 0 during prefill.
  virtual void observe(SlotArrays& /*s*/, const float* /*weights*/, int /*query_pos*/,
                       int /*prompt_len*/) const {}
  // After the last prompt query, before the prompt is cut to budget.
  virtual void finish_prefill(SlotArrays& /*s*/, int /*prompt_len*/) const {}
  // The lower, the sooner evicted. `query_pos`: the position of the newest token.
  virtual float eviction_key(const SlotArrays& s, int slot, int /*query_pos*/) const {
    return s.score[slot];
  }
  // eviction_key() of every slot [0, n_used) at once (the hot path: one call per head and step):
  // the scores themselves, or the keys written to `buffer` ([n_used]). Overrides must give exactly
  // the values eviction_key() gives.
  virtual const float* eviction_keys(const SlotArrays& s, int /*query_pos*/, float* /*buffer*/) const {
    return s.score;
  }

 private:
  PolicyParams params_;
};

// Registered names: full, window, h2o, vatp, tova, snapkv, knorm, random, kvcrush.
Result<std::unique_ptr<Policy>> make_policy(std::string_view name, const PolicyParams& params);
// `full` with no sinks and no recent window: the cache of every position (one shared instance).
const std::shared_ptr<const Policy>& keep_all_policy();
std::vector<std::string> policy_names();

// Each policy's published defaults for a budget: sinks and recent as its paper or code sets them.
PolicyParams published_defaults(std::string_view name, int budget_tokens);

Result<VatpBase> parse_vatp_base(std::string_view name);
std::string_view vatp_base_name(VatpBase base);
Result<CrushAnchor> parse_crush_anchor(std::string_view name);
// kvcrush's own settings checked, in the order ratio, period, base: the field at fault and what is
// wrong with it, or nothing. The base must not be full or kvcrush; a name no policy has is
// make_policy's to report. make_policy, plan.yaml and the flags each name the field their way.
std::optional<ParamError> kvcrush_param_error(const PolicyParams& p);
std::string_view crush_anchor_name(CrushAnchor anchor);

// ---- Decisions shared by replay and executor ----

// Whether `a` and `b` score a prefill alike (init_slot, observe, finish_prefill): the same policy
// whatever its sinks, recent window, budget and the settings only its choice of victims reads
// (KVCrush's ratio, anchor and period). The replay prefills a prompt once per such group, and
// kvplan eval --tasks scores a shared prefill once per such group.
bool same_prefill(const Policy& a, const Policy& b);

// Whether position `pos` is protected when the newest position is `newest_pos`.
bool is_protected(const PolicyParams& p, int32_t pos, int32_t newest_pos);

// The slot to evict from `s` (full, newest token at `newest_pos` not yet inserted): the
// unprotected slot of lowest eviction key, the older position on ties; -1 if every slot is
// protected.
//
// `unscored_from` (replay of a trace recorded with a query stride): positions at or after it have
// not yet been attended by a recorded query, so their scores say nothing; they are evicted only
// when no other unprotected slot is left (the oldest first).
inline constexpr int32_t kNoUnscored = INT32_MAX;
int choose_victim(const Policy& policy, const SlotArrays& s, int32_t newest_pos, int32_t unscored_from = kNoUnscored);

// The same over all KV heads of a layer for shared_per_layer() policies: keys summed per slot
// (the heads' slots hold the same positions).
int choose_shared_victim(const Policy& policy, std::span<const SlotArrays> heads, int32_t newest_pos,
                         int32_t unscored_from = kNoUnscored);

// After prefill of `prompt_len` positions held in slots [0, prompt_len) in position order: the
// slots to keep within `budget`, in position order — protected positions first, then the highest
// eviction keys (the newer position on ties).
// The same for slots [0, n_used) holding increasing (not necessarily consecutive) positions, the
// newest at `newest_pos`: a prompt cut during prefill (--prefill-evict).
std::vector<int> select_kept(const Policy& policy, std::span<const SlotArrays> heads, int32_t newest_pos, int budget);
std::vector<int> select_prefill_kept(const Policy& policy, std::span<const SlotArrays> heads,
                                     int prompt_len, int budget);

}  // namespace kvp
