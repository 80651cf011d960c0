// The GPU backend: weights, the plan-shaped KV cache and the step's activations in device memory;
// matrix products through the device's GEMM (cuBLAS on CUDA); everything else in the kernels of
// kernels/decoder_kernels.cuh. The cache physically holds only the budgeted slots: one allocation
// of exactly the plan's bytes for all sequences (keys, values, positions, scores and the policy's
// value norms), and eviction replaces a victim's slot in place.
//
// Policies: every one of the registry (full, window, h2o, vatp with both bases, tova, snapkv,
// knorm, random) runs on the device with the CPU executor's rules (kernels/score_rule.h,
// kernel_math.h). Decisions are the
// CPU executor's — lowest key, older position on ties; protected sinks and recent window — so on
// the same attention both evict the same tokens (floating-point sums run in another order, so keys
// agree to rounding, and only a near-tie can break differently).
//
// DELTA: a selection layer's decode attention also writes each slot's largest weight over its
// group, and delta_select chooses each row's pages from them by the CPU's rule; a sparse layer's
// attention masks the slots off those pages (no key or value read), so both attend the same tokens
// and evict the same ones. Dense caches only.
//
// ThinK and Mustafar: a compressed plan's heads hold their keys and values in the device form of
// kv_compression.h's layout (kernels/compressed_layout.h), the same bytes; the prompt's cut chooses
// ThinK's channels and Mustafar's elements by the CPU's rules and decode attends the short forms,
// so both keep the same tokens. Serving pools stay dense.
//
// Steps: a sequence whose cache is empty is prefilled on the device (attention outputs, each
// prompt key's accumulated attention by column sums, the kept positions by rank, a gather into
// its slots); otherwise its row attends its slots plus itself, adds its attention to the scores,
// and takes a free slot or the victim's. Decode rows of different sequences run as one batch.
// A prompt in chunks is held in a scratch until its last chunk, or under --prefill-evict cut to
// budget per KV head after every chunk (prefill_evicting).
#pragma once

#include <algorithm>
#include <cstddef>
#include <memory>
#include <vector>

#include "executor/backend.h"
#include "executor/gpu/device.h"

namespace kvp {

struct GpuBackendOptions {
  // Element type of the matrix weights on the device (norms and embeddings stay f32). The KV cache's
  // element type is the budgets' dtype.
  KvDtype weights = KvDtype::kF32;
  // Matrices whose rows are whole 32-blocks go to the device as q8_0 (their stored bytes when the
  // model holds them so, else quantized on the host) and run through our q8_0 kernel; the others
  // as `weights`.
  bool q8_0 = false;
};

class GpuBackend final : public Backend {
 public:
  // `weights` must outlive the backend; they are copied to the device here.
  GpuBackend(const ModelWeights& weights, std::unique_ptr<Device> device, GpuBackendOptions options = {});
  ~GpuBackend() override;

  // Ok when the backend runs `policy` on the device; else an error naming those it runs.
  static Status supports(const Policy& policy);
  // Ok when the kernels run this model (head_dim <= 128, at most 8 query heads per KV head,
  // interleaved RoPE, no q/k/v biases); else an error naming what they do not run.
  static Status supports_model(const ModelConfig& config);

  std::string_view name() const override { return name_; }
  const ModelConfig& config() const override { return config_; }
  Device& device() { return *device_; }
  // Device bytes of the weights as uploaded.
  int64_t weight_bytes() const { return weight_bytes_; }

  void reset_sequences(const std::vector<KvBudgets>& budgets,
                       std::shared_ptr<const Policy> policy = nullptr) override;
  // Serving: one arena of the pool's bytes, reserved up front; each sequence opened takes a range of
  // its slots (first fit) and gives it back when closed. Every sequence runs the pool's policy.
  bool opens_sequences() const override { return true; }
  void reset_pool(int n_sequences, int64_t pool_bytes, KvDtype dtype, std::shared_ptr<const Policy> policy) override;
  void open_sequence(int seq, const KvBudgets& budgets, std::shared_ptr<const Policy> policy) override;
  void close_sequence(int seq) override;
  void set_eviction_log(std::vector<EvictionRecord>* log) override { eviction_log_ = log; }
  // The caches' bytes: the arena, or in a pool the open sequences' share of it.
  int64_t kv_bytes_allocated() const override {
    return pool_ ? in_use_bytes_ : static_cast<int64_t>(kv_arena_.bytes());
  }
  // A prompt in one step runs through the prefill kernels from the step's activations; a prompt in
  // chunks keeps its keys and values, every layer, in a device scratch until its last chunk, whose
  // cut takes what the policy keeps (the same kernels, over the scratch). With --prefill-evict the
  // scratch is per KV head, budget + chunk rows: after each chunk that ends on a multiple of the
  // evict chunk the head keeps, from the scores so far, what the CPU executor's prefill_row keeps,
  // compacted in place (prefill_evicting, cut_scratch).
  // A prompt in one step is cut from the step's activations.
  bool holds_prompt_scratch(int prompt_len, int chunk) const override { return prompt_len > chunk; }
  void set_prefill_mode(const PrefillMode& mode) override;
  int64_t peak_kv_bytes() const override { return std::max(peak_kv_bytes_, kv_bytes_allocated()); }

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
  // On the device (the sampling kernel, or argmax when greedy); copies back only the tokens.
  void pick_tokens(const SamplerOptions& options, std::span<const float> uniforms, std::span<int32_t> out) override;

