// The reference backend: f32 activations on the host; weights in their stored types multiplied by
// the dot kernels (dot_kernels.h), split by output rows over `threads` threads.
//
// Every row is computed with the same sequence of floating-point operations whatever else is in
// the step and however many threads run, so a sequence decoded in a batch gets the same bits as
// the same sequence decoded alone: each output element is one dot product in a fixed order, and
// the buffers that Eigen reductions read (activation rows, scores) start on 64-byte boundaries,
// because a reduction's summation order follows the alignment of its first element.
#pragma once

#include <Eigen/Core>
#include <memory>
#include <vector>

#include "common/thread_pool.h"
#include "executor/backend.h"
#include "executor/kv_cache.h"

namespace kvp {

class CpuBackend final : public Backend {
 public:
  // `weights` must outlive the backend. `threads` >= 1 share the matrix products.
  explicit CpuBackend(const ModelWeights& weights, int threads = 1);

  std::string_view name() const override { return "cpu"; }
  const ModelConfig& config() const override { return config_; }

  void reset_sequences(const std::vector<KvBudgets>& budgets,
                       std::shared_ptr<const Policy> policy = nullptr) override;
  void set_eviction_log(std::vector<EvictionRecord>* log) override { eviction_log_ = log; }
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
  // Rows are padded to a multiple of 16 floats so that every row starts 64-byte aligned.
  static size_t row_stride(int width) { return (static_cast<size_t>(width) + 15) / 16 * 16; }
  float* row(Act act, int row_idx) {
    return acts_[static_cast<int>(act)].data() + row_idx * row_stride(act_width(config_, act));
  }
  const float* row(Act act, int row_idx) const {
    return acts_[static_cast<int>(act)].data() + row_idx * row_stride(act_width(config_, act));
  }
  void matmul_rows(Weight w, int layer_idx, Act in, Act out, bool accumulate);

  // Runs row `r` of sequence `seq` through one layer's cache (layer_step): attend, score, insert or
  // evict. `prompt_len` > 0 while prefilling (no eviction then: the scratch holds the whole prompt).
  void step_row(int r, int seq, int layer_idx, KvCache& cache, int cache_layer, int prompt_len);
  // Fills `heads` with one layer's head views (reusing its storage: this runs for every row).
  void heads_of(KvCache& cache, int layer_idx, std::vector<HeadSlots>* heads) const;
  // Prefills rows [first, first + n) of an empty cache through the scratch cache, then keeps
  // what the policy selects within each head's budget.
  void prefill(int first, int n, int seq, int layer_idx);
  EvictFn eviction_logger(int seq, int32_t step, int layer_idx);

  const ModelWeights& weights_;
  ModelConfig config_;
  std::unique_ptr<ThreadPool> pool_;
  std::vector<float> rope_cos_;  // [seq_len, head_dim / 2]
  std::vector<float> rope_sin_;  // [seq_len, head_dim / 2]
  std::vector<KvCache> caches_;  // one per sequence
  std::shared_ptr<const Policy> policy_;
  std::unique_ptr<KvCache> scratch_;  // one layer's prompt during prefill (working memory, not KV)
  std::vector<EvictionRecord>* eviction_log_ = nullptr;

  StepRows rows_;
  int n_rows_ = 0;
  using AlignedFloats = std::vector<float, Eigen::aligned_allocator<float>>;
  AlignedFloats acts_[kNumActs];  // each [rows capacity, row_stride(act_width)]
  StepScratch step_scratch_;
  std::vector<HeadSlots> row_heads_, prefill_heads_;  // reused head views
};

}  // namespace kvp
