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

}  // namespace kvp