 private:
  // A run of rows handled by one launch sequence: a prefill of one sequence, or decode rows of
  // distinct sequences.
  struct Work {
    bool prefill;
    int first;
    int n;
  };

  const DeviceBuffer& weight(Weight w, int layer_idx) const;
  float* act(Act a) const { return acts_[static_cast<int>(a)].as<float>(); }
  size_t head_index(int seq, int layer_idx, int kv_head_idx) const {
    return (static_cast<size_t>(seq) * config_.n_layers + layer_idx) * config_.n_kv_heads + kv_head_idx;
  }
  // The cache as the kernels see it for `layer_idx`: per-entry slot offsets, capacities and fill
  // (device arrays), and for a compressed cache each entry's block offset and, in decode, its newest
  // position.
  SlotCacheView cache_view(int layer_idx, const int64_t* offset, const int32_t* capacity, const int32_t* n_used,
                           const int64_t* block = nullptr, const int32_t* newest = nullptr) const;
  // The device views at head_index(seq, layer_idx, first_head) onwards of the per-head arrays.
  SlotCacheView prompt_view(int seq, int layer_idx, int first_head) const;
  bool thin(int layer_idx) const { return !layer_shape_.empty() && layer_shape_[layer_idx].thin(); }
  // ThinK: the launched heads' Σ q² of the prompt's last queries, from this chunk's rows.
  void add_query_sums(int seq, const PrefillRows& chunk, int layer_idx, int first_pos, int prompt_len, float* sums);
  void ensure_rows(int rows);
  void upload_rows();
  void prefill(const Work& w, int layer_idx);
  // --prefill-evict: a chunk of a prompt through each KV head's scratch, then the cut its end calls for.
  void prefill_evicting(const Work& w, int layer_idx);
  // The cut of each KV head's scratch after the row at `newest`: in place to the budget, or with
  // `finish` (the prompt's last row) into the cache.
  void cut_scratch(int seq, int layer_idx, int32_t newest, bool finish);
  // A cut of a head's `rows` prompt rows (positions up to `newest`) into `budget` slots: all of them
  // fit a full cache, or the protected positions fit the budget; else a check failure.
  void check_cut(int seq, int rows, int32_t newest, int budget) const;
  // keep_, grown to keep_stride slots per KV head.
  int32_t* keep_rows(int keep_stride);
  // KVCrush's kept rows of a layer's shared set (keys [H, key_stride] over rows [0, n), positions
  // [n] or null for the row index) into keep[0, budget) and copied to the other heads' rows of keep
  // (keep_stride apart).
  void crush_keep(const float* keys, int key_stride, int n, const int32_t* positions, int32_t newest, int budget,
                  int32_t* keep, int keep_stride);
  // KVCrush at decode: the full cache of the entry heads [e, e + H) of row `row` (view over them) cut
  // in place to budget − period slots before the row's token is placed; the eviction log as the CPU
  // executor's cut_slots writes it. Returns the slots left.
  int crush_cut(const SlotCacheView& view, int row, int layer_idx, int capacity);
  // The prompt's cut into the cache: scores, the kept positions, ThinK's channels (from
  // `query_sums`, null unless the layer is thin), the gather, the eviction log.
  void cut_prompt(int seq, int layer_idx, const PrefillRows& prompt, const float* column_sum, const float* query_sums);
  void decode(const std::vector<Work>& runs, int layer_idx);
  void matmul_rows(Weight w, int layer_idx, Act in, Act out, bool accumulate);
  void set_policy(std::shared_ptr<const Policy> policy);
  // kv_arena_ for `slots` slots of kv_half_ elements and the policy's metadata, and the region
  // pointers into it; returns its bytes.
  // With `block_bytes` (a compressed cache) the keys and values live in the head blocks after the
  // per-slot regions, and the key and value regions are empty.
  int64_t allocate_arena(int64_t slots, int64_t block_bytes = 0);

  const ModelWeights& weights_;
  ModelConfig config_;
  std::unique_ptr<Device> device_;
  GpuBackendOptions options_;
  std::string name_;
  int threads_;

  // Weights: [n_layers + 1][kNumWeights] (the last row for the final norm and classifier).
  std::vector<DeviceBuffer> weight_bufs_;
  std::vector<DeviceWeight> weight_types_;  // per entry of weight_bufs_
  DeviceBuffer embedding_, rope_cos_, rope_sin_;
  int64_t weight_bytes_ = 0;

