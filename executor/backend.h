// The model-level operations a decoder is made of, implemented once per device.
//
// A backend owns the weights on its device, one KV cache per sequence (shaped by KvBudgets), and
// the activations of the current step. The decoder (decoder.h) is the only place the order of
// operations — the model itself — is written; backends never see a layer as a whole.
//
// Conventions: activations are row-major [n_rows, width]; each row is one token of one sequence.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string_view>
#include <vector>

#include <memory>

#include "executor/model/model_weights.h"
#include "executor/sampler.h"
#include "planner/plan/kv_budgets.h"
#include "planner/policy/policy.h"

namespace kvp {

// Activations of a step. Widths: kX, kXb dim; kQ, kAttn q_dim; kK, kV kv_dim; kHb, kHb2
// hidden_dim; kLogits vocab_size.
enum class Act { kX, kXb, kQ, kK, kV, kAttn, kHb, kHb2, kLogits };
inline constexpr int kNumActs = 9;

enum class Weight { kRmsAtt, kWq, kWk, kWv, kWo, kRmsFfn, kW1, kW2, kW3, kRmsFinal, kClassifier };

int act_width(const ModelConfig& config, Act act);

// [out, in] of a matrix weight; [dim, 1] for the norms.
struct WeightShape {
  int out;
  int in;
};
WeightShape weight_shape(const ModelConfig& config, Weight w);

bool is_norm(Weight w);  // kRmsAtt, kRmsFfn, kRmsFinal

// The f32 weights of norm `w` of layer `layer_idx` (ignored for kRmsFinal), [dim].
const float* norm_weight(const ModelWeights& weights, Weight w, int layer_idx);
// Matrix `w` of layer `layer_idx` (ignored for kClassifier) in its stored type.
const WeightTensor& matrix_weight(const ModelWeights& weights, Weight w, int layer_idx);
// The bias added after matrix `w` (q, k and v of a model with qkv biases), or null.
const float* matrix_bias(const ModelWeights& weights, Weight w, int layer_idx);

// The rows of one forward pass: each is one token of one sequence at one position.
// REQUIRES: within a sequence, rows come in increasing position order and continue the
// positions that sequence's cache has already seen (0 for a fresh sequence).
//
// A prompt is prefilled in one step (its rows, prompt_len 0, are the whole prompt of a fresh
// sequence) or in chunks over several steps (every row carries prompt_len, the whole prompt's
// length; the prompt is cut to budget when its last position has been run).
struct StepRows {
  std::vector<int32_t> tokens;      // [n_rows]
  std::vector<int32_t> positions;   // [n_rows]
  std::vector<int32_t> seq_idx;     // [n_rows] the sequence whose cache the row reads and extends
  std::vector<int32_t> prompt_len;  // [n_rows] > 0: a row of a chunked prompt that long
  size_t size() const { return tokens.size(); }
  void add(int32_t token, int32_t position, int32_t seq, int32_t prompt = 0) {
    tokens.push_back(token);
    positions.push_back(position);
    seq_idx.push_back(seq);
    prompt_len.push_back(prompt);
  }
};

// How a backend prefills prompts that come in chunks.
struct PrefillMode {
  // 0: a prompt's KV is held whole until its last chunk, then cut to budget (the same kept set
  // and scores as a prompt run in one step). > 0: --prefill-evict with chunks of this many rows:
  // after each chunk the prompt is cut to budget in place, from the scores of the chunks seen
  // so far, so it never holds more than budget + evict_chunk tokens.
  int evict_chunk = 0;
};

// The rows `row_idx` (increasing, each at or after its new index) of `rows`, for select_rows;
// calls move_row(from, to) for each row that moves down.
StepRows select_step_rows(const StepRows& rows, std::span<const int32_t> row_idx,
                          const std::function<void(int32_t from, int32_t to)>& move_row);

// RoPE tables as llama2.c computes them, theta_i = base^(-2i/head_dim) in f32 (divided by the
// model's frequency divisors, when it has Llama 3.x or linear scaling): cos and sin of each
// position's angles, [seq_len, head_dim / 2]. Pair i rotates elements (2i, 2i+1) or (i, i + half)
// as config.rope_style says.
void rope_tables(const ModelConfig& config, std::vector<float>* cos_table, std::vector<float>* sin_table);

// One token evicted from one head's cache (prefill cuts included).
struct EvictionRecord {
  int32_t seq_idx;
  int32_t step;         // position of the newest token when it was evicted
  int32_t layer_idx;
  int32_t kv_head_idx;
  int32_t evicted_pos;
  float score;          // its eviction key
};

class Backend {
 public:
  virtual ~Backend() = default;

  virtual std::string_view name() const = 0;
  virtual const ModelConfig& config() const = 0;

