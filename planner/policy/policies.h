// The policy classes; each is implemented in its own file (full.cc, window.cc, ...).
#pragma once

#include "planner/policy/policy.h"

namespace kvp {

class FullPolicy final : public Policy {
 public:
  using Policy::Policy;
  std::string_view name() const override { return "full"; }
  bool evicts() const override { return false; }
  bool uses_attention() const override { return false; }
  void init_slot(SlotArrays& s, int slot, const NewToken& token) const override;
};

class WindowPolicy final : public Policy {
 public:
  using Policy::Policy;
  std::string_view name() const override { return "window"; }
  bool uses_attention() const override { return false; }
  void init_slot(SlotArrays& s, int slot, const NewToken& token) const override;
};

class H2oPolicy final : public Policy {
 public:
  using Policy::Policy;
  std::string_view name() const override { return "h2o"; }
  void init_slot(SlotArrays& s, int slot, const NewToken& token) const override;
  void observe(SlotArrays& s, const float* weights, int query_pos, int prompt_len) const override;
};

class VatpPolicy final : public Policy {
 public:
  using Policy::Policy;
  std::string_view name() const override { return "vatp"; }
  int aux_floats_per_slot() const override { return 1; }
  void init_slot(SlotArrays& s, int slot, const NewToken& token) const override;
  void observe(SlotArrays& s, const float* weights, int query_pos, int prompt_len) const override;
  float eviction_key(const SlotArrays& s, int slot, int query_pos) const override;
  const float* eviction_keys(const SlotArrays& s, int query_pos, float* buffer) const override;
};

class TovaPolicy final : public Policy {
 public:
  using Policy::Policy;
  std::string_view name() const override { return "tova"; }
  bool shared_per_layer() const override { return true; }
  void init_slot(SlotArrays& s, int slot, const NewToken& token) const override;
  void observe(SlotArrays& s, const float* weights, int query_pos, int prompt_len) const override;
};

class SnapKvPolicy final : public Policy {
 public:
  using Policy::Policy;
  std::string_view name() const override { return "snapkv"; }
  void init_slot(SlotArrays& s, int slot, const NewToken& token) const override;
  void observe(SlotArrays& s, const float* weights, int query_pos, int prompt_len) const override;
  void finish_prefill(SlotArrays& s, int prompt_len) const override;
};

class KnormPolicy final : public Policy {
 public:
  using Policy::Policy;
  std::string_view name() const override { return "knorm"; }
  bool uses_attention() const override { return false; }
  void init_slot(SlotArrays& s, int slot, const NewToken& token) const override;
};

class RandomPolicy final : public Policy {
 public:
  using Policy::Policy;
  std::string_view name() const override { return "random"; }
  bool uses_attention() const override { return false; }
  void init_slot(SlotArrays& s, int slot, const NewToken& token) const override;
};

// kvcrush (kvcrush.cc): a base importance policy's scores, one kept set per layer, and a share of
// the selectable slots for representatives of the tokens the base would evict.
class KvCrushPolicy final : public Policy {
 public:
  KvCrushPolicy(const PolicyParams& params, std::unique_ptr<Policy> base)
      : Policy(params), base_(std::move(base)) {}
  std::string_view name() const override { return "kvcrush"; }
  const Policy& base() const { return *base_; }
  bool uses_attention() const override { return base_->uses_attention(); }
  bool shared_per_layer() const override { return true; }
  int aux_floats_per_slot() const override { return base_->aux_floats_per_slot(); }
  int cut_period() const override { return params().crush_period; }
  void init_slot(SlotArrays& s, int slot, const NewToken& token) const override { base_->init_slot(s, slot, token); }
  void observe(SlotArrays& s, const float* weights, int query_pos, int prompt_len) const override {
    base_->observe(s, weights, query_pos, prompt_len);
  }
  void finish_prefill(SlotArrays& s, int prompt_len) const override { base_->finish_prefill(s, prompt_len); }
  float eviction_key(const SlotArrays& s, int slot, int query_pos) const override {
    return base_->eviction_key(s, slot, query_pos);
  }
  const float* eviction_keys(const SlotArrays& s, int query_pos, float* buffer) const override {
    return base_->eviction_keys(s, query_pos, buffer);
  }
  std::vector<int> choose_kept(std::span<const SlotArrays> heads, int32_t newest_pos, int budget) const override;

 private:
  std::unique_ptr<Policy> base_;
};

}  // namespace kvp
