// The reference backend: f32 activations on the host; weights in their stored types multiplied by
// the dot kernels (dot_kernels.h), split by output rows over `threads` threads; attention split
// over KV heads (and sequences) across the same threads. Prompts may come in chunks
// (StepRows::prompt_len): a prompt's KV is kept in a per-sequence scratch until it is cut to budget
// (or, under PrefillMode::evict_chunk, cut in place after every chunk).
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

// Bytes of the step activations the CPU backend writes for `rows` rows at once, `logit_rows` of
// them through the classifier (every Act, rows padded to 16 floats): what a prefill chunk of that
// many rows costs besides the KV.
int64_t cpu_activation_bytes(const ModelConfig& config, int64_t rows, int64_t logit_rows);

class CpuBackend final : public Backend {
 public:
  // `weights` must outlive the backend. `threads` >= 1 share the matrix products.
  explicit CpuBackend(const ModelWeights& weights, int threads = 1);

  std::string_view name() const override { return "cpu"; }
  const ModelConfig& config() const override { return config_; }

  void reset_sequences(const std::vector<KvBudgets>& budgets,
                       std::shared_ptr<const Policy> policy = nullptr) override;
  bool opens_sequences() const override { return true; }
  void open_sequence(int seq, const KvBudgets& budgets, std::shared_ptr<const Policy> policy) override;
  void close_sequence(int seq) override;
  void set_eviction_log(std::vector<EvictionRecord>* log) override { eviction_log_ = log; }
  void set_prefill_mode(const PrefillMode& mode) override { prefill_mode_ = mode; }
  int64_t kv_bytes_allocated() const override;
  int64_t peak_kv_bytes() const override { return peak_kv_bytes_; }
  void fill_for_benchmark(int n_positions) override;

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

  void time_phases(bool on) override {
    time_phases_ = on;
    phases_ = {};
  }
  PhaseTimes phase_times() const override { return phases_; }
  AttendStats attend_stats() const override { return attend_stats_; }

  KvCache& cache(int seq_idx) { return caches_[seq_idx]; }

  // A shared prefill (kvplan eval --tasks): sequence `seq`'s next prompt, run under a policy that
  // keeps every position, is also scored by each of `scorers` as that policy would score it in its
  // own prefill (ScoreObserver), into arrays of its own. REQUIRES: no --prefill-evict.
  void score_prompt_for(int seq, std::vector<std::shared_ptr<const Policy>> scorers);
  // After that prompt: sequence `dst` gets a fresh cache of `budgets`, run under `policy`, holding
  // what `policy` keeps of the prompt given scorers[scorer]'s scores (the cut its own prefill of the
  // prompt would make: the same slots, scores and aux), ready to decode the positions after the
  // prompt. `policy` scores as scorers[scorer] does (the same policy up to sinks and recent).
  void fork_prompt(int src, int scorer, int dst, const KvBudgets& budgets, std::shared_ptr<const Policy> policy);
  // What scorers[scorer] wrote for that prompt at (layer, head): its scores or its aux floats, one
  // per position (kvplan record --tasks keeps them).
  std::span<const float> prompt_scores(int seq, int scorer, int layer, int head, bool aux) const;

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

  // A prompt being prefilled: its KV so far, every layer, in `scratch` (working memory until the
  // prompt is cut to budget, counted in peak_kv_bytes).
  struct Prompt {
    int prompt_len = 0;
    int next_pos = 0;                  // the position its next row must have
    std::unique_ptr<KvCache> scratch;  // null: no prompt in progress
  };
  // score_prompt_for's scorers of a sequence and their arrays: [scorer][layer * n_kv_heads + head]
  // of [prompt_len] scores and aux floats (indexed by slot, which is position in a keep-all prompt).
  struct Scorers {
    std::vector<std::shared_ptr<const Policy>> policies;
    int prompt_len = 0;
    std::vector<std::vector<std::vector<float>>> score, aux;
  };
  // One sequence's contiguous rows in the current step; a prompt's rows when prompt_len > 0.
  struct Run {
    int first, n, seq, prompt_len;
  };
  // Attention's work units: a run's rows through heads [h0, h1) of one layer.
  struct Unit {
    int run, h0, h1;
  };
  // A thread's buffers for attention.
  struct Worker {
    explicit Worker(int max_slots) : scratch(max_slots) {}
    StepScratch scratch;
    std::vector<HeadSlots> heads, dest;
  };
  // Runs decode row `r` of sequence `seq` through heads [h0, h1) of one layer's cache: attend,
  // score, insert or evict.
  void decode_row(Worker& w, int r, int seq, int layer_idx, int h0, int h1);
  // The work units of layer `layer_idx` for the step's runs, into units_.
  void layer_units(int layer_idx);
  void heads_of(KvCache& cache, int layer_idx, int h0, int h1, std::vector<HeadSlots>* heads) const;
  // A prompt's rows of a run through heads [h0, h1) of its scratch; cuts to budget after each
  // --prefill-evict chunk and, after the prompt's last position, into the sequence's cache.
  void prefill_rows(Worker& w, const Run& run, int layer_idx, int h0, int h1);
  void start_prompt(int seq, int prompt_len);
  EvictFn eviction_logger(int seq, int32_t step, int layer_idx, int h0);
  void note_kv_bytes();

  // Adds the seconds since `start` to `*part` when phases are timed.
  struct PhaseTimer {
    PhaseTimer(bool on, double* part);
    ~PhaseTimer();
    double* part;
    double start;
  };
  bool time_phases_ = false;
  PhaseTimes phases_;

  const ModelWeights& weights_;
  ModelConfig config_;
  std::unique_ptr<ThreadPool> pool_;
  std::vector<float> rope_cos_;  // [seq_len, head_dim / 2]
  std::vector<float> rope_sin_;  // [seq_len, head_dim / 2]
  std::vector<KvCache> caches_;  // one per sequence
  std::vector<std::shared_ptr<const Policy>> policies_;  // one per sequence (never null)
  std::vector<Prompt> prompts_;  // one per sequence
  std::vector<Scorers> scorers_;  // one per sequence (empty: none)
  PrefillMode prefill_mode_;
  int64_t peak_kv_bytes_ = 0;
  std::vector<EvictionRecord>* eviction_log_ = nullptr;

  StepRows rows_;
  std::vector<Run> runs_;
  std::vector<Unit> units_;
  int n_rows_ = 0;
  using AlignedFloats = std::vector<float, Eigen::aligned_allocator<float>>;
  AlignedFloats acts_[kNumActs];  // each [rows capacity, row_stride(act_width)]
  std::vector<Worker> workers_;   // one per thread
  std::vector<DeltaRow> delta_rows_;  // [n_rows] each decode row's DELTA pages
  AttendStats attend_stats_;
};

}  // namespace kvp
