// The machine rates the capacity model reads, measured with kvplan's own CPU kernels: by
// `kvplan measure-hardware` for a configs/hardware file, and by `kvplan bench --probe` beside each
// group of cells, so that a prediction can be made from the rates of the minute its cells ran in (on
// a shared VM they move by 20-30% within minutes).
//
//   bandwidth              streaming read of 1 GiB split over the threads
//   matmul_flops           the weight products at 32 rows (compute-bound), one 5632 x 2048 matrix
//   matmul_stream_flops    the same at 4 rows with the weights streamed from memory (a step's first
//                          pass), and matmul_stream_call_s: a call's cost beyond its FLOPs at that
//                          rate (the fork/join, the streams' start), fitted through two matrix shapes
//                          (256 x 2048 and 5632 x 2048, each streamed over 1 GiB of copies)
//   matmul_stream1_flops   ... and at 1 row, with matmul_stream1_call_s
//   matmul_stream32_flops  ... and at 32 rows, with matmul_stream32_call_s
//   attention_flops        one layer's decode attention (layer_step, full cache) over 4 KV heads of
//                          4129 slots per fork/join (a 4096-token context's full cache as kvplan bench
//                          holds it), head_dim 64, 8 query heads per KV head
//   attention_batch_flops  the same with 128 KV heads per fork/join (a batch of 32 such sequences)
//   evict_slot_s           what VATP adds per KV-head slot and step (score update, victim scan)
//   sync_s                 one fork/join of the thread pool
#pragma once

#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/thread_pool.h"
#include "executor/model/weight_tensor.h"
#include "planner/capacity.h"

namespace kvp::cli {

// Seconds on the steady clock, for timing a measurement.
double now_s();

// Weight products streamed from memory: FLOP/s, and each call's fixed cost beyond them.
struct StreamRate {
  double flops = 0, call_s = 0;
};

// A weight type's matrix-product rates and the attention rates, as the hardware file holds them.
struct ProbedRates {
  std::string type;
  double matmul_flops = 0;
  StreamRate stream1, stream4, stream32;  // 1, 4 and 32 rows (stream32 0: not measured)
  double attention_flops = 0, attention_batch_flops = 0, evict_slot_s = 0;
};

// Measures on `pool`'s threads. Every figure is the best of `runs` runs of at least `min_s` each
// (the statistic kvplan bench reports per cell). Keeps its buffers (1 GiB of weight copies, a
// 270 MB attention cache) between calls, so a probe repeated beside a benchmark costs its runs and
// not page faults.
class HardwareProbe {
 public:
  // `stream_bytes`: the buffer the bandwidth and the streamed weight products go through (1 GiB, far
  // past any cache; a smaller one measures the caches instead, which only a test wants).
  HardwareProbe(ThreadPool& pool, double min_s, int runs, int64_t stream_bytes = int64_t{1} << 30);
  ~HardwareProbe();

  double read_bandwidth();
  double matmul_flops(WeightType type);  // 32 rows, one matrix in cache
  StreamRate stream_rate(WeightType type, int rows);  // streamed from memory
  struct Attention {
    double flops, evict_slot_s;
  };
  Attention attention(int heads_per_call);  // 4129 slots, head_dim 64, group 8
  double sync_seconds();

  // The rates capacity reads for `type` (weight products) and attention, in one go.
  ProbedRates rates(WeightType type);

 private:
  struct Buffers;
  double matmul_seconds(WeightType type, int batch, int64_t rows, int n_mats);
  template <typename F>
  double best_time(F&& once);

  ThreadPool& pool_;
  double min_s_;
  int runs_;
  int64_t stream_bytes_;
  std::unique_ptr<Buffers> buffers_;
};

// Each rate's best (highest FLOP/s, lowest seconds per slot) over several probes of one type; a
// call cost goes with the streamed rate it was fitted with.
ProbedRates best_rates(const std::vector<ProbedRates>& probes);

// As bench.json holds them (the hardware file's key for each rate), and back; reading throws
// nlohmann's exceptions on a missing field (capacity --measured names the file and the cell).
nlohmann::json probed_rates_json(const ProbedRates& r);
ProbedRates probed_rates_from_json(const nlohmann::json& j);

// `hw` with the probed rates in place of its own (for the probe's weight type).
HardwareSpec with_probed_rates(HardwareSpec hw, const ProbedRates& r);

}  // namespace kvp::cli