  // Drops every sequence and creates one empty cache per entry, allocated from its budgets, run
  // under `policy` (null: keep everything; the caches must then hold every position).
  virtual void reset_sequences(const std::vector<KvBudgets>& budgets,
                               std::shared_ptr<const Policy> policy = nullptr) = 0;
  // Continuous batching (kvplan serve): sequences come and go while others decode. Whether this
  // backend can open and close single sequences.
  virtual bool opens_sequences() const { return false; }
  // Drops every sequence and prepares `n_sequences` empty ones, to be opened one by one, whose
  // caches together never exceed `pool_bytes` of `dtype` elements under `policy` (null: keep all).
  // A device backend reserves the pool here (and open_sequence carves caches out of it); the host
  // backend allocates each cache when it is opened.
  virtual void reset_pool(int n_sequences, int64_t pool_bytes, KvDtype dtype, std::shared_ptr<const Policy> policy);
  // Gives sequence `seq` (< the count reset_sequences made) a fresh, empty cache of `budgets` run
  // under `policy` (null: keep everything), replacing what it held; the other sequences are
  // untouched. REQUIRES: opens_sequences().
  virtual void open_sequence(int seq, const KvBudgets& budgets, std::shared_ptr<const Policy> policy);
  // Frees sequence `seq`'s cache and any prompt scratch it holds: kv_bytes_allocated() drops by
  // its bytes at once. The sequence holds nothing until it is opened again.
  virtual void close_sequence(int seq);
  // Whether a prompt of `prompt_len` positions prefilled `chunk` rows at a time is held in a scratch
  // (KvBudgets::prefill_scratch bytes, counted in peak_kv_bytes) until it is cut.
  virtual bool holds_prompt_scratch(int prompt_len, int chunk) const {
    (void)prompt_len, (void)chunk;
    return true;
  }
  // How chunked prompts are prefilled from now on (default: held whole, then cut).
  virtual void set_prefill_mode(const PrefillMode& mode) = 0;
  // The most bytes of KV the backend has held at once since reset_sequences, the prefill's
  // scratch included (the prefill transient).
  virtual int64_t peak_kv_bytes() const = 0;
  // For benchmarks of long contexts without their prefill: every head of every sequence holds
  // min(budget, n_positions) of positions 0..n_positions-1 (the policy's sinks, then the newest),
  // with zero keys, values and scores; the next row of each sequence is at n_positions.
  virtual void fill_for_benchmark(int n_positions) = 0;
  // Appends every eviction to `log` (null: none).
  virtual void set_eviction_log(std::vector<EvictionRecord>* log) = 0;
  // KV cache bytes allocated for all sequences (the plan's prediction, exactly).
  virtual int64_t kv_bytes_allocated() const = 0;

  // Wall seconds spent in the matrix products and in attention since time_phases(true) (which
  // resets them): the measured parts of a step that kvplan bench reports next to the capacity
  // model's. Off by default (two clock reads per call); backends that do not time them report 0.
  struct PhaseTimes {
    double weights_s = 0, attention_s = 0;
  };
  virtual void time_phases(bool on) { (void)on; }
  virtual PhaseTimes phase_times() const { return {}; }

  // Keys attended by decode rows since reset_sequences, summed over layers and KV heads (the new
  // token counted), and the KV-head decode steps they were attended in: keys / head_steps is the
  // mean attended per head and step (the budget for token policies; less under DELTA's sparse
  // layers). Backends that do not count report zeros.
  struct AttendStats {
    int64_t keys = 0, head_steps = 0;
    double per_head_step() const { return head_steps > 0 ? double(keys) / double(head_steps) : 0.0; }
  };
  virtual AttendStats attend_stats() const { return {}; }

  // Starts a forward pass over `rows`; later operations act on these rows.
  virtual void begin_step(const StepRows& rows) = 0;
  // kX = token_embedding[tokens].
  virtual void embed() = 0;
  // out = w ⊙ in / sqrt(mean(in²) + eps), per row.
  virtual void rmsnorm(Act in, Act out, Weight w, int layer_idx) = 0;
  // out = in Wᵀ (+ the weight's bias, if it has one), per row.
  virtual void matmul(Weight w, int layer_idx, Act in, Act out) = 0;
  // out += in Wᵀ, per row (residual connections).
  virtual void matmul_add(Weight w, int layer_idx, Act in, Act out) = 0;
  // Rotates each head of kQ or kK by its row's position (pairs as config().rope_style says).
  virtual void rope(Act qk) = 0;
  // kAttn = causal attention of kQ over the sequence's cache plus this step's kK/kV, which are
  // then inserted into the cache under the policy (docs/METHODS.md): a sequence whose cache is empty
  // is prefilled — its rows attend each other in full and the result is cut to budget — and
  // otherwise each row attends the cached slots plus itself, updates the scores, and takes a free
  // slot or the victim's. A sequence's rows in a step must be contiguous.
  virtual void attention(int layer_idx) = 0;
  // gate = silu(gate) ⊙ up.
  virtual void swiglu(Act gate, Act up) = 0;
  // Keeps only these rows of kX, in this order, for the operations that follow (the final norm
  // and classifier run only for rows whose logits are wanted).
  virtual void select_rows(std::span<const int32_t> row_idx) = 0;
  // Copies `act` of the current rows to host memory, [n_rows, act_width].
  virtual void read(Act act, std::span<float> out) const = 0;
  virtual int n_rows() const = 0;
  // The next token of each current row from its kLogits by pick_token (executor/sampler.h), row r
  // with the draw uniforms[r]. This default reads the logits and picks on the host; a device
  // backend picks where the logits are and copies back only the tokens.
  virtual void pick_tokens(const SamplerOptions& options, std::span<const float> uniforms, std::span<int32_t> out);
};

}  // namespace kvp
