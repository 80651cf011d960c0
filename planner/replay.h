// Open-loop replay (docs/ARCHITECTURE.md): a policy at given per-layer and per-head budgets over a recorded
// trace, through the same planner/policy code the executor runs (layer_step, cut_prefill), with
// the recorded queries. Measures what each configuration does to attention, without the model.
//
// The trace is streamed: each (sequence, layer) is read from the mapped files, its full-cache
// outputs computed, and every configuration of a batch replayed over it before the next is read, so
// memory is a few layers' worth per thread whatever the number of sequences (a small trace's
// full-cache outputs, 64 MiB at most, are kept across runs). A trace recorded
// with a query stride is replayed at every position (each token enters the cache and evicts), but
// attention is computed, scored and measured only at the positions whose query was recorded. Of a
// trace recorded with a subset of layers, only those layers are replayed; the per-layer results of
// the others are interpolated linearly in the layer index between the nearest recorded layers.
#pragma once

#include <functional>
#include <string>
#include <memory>
#include <vector>

#include "planner/policy/kv_compression.h"
#include "planner/policy/policy.h"
#include "traces/trace.h"

namespace kvp {

// Each decode step's residual energy, kept when a configuration asks for it (the study of where
// along the sequence replay and closed loop disagree, issue 18): [sequence][layer][measured step],
// ‖W_o (o − ô)‖² / ‖x‖² at each recorded query past the prompt, in position order. Filled by the
// run (an unrecorded layer's stays empty); its memory is sequences × layers × steps floats.
struct StepEnergies {
  std::vector<std::vector<std::vector<float>>> values;
};

struct ReplayConfig {
  std::shared_ptr<const Policy> policy;
  std::vector<std::vector<int32_t>> budgets;  // [n_layers][n_kv_heads] slots
  bool head_energy = false;  // also measure each KV head's own residual energy (head_resid_energy)
  // --prefill-evict with chunks of this many prompt rows (0: the prompt held whole, then cut), as
  // the executor's prefill_row does it.
  int prefill_evict_chunk = 0;
  // ThinK and Mustafar per layer (empty: dense), applied to the kept tokens as the executor does.
  std::vector<SlotCompression> compression;
  std::shared_ptr<StepEnergies> step_energies;  // set: each step's energy is kept there (not memoised)
};

struct ReplayResult {
  // Per layer and KV head, means over decode steps, sequences and the group's query heads.
  std::vector<std::vector<double>> rel_error;      // ‖o − ô‖ / ‖o‖, o the full-cache output
  std::vector<std::vector<double>> retained_mass;  // full-cache attention mass on the kept tokens
  // Per layer: mean over decode steps of ‖W_o (o − ô)‖² / ‖x‖², all heads of the layer together
  // (the energy the error injects into the residual stream x entering the layer).
  std::vector<double> resid_energy;
  // With ReplayConfig::head_energy, per layer and KV head: the same measure for the head's own error
  // alone, ‖W_o,h (o_h − ô_h)‖² / ‖x‖² with W_o,h the columns of its query heads (the cross terms
  // between heads, which average out, left out). Empty otherwise.
  std::vector<std::vector<double>> head_resid_energy;
  // Per layer: mean keys attended per KV head and decode step, the new token included (the budget
  // for a token policy; DELTA's sparse layers attend fewer): the bytes a step reads.
  std::vector<double> attended;
  std::vector<int> measured_layers;  // the layers replayed; the others are interpolated
  int64_t head_steps = 0;  // query-head decode steps replayed (at recorded queries, recorded layers)
  double seconds = 0;      // wall time of the run (of the whole batch for run_batch)
  double cpu_seconds = 0;  // worker time spent on this configuration, summed over threads

  double mean_rel_error() const;
  double mean_retained_mass() const;
  double total_resid_energy() const;  // Σ over layers
};

// Called after every decode step with a head's kept positions (in slot order).
using KeptFn = std::function<void(int seq, int layer, int kv_head, int32_t step, std::span<const int32_t> kept)>;

// Called as (sequence, layer) tasks complete: done of total.
using ReplayProgress = std::function<void(int64_t done, int64_t total)>;

// A trace recorded with a subset of layers replays DELTA only when every selection layer is among
// them (a sparse layer attends the pages its selection layer chose at the same step).
Status check_delta_layers(const DeltaParams& delta, const std::vector<int>& recorded, const std::string& trace_path);

class ReplayEngine {
 public:
  // Replays `trace` (which must outlive the engine) with `threads` workers.
  static Result<std::unique_ptr<ReplayEngine>> create(const Trace& trace, int threads);

  ReplayResult run(const ReplayConfig& config, const KeptFn& on_step = {}) const;
  // Several configurations in one pass over the trace: each (sequence, layer) is read once, and
  // the prompt is prefilled once for consecutive configurations whose policies differ at most in
  // sinks and recent (the prefill does not depend on them). Results equal run() of each.
  std::vector<ReplayResult> run_batch(const std::vector<ReplayConfig>& configs) const;

  // Forgets the layer configurations replayed so far (the memo below; the kept full-cache outputs
  // stay), so that the next run replays every layer again: what a benchmark of the replay times.
  void forget_replayed() const { memo_.reset(); }

  // Reports the progress of every later run.
  void set_progress(ReplayProgress progress) { progress_ = std::move(progress); }

  const TraceModelShape& model() const { return model_; }
  const std::vector<int>& measured_layers() const { return trace_->layers(); }
  int n_sequences() const { return trace_->n_sequences(); }
  int64_t decode_steps() const;  // per KV head, over all sequences, at the recorded queries
  int32_t max_length() const;     // the longest sequence

 private:
  ReplayEngine() = default;
  struct Totals;  // one configuration's sums over a (sequence, layer)
  // `delta_rows` [config][decode step]: the DELTA pages chosen at each step of sequence `s`, written
  // by its selection layers and read by the sparse layers after them (the layers of a sequence
  // replay in order when a configuration has DELTA roles).
  void replay(int s, int l, const std::vector<ReplayConfig>& configs, std::vector<Totals>& totals,
              const KeptFn& on_step, std::vector<std::vector<DeltaRow>>& delta_rows) const;
  std::vector<ReplayResult> run_configs(const std::vector<ReplayConfig>& configs, const KeptFn& on_step) const;

  // The full-cache outputs of each (sequence, layer) — what every configuration is measured
  // against — kept across runs when all of them fit kFullCacheBytes (a sweep replays one trace in
  // many batches), else recomputed per run. [sequence * n_layers + layer]; filled by the one task
  // that replays the pair.
  struct FullOutputs {
    std::vector<float> o, log_z, norm;
    bool ready = false;
  };
  static constexpr int64_t kFullCacheBytes = int64_t{64} << 20;
  mutable std::vector<FullOutputs> full_outputs_;
  bool keep_full_outputs_ = false;
  // Each (sequence, layer)'s sums per layer configuration replayed so far (policy and its settings,
  // the layer's budgets and compression, the prefill mode): open loop, a layer's replay depends on
  // nothing else, so a later configuration that gives the layer the same (a greedy plan's layer at a
  // budget the uniform replays already ran) takes them instead of replaying. Not under DELTA (a
  // sparse layer depends on its selection layer) nor with a KeptFn.
  struct LayerMemo;
  mutable std::shared_ptr<LayerMemo> memo_;

  const Trace* trace_ = nullptr;
  ReplayProgress progress_;
  TraceModelShape model_;
  int threads_ = 1;
};

}  // namespace kvp
