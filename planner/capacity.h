// The memory and capacity model (docs/ARCHITECTURE.md): exact KV bytes per sequence from budgets, dtype and
// slot metadata; weight and workspace bytes; the largest batch that fits a device at a context
// length; and a roofline decode time per step — full cache and plan side by side.
#pragma once

#include <string>
#include <vector>

#include "common/status.h"
#include "planner/plan/kv_budgets.h"
#include "planner/policy/delta.h"

namespace kvp {

// A model's published shape (configs/models/*.yaml).
struct ModelSpec {
  std::string name;
  int dim = 0, hidden_dim = 0, n_layers = 0, n_heads = 0, n_kv_heads = 0, vocab_size = 0, seq_len = 0;
  bool tied_embeddings = false;
  int head_size = 0;  // when the model states one; 0: dim / n_heads
  std::string source;
  int head_dim() const { return head_size > 0 ? head_size : dim / n_heads; }
  int64_t parameter_count() const;
  static Result<ModelSpec> load(const std::string& path);
};

// A device (configs/hardware/*.yaml). The optional rates describe kvplan's own kernels on it, as
// `kvplan measure-hardware` measures them; where absent, the roofline's peak_flops stands in.
struct HardwareSpec {
  std::string name;
  int64_t memory_bytes = 0;
  double bandwidth_bytes_per_s = 0;
  double peak_flops = 0;
  std::string source;
  // FLOP/s of the weight products when compute-bound (a batch of rows), per stored weight type
  // ("f32", "f16", "bf16", "q8_0", "q4_k", "q6_k"). Empty: peak_flops.
  std::vector<std::pair<std::string, double>> matmul_flops;
  // The same with the weights streamed from memory, 4 rows at a time (the CPU kernels' register
  // block): the rate of a step's first pass over each matrix; later passes (batches over 4 rows)
  // find the matrix in cache and run at matmul_flops. Empty: one roofline for the whole batch.
  std::vector<std::pair<std::string, double>> matmul_stream_flops;
  // The same at 1 row: with it, a first pass of 1..4 rows costs a + b·rows (weight decoding plus
  // the products), interpolated between the two.
  std::vector<std::pair<std::string, double>> matmul_stream1_flops;
  // Seconds each matrix product costs beyond its FLOPs at the streamed rates (its fork/join and
  // the start of its streams: what makes a small matrix slower per byte), at 4 rows and at 1 row.
  // Measured: a step's matrix products pay no separate fork/joins (sync_s).
  std::vector<std::pair<std::string, double>> matmul_stream_call_s;
  std::vector<std::pair<std::string, double>> matmul_stream1_call_s;
  // The same at 32 rows (the CPU kernels' tile of activation rows at 2048 inputs: each matrix still
  // read from memory once): with it, rows past 4 cost the slope from the 4-row to the 32-row time,
  // both streamed as a decode step streams them, instead of matmul_flops (one matrix kept in cache,
  // which on a shared VM measured 1.3-2.4e11 FLOP/s for the same q8_0 kernel within an hour).
  std::vector<std::pair<std::string, double>> matmul_stream32_flops;
  std::vector<std::pair<std::string, double>> matmul_stream32_call_s;
  double attention_flops = 0;  // decode attention, 4·head_dim FLOPs per query head and slot (0: peak_flops),
                               // 4 KV heads per fork/join (one sequence's layer)
  double attention_batch_flops = 0;  // the same at 128 KV heads per fork/join; between the two, the
                                     // rate goes log-linearly with the heads a step's layer shares out
  double evict_slot_s = 0;     // an evicting policy's bookkeeping per KV-head slot and step (scores, victim)
  double sync_s = 0;           // one fork/join of the threads that share a step's work (0: one thread)
  // The backend copies DELTA's chosen tokens into a scratch before attending them (the CPU backend;
  // the GPU kernels mask the others in place): the copy is charged as a write of their bytes.
  bool delta_copy = false;
  double matmul_flops_for(const std::string& weight_type) const;
  double matmul_stream_flops_for(const std::string& weight_type) const;  // 0 when not measured
  double matmul_stream1_flops_for(const std::string& weight_type) const;  // 0 when not measured
  double matmul_stream_call_s_for(const std::string& weight_type) const;   // 0 when not measured
  double matmul_stream1_call_s_for(const std::string& weight_type) const;  // 0 when not measured
  double matmul_stream32_flops_for(const std::string& weight_type) const;   // 0 when not measured
  double matmul_stream32_call_s_for(const std::string& weight_type) const;  // 0 when not measured
  // attention_flops for a step whose layers share `kv_heads` KV heads (batch x n_kv_heads) out.
  double attention_flops_at(double kv_heads) const;
  static Result<HardwareSpec> load(const std::string& path);
};

struct CapacityQuery {
  int context_len = 0;               // tokens per sequence
  int weight_bytes_per_param = 2;    // fp16 weights
  int64_t weight_bytes = 0;          // when known exactly (a real model file's tensors): overrides the above
  KvDtype kv_dtype = KvDtype::kF16;
  int aux_floats_per_slot = 0;       // the plan's policy (VATP: 1)
  // Budgets of the plan per layer and KV head; empty: keep `keep_ratio` of the context everywhere.
  std::vector<int32_t> plan_budgets;  // [n_layers * n_kv_heads]
  double keep_ratio = 1.0;
  int64_t runtime_reserve_bytes = int64_t{1} << 30;  // CUDA context, cuBLAS workspace, allocator slack
  int batch = 0;                     // sequences decoded together; 0: the largest batch that fits
  std::string weight_type = "f16";   // stored type of the matrices (HardwareSpec::matmul_flops)
  int prompt_len = 0;                // prompt prefilled per sequence (peak bytes); 0: context_len
  int prefill_evict_chunk = 0;       // --prefill-evict chunk; 0: the prompt held whole until cut
  // ThinK and Mustafar on the plan's kept tokens, per layer (empty: dense): its bytes are the
  // compressed layout's, and its attention reads them.
  std::vector<SlotCompression> compression;
  // DELTA's layer roles on the plan side (off when empty): its sparse layers attend, per step, the
  // chosen pages' share of their slots (delta_sparse_keys), so a step reads and multiplies less;
  // `sinks`: the token policy's, whose pages are attended too.
  DeltaParams delta;
  int sinks = 4;
};

struct CapacitySide {
  int64_t kv_bytes_per_sequence = 0;       // steady state: the budgets
  int64_t peak_kv_bytes_per_sequence = 0;  // during prefill: the budgets plus the prompt's scratch
  int64_t activation_bytes_per_sequence = 0;
  int64_t max_batch = 0;            // sequences that fit at steady state
  int64_t max_batch_at_peak = 0;    // sequences that fit when all prefill together
  int64_t batch = 0;                // the batch the step time is for (query.batch, else max_batch)
  double decode_step_s = 0;         // one token for each of `batch` sequences
  double tokens_per_s = 0;
  bool memory_bound = true;         // the weight products are bandwidth-bound (not compute-bound)
  // The step's parts: weight products, attention (with the policy's bookkeeping), fork/joins.
  double weights_s = 0, attention_s = 0, overhead_s = 0;
  // Per sequence and decode step, over every layer and KV head: the cached tokens attended (all of
  // them but under DELTA's sparse layers), the KV bytes attention reads, and the bytes DELTA's
  // sparse layers copy where the backend gathers the chosen tokens (HardwareSpec::delta_copy: a
  // write as large as their read, the re-read finding them in cache).
  double attended_slots_per_step = 0;
  double kv_bytes_read_per_step = 0;
  double kv_bytes_copied_per_step = 0;
};

struct CapacityReport {
  int64_t weight_bytes = 0;
  int64_t workspace_bytes = 0;      // runtime reserve
  CapacitySide full, plan;
};

// REQUIRES: query.context_len >= 1; plan_budgets empty or n_layers * n_kv_heads long.
CapacityReport capacity(const ModelSpec& model, const HardwareSpec& hw, const CapacityQuery& query);

// kvplan serve's admission (executor/serve/scheduler.h): requests whose cache is `steady` bytes and
// whose prompt scratch is `scratch` bytes, each admitted when the bytes in use plus its steady and
// scratch bytes fit `pool`, run at most floor((pool - scratch) / steady) at once (0 when one does
// not fit).
int64_t sequences_in_pool(int64_t pool, int64_t steady, int64_t scratch);

// The slots of keeping `keep_ratio` of `context_len` tokens: rounded to the nearest, at least one,
// at most the context (kvplan capacity --keep, and kvplan serve's {"keep": r}).
int32_t keep_ratio_budget(int context_len, double keep_ratio);

// The KV budgets of keeping `keep_ratio` of `context_len` tokens in every head (at least one).
KvBudgets keep_ratio_budgets(const ModelSpec& model, int context_len, double keep_ratio, KvDtype dtype,
                             int aux_floats_per_slot);

// Looks for NAME.yaml under configs/<kind>/ (source tree), or takes NAME as a path.
Result<std::string> find_config(const std::string& kind, const std::string& name);

}  // namespace kvp
