// The reference backend: f32 on the host, Eigen for the matrix products, one thread.
//
// Every row is computed with the same sequence of floating-point operations whatever else is in
// the step (matrix products are per-row GEMVs), so a sequence decoded in a batch gets the same
// bits as the same sequence decoded alone.
#pragma once

#include <memory>
#include <vector>

#include "executor/backend.h"
#include "executor/kv_cache.h"

namespace kvp {

class CpuBackend final : public Backend {
 public:
  // `weights` must outlive the backend.
  explicit CpuBackend(const ModelWeights& weights);

  std::string_view name() const override { return "cpu"; }
  const ModelConfig& config() const override { return config_; }

  void reset_sequences(const std::vector<KvBudgets>& budgets) override;
  int64_t kv_bytes_allocated() const override;

  void begin_step(const StepRows& rows) override;
  void embed() override;
  void rmsnorm(Act in, Act out, Weight w, int layer_idx) override;
  void matmul(Weight w, int layer_idx, Act in, Act out) override;
  void matmul_add(Weight w, int layer_idx, Act in, Act out) override;
  void rope(Act qk) override;
  void attention(int layer_idx) override;
  void swiglu(Act gate, Act up) override;
  void select_rows(std::span<const int32_t> row_idx) override;
  void read(Act act, std::span<float> out) const override;
  int n_rows() const override { return n_rows_; }

  KvCache& cache(int seq_idx) { return caches_[seq_idx]; }

 private:
  float* row(Act act, int row_idx) {
    return acts_[static_cast<int>(act)].data() + static_cast<size_t>(row_idx) * act_width(config_, act);
  }
  void matmul_rows(Weight w, int layer_idx, Act in, Act out, bool accumulate);

  const ModelWeights& weights_;
  ModelConfig config_;
  std::vector<float> rope_cos_;  // [seq_len, head_dim / 2]
  std::vector<float> rope_sin_;  // [seq_len, head_dim / 2]
  std::vector<KvCache> caches_;  // one per sequence
  StepRows rows_;
  int n_rows_ = 0;
  std::vector<float> acts_[kNumActs];  // each [rows capacity, act_width]
  std::vector<float> scores_;          // [budget + 1] attention weights of one query head
};

}  // namespace kvp