  // The cache of every sequence in one allocation: keys, values, positions, scores, value norms.
  DeviceBuffer kv_arena_;
  void* k_ = nullptr;
  void* v_ = nullptr;
  int32_t* pos_ = nullptr;
  float* score_ = nullptr;
  float* value_l1_ = nullptr;  // null when the policy keeps no value norms
  bool kv_half_ = false;
  // A compressed cache (ThinK, Mustafar; kernels/compressed_layout.h): every sequence's layers in the
  // same shapes, each head's keys and values in its block at blocks_ + head_block_[i]. Empty: dense.
  std::vector<CompressedShape> layer_shape_;  // [layer]
  uint8_t* blocks_ = nullptr;
  std::vector<int64_t> head_block_;  // [seq, layer, head]
  DeviceBuffer head_block_dev_;
  std::vector<KvBudgets> budgets_;
  std::vector<int64_t> head_offset_;    // [seq, layer, head] first slot
  std::vector<int32_t> head_capacity_;  // [seq, layer, head]
  std::vector<int32_t> n_used_;         // [seq, layer, head]
  DeviceBuffer head_offset_dev_, head_capacity_dev_;
  std::shared_ptr<const Policy> policy_;
  math::ScoreArgs score_args_;  // the policy's rule; layer_idx set per call
  bool shared_ = false;         // one kept set per layer (tova, kvcrush)
  int crush_period_ = 0;        // kvcrush: decode steps between its cuts (0: not kvcrush)
  DeltaParams delta_;           // DELTA's layer roles (off when empty)
  int sinks_ = 0, recent_ = 0;
  bool evicts_ = false;
  std::vector<EvictionRecord>* eviction_log_ = nullptr;

  // The step.
  StepRows rows_;
  int n_rows_ = 0, row_capacity_ = 0;
  std::vector<Work> work_;
  DeviceBuffer acts_[kNumActs];
  DeviceBuffer x_half_, tokens_dev_, positions_dev_;
  DeviceBuffer probs_, uniform_, picked_;  // sampling: [rows, vocab] workspace, draws, tokens
  // Per (row, KV head) of a decode batch: offsets, capacities, fill and newest positions (one
  // upload per layer), and the kernels' outputs.
  DeviceBuffer meta_, slot_, evicted_pos_, evicted_key_, self_weight_;
  DeviceBuffer attn_weights_;  // decode attention's workspace, [heads, group, max_capacity_ + 1]
  int max_capacity_ = 0;       // the largest budget of any head
  std::vector<std::byte> meta_host_;  // the metadata packed on the host, reused across layers
  // A prompt arriving in chunks: its keys, values and column sums so far, per layer.
  // One allocation of the memory model's prefill scratch (KvBudgets::prefill_scratch: what the CPU
  // cache holds, keys and values plus each slot's position, score and value norm), so the peak is
  // the predicted one (for an f32 cache); per layer it holds keys and values [P, kv_dim] in f32 and
  // column sums [n_kv_heads, P].
  struct PromptScratch {
    int prompt_len = 0;
    int next_pos = 0;
    DeviceBuffer arena;
    std::vector<float*> k, v, column_sum;  // [layer]
    std::vector<float*> query_sums;        // [layer] ThinK's [n_kv_heads, head_dim] (null: not thin)
    // --prefill-evict: per (layer, KV head), min(prompt, budget + evict chunk) rows of keys and
    // values [cap, head_dim], positions and column sums [cap]; the first `rows` hold the kept tokens
    // in position order, then the chunk's.
    struct Head {
      float* k;
      float* v;
      int32_t* pos;
      float* column_sum;
      float* query_sums;  // ThinK's [head_dim] (null: not thin)
      int cap;
      int rows;
    };
    std::vector<Head> heads;  // [layer * n_kv_heads + h]
    int64_t bytes() const { return static_cast<int64_t>(arena.bytes()); }
  };
  std::vector<PromptScratch> prompts_;  // [seq]
  int64_t peak_kv_bytes_ = 0;
  int evict_chunk_ = 0;  // --prefill-evict's chunk; 0: prompts held whole until their last row
  void note_kv_bytes();
  void open_prompt(int seq, int prompt_len);
  // A pool (reset_pool): its slots, the free ranges (start, count) in increasing order, each
  // sequence's range, and the open sequences' bytes.
  bool pool_ = false;
  int64_t pool_slots_ = 0;
  std::vector<std::pair<int64_t, int64_t>> free_slots_;
  std::vector<std::pair<int64_t, int64_t>> seq_slots_;
  int64_t in_use_bytes_ = 0;

  // Prefill scratch, grown to the longest prompt.
  int prefill_capacity_ = 0;
  DeviceBuffer row_max_, row_sum_, column_sum_, prompt_score_, prompt_l1_, prompt_key_, shared_key_, keep_;
  DeviceBuffer crush_work_, crush_keys_;  // kvcrush_keep's workspace; a decode cut's slot keys
  // DELTA: a selection layer's per-slot maxima [entries, max_capacity_ + 1], the step's rows' chosen
  // pages [rows, delta_pages_stride()], and delta_select's workspace.
  DeviceBuffer delta_head_max_, delta_chosen_, delta_pos_weight_, delta_page_score_;
  int delta_pages_stride() const { return config_.seq_len / std::max(1, delta_.page_size) + 1; }
  DeviceBuffer query_sums_;  // ThinK's sums of a prompt in one step, [n_kv_heads, head_dim]
};

}  // namespace kvp
