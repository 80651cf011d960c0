// kvplan measure-hardware: the rates the capacity model needs for this machine's CPU backend,
// measured with kvplan's own kernels, printed as the lines of a configs/hardware file.
//
//   bandwidth_bytes_per_s  streaming read of 1 GiB split over the threads (what a decode step does to
//                          the weights and the caches)
//   matmul_flops           the weight products at 32 rows (compute-bound), a 5632 x 2048 matrix per type
//   matmul_stream_flops    the same at 4 rows with the weights streamed from memory (a step's first
//                          pass), and matmul_stream_call_s: a call's cost beyond its FLOPs at that
//                          rate (the fork/join, the streams' start), fitted through two matrix shapes
//                          (256 x 2048 and 5632 x 2048, each streamed over 1 GiB of copies)
//   matmul_stream1_flops   ... and at 1 row, with matmul_stream1_call_s
//   attention_flops        one layer's decode attention (layer_step, full cache) over 4 KV heads of
//                          4129 slots per fork/join (a 4096-token context's full cache as kvplan bench
//                          holds it), head_dim 64, 8 query heads per KV head
//   attention_batch_flops  the same with 128 KV heads per fork/join (a batch of 32 such sequences)
// (At exactly 4096 slots a head's rows lie 16 KiB apart, on the same cache sets, and attention ran
// 1.8x slower on an EPYC VM: docs/PERFORMANCE.md. 4129 is the shape the full caches of kvplan bench
// have.)
//   evict_slot_s           what VATP adds per KV-head slot and step (score update, victim scan)
//   sync_s                 one fork/join of the thread pool
#include <Eigen/Core>
#include <chrono>
#include <cstdio>
#include <random>

#include "common/thread_pool.h"
#include "executor/cpu/dot_kernels.h"
#include "executor/kv_cache.h"
#include "executor/model/weight_tensor.h"
#include "planner/policy/layer_step.h"
#include "planner/policy/policy.h"
#include "planner/policy/slot_attention.h"
#include "tools/kvplan/command.h"

namespace kvp::cli {
namespace {

struct MeasureFlags {
  int threads = 2;
  double seconds = 0.5;  // per measurement, at least
};

double now_s() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

// Seconds per call of `once`: the mean over a run of at least `min_s` (at least twice), best of 3
// runs — the statistic kvplan bench reports, so rates and measured cells are compared alike on a
// shared machine whose speed comes and goes.
template <typename F>
double best_time(double min_s, F&& once) {
  double best = 1e30;
  for (int run = 0; run < 3; ++run) {
    const double t0 = now_s();
    int calls = 0;
    while (calls < 2 || now_s() - t0 < min_s) {
      once();
      ++calls;
    }
    best = std::min(best, (now_s() - t0) / calls);
  }
  return best;
}

// Each thread sums its share with Eigen's vectorised reduction (several packet accumulators): a
// single 16-lane accumulator, as this once was, is bound by the add's latency below what a core
// streams (45-56 against 70+ GB/s on an EPYC VM whose decode read the weights faster than that).
double read_bandwidth(ThreadPool& pool, double min_s) {
  const size_t n = size_t{1} << 28;  // 1 GiB of floats
  std::vector<float> buf(n, 1.0f);
  std::vector<double> sums(pool.n_threads());
  const double t = best_time(min_s, [&] {
    pool.run([&](int part, int parts) {
      const RowRange r = split_rows(static_cast<int64_t>(n), part, parts, 1024);
      sums[part] = Eigen::Map<const Eigen::ArrayXf>(buf.data() + r.begin, r.end - r.begin).sum();
    });
  });
  return double(n * sizeof(float)) / t;
}

// Seconds per product of a random `rows` x 2048 matrix of `type` with `batch` rows, the output rows
// split over the threads as the CPU backend splits them, going through `n_mats` copies in turn: one
// copy stays in the L3 (the in-cache rate); copies of 1 GiB in all stream from memory.
double matmul_seconds(ThreadPool& pool, WeightType type, int batch, int64_t rows, int n_mats, double min_s) {
  const int64_t cols = 2048;
  std::mt19937 rng(1);
  std::normal_distribution<float> dist(0.0f, 0.02f);
  std::vector<float> w(static_cast<size_t>(rows * cols));
  for (float& v : w) v = dist(rng);
  const std::vector<std::byte> one = quantize(w, rows, cols, type);
  std::vector<std::byte> all(one.size() * n_mats);
  for (int m = 0; m < n_mats; ++m) std::copy(one.begin(), one.end(), all.begin() + m * one.size());
  std::vector<float> x(static_cast<size_t>(batch) * cols), y(static_cast<size_t>(batch) * rows);
  for (float& v : x) v = dist(rng);
  const double s = best_time(min_s, [&] {
    for (int m = 0; m < n_mats; ++m) {
      const WeightTensor t{.type = type, .data = all.data() + m * one.size(), .rows = rows, .cols = cols};
      const MatmulArgs args{
          .w = &t, .x = x.data(), .x_stride = size_t(cols), .y = y.data(), .y_stride = size_t(rows), .n_rows = batch};
      pool.run([&](int part, int parts) {
        const RowRange r = split_rows(rows, part, parts, 16);
        matmul_range(args, r.begin, r.end);
      });
    }
  });
  return s / n_mats;
}

// Streamed from memory: FLOP/s and seconds per call of t = call_s + FLOPs / rate, through a small and
// a large matrix (each call's fixed cost shows in the small one).
struct StreamRate {
  double flops, call_s;
};

StreamRate stream_rate(ThreadPool& pool, WeightType type, int batch, double min_s) {
  const int64_t small_rows = 256, large_rows = 5632;
  auto copies = [&](int64_t rows) {
    return static_cast<int>(std::max<int64_t>(2, (int64_t{1} << 30) / static_cast<int64_t>(rows * row_bytes(type, 2048))));
  };
  const double t_small = matmul_seconds(pool, type, batch, small_rows, copies(small_rows), min_s);
  const double t_large = matmul_seconds(pool, type, batch, large_rows, copies(large_rows), min_s);
  const double f_small = 2.0 * small_rows * 2048 * batch, f_large = 2.0 * large_rows * 2048 * batch;
  if (t_large > t_small) {
    const double rate = (f_large - f_small) / (t_large - t_small), call_s = t_small - f_small / rate;
    if (call_s >= 0) return {rate, call_s};
  }
  return {f_large / t_large, 0.0};  // the machine's noise hid the fixed cost
}

// Decode attention as the CPU backend runs it: layer_step over 128 KV heads of `slots` slots (head_dim
// 64, 8 query heads each; 268 MB of cache at 4096, past the L3, streamed from memory as a long context's is),
// `per_call` of them per fork/join shared over the threads (4: one sequence's layer; 128: 32
// sequences'), with policy full (attention alone) and vatp (its bookkeeping too), alternately so both
// see the same machine. Seconds per call of each: the means over a run of at least `min_s`, best of
// 3 runs.
std::pair<double, double> layer_attention_seconds(ThreadPool& pool, int per_call, int slots, double min_s) {
  const int hd = 64, group = 8, heads = 128, layers = heads / per_call;
  auto full = make_policy("full", published_defaults("full", slots));
  auto vatp = make_policy("vatp", published_defaults("vatp", slots));
  KVP_CHECK(full.ok() && vatp.ok());
  std::mt19937 rng(2);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  // The executor's own cache (allocation, alignment, huge pages, layout): one layer of `heads` KV
  // heads, with VATP's value norm per slot (the full policy ignores it). A cache of malloc'ed
  // vectors measured 2.4x slower than kvplan bench's caches on the same shape.
  KvBudgets budgets = KvBudgets::uniform(1, heads, hd, slots, KvDtype::kF32);
  budgets.aux_floats_per_slot = 1;
  KvCache kv(budgets);
  std::vector<HeadSlots> cache;
  for (int h = 0; h < heads; ++h) {
    const HeadSlots c = kv.head(0, h);
    for (size_t e = 0; e < size_t(hd) * slots; ++e) c.k[e] = dist(rng), c.v[e] = dist(rng);
    for (int j = 0; j < slots; ++j) c.score[j] = 0.0f, c.aux[j] = 1.0f, c.pos[j] = j;
    cache.push_back(c);
  }
  std::vector<float> q(size_t(heads) * group * hd), k(size_t(heads) * hd), v(k.size());  // per head
  for (auto* a : {&q, &k, &v}) {
    for (float& e : *a) e = dist(rng);
  }
  std::vector<StepScratch> scratch;
  std::vector<std::vector<float>> out(pool.n_threads(), std::vector<float>(size_t(per_call) * group * hd));
  for (int t = 0; t < pool.n_threads(); ++t) scratch.emplace_back(slots);
  int32_t pos = slots;
  // All layers once under `policy`; seconds.
  auto sweep = [&](const Policy& policy) {
    const bool aux = policy.aux_floats_per_slot() > 0;
    const double t0 = now_s();
    for (int l = 0; l < layers; ++l) {
      ++pos;
      pool.run([&](int part, int parts) {
        for (int h = per_call * l + part; h < per_call * (l + 1); h += parts) {
          HeadSlots view = cache[h];
          *view.n_used = policy.evicts() ? slots : slots - 1;  // full: a free slot; vatp: evict one
          if (!aux) view.aux = nullptr;
          layer_step(policy, std::span(&view, 1),
                     TokenRow{.q = q.data() + size_t(h) * group * hd,
                              .k = k.data() + size_t(h) * hd,
                              .v = v.data() + size_t(h) * hd,
                              .pos = pos,
                              .layer_idx = 0,
                              .prompt_len = 0,
                              .kv_head_first = h},
                     group, out[part].data() + size_t(h % per_call) * group * hd, nullptr, scratch[part], {});
        }
      });
    }
    return now_s() - t0;
  };
  std::pair<double, double> best{1e30, 1e30};
  for (int run = 0; run < 3; ++run) {
    double t_full = 0, t_vatp = 0, t0 = now_s();
    int calls = 0;
    while (calls < 2 || now_s() - t0 < min_s) {
      t_full += sweep(**full);
      t_vatp += sweep(**vatp);
      ++calls;
    }
    if (t_full + t_vatp < (best.first + best.second) * calls * layers) {
      best = {t_full / calls / layers, t_vatp / calls / layers};
    }
  }
  return best;
}

double sync_seconds(ThreadPool& pool, double min_s) {
  const int reps = 1000;
  const double t = best_time(min_s, [&] {
    for (int i = 0; i < reps; ++i) pool.run([](int, int) {});
  });
  return pool.n_threads() > 1 ? t / reps : 0.0;
}

Status run_measure(const MeasureFlags& flags) {
  if (flags.threads < 1) return make_error("--threads: expected at least 1, found {}", flags.threads);
  ThreadPool pool(flags.threads);
  std::fprintf(stderr, "measure-hardware: read bandwidth (1 GiB, %d threads)\n", flags.threads);
  const double bw = read_bandwidth(pool, flags.seconds);
  std::printf("bandwidth_bytes_per_s: %.4g\n", bw);
  std::printf("matmul_flops:\n");
  for (WeightType type : {WeightType::kF32, WeightType::kF16, WeightType::kBF16, WeightType::kQ8_0}) {
    std::fprintf(stderr, "measure-hardware: %s weight products (5632 x 2048, 32 rows)\n",
                 std::string(weight_type_name(type)).c_str());
    const double t = matmul_seconds(pool, type, 32, 5632, 1, flags.seconds);
    std::printf("  %s: %.4g\n", std::string(weight_type_name(type)).c_str(), 2.0 * 5632 * 2048 * 32 / t);
    std::fflush(stdout);
  }
  for (int rows : {1, 4}) {
    std::vector<std::pair<std::string, StreamRate>> rates;
    for (WeightType type : {WeightType::kF32, WeightType::kF16, WeightType::kBF16, WeightType::kQ8_0}) {
      std::fprintf(stderr,
                   "measure-hardware: %s weight products streamed from memory (256 x 2048 and 5632 x 2048, 1 GiB of "
                   "copies each, %d rows)\n",
                   std::string(weight_type_name(type)).c_str(), rows);
      rates.emplace_back(std::string(weight_type_name(type)), stream_rate(pool, type, rows, flags.seconds));
    }
    std::printf("%s:\n", rows == 1 ? "matmul_stream1_flops" : "matmul_stream_flops");
    for (const auto& [type, r] : rates) std::printf("  %s: %.4g\n", type.c_str(), r.flops);
    std::printf("%s:\n", rows == 1 ? "matmul_stream1_call_s" : "matmul_stream_call_s");
    for (const auto& [type, r] : rates) std::printf("  %s: %.4g\n", type.c_str(), r.call_s);
    std::fflush(stdout);
  }
  const int slots = 4129;
  auto flops_per_head = [](int n) { return 4.0 * 64 * 8 * n; };
  std::fprintf(stderr, "measure-hardware: decode attention (4 KV heads x %d slots per fork/join, head_dim 64, group 8)\n",
               slots);
  const auto [full, vatp] = layer_attention_seconds(pool, 4, slots, flags.seconds);
  std::printf("attention_flops: %.4g\n", 4 * flops_per_head(slots) / full);
  std::printf("evict_slot_s: %.4g\n", std::max(0.0, vatp - full) / (4.0 * slots));
  std::fprintf(stderr, "measure-hardware: decode attention (128 KV heads x %d slots per fork/join)\n", slots);
  const double batch_full = layer_attention_seconds(pool, 128, slots, flags.seconds).first;
  std::printf("attention_batch_flops: %.4g\n", 128 * flops_per_head(slots) / batch_full);

  std::printf("sync_s: %.4g\n", sync_seconds(pool, flags.seconds));
  std::printf("delta_copy: true  # the CPU backend gathers DELTA's chosen tokens before attending them\n");
  return ok_status();
}

}  // namespace

Command add_measure_hardware_command(CLI::App& app) {
  auto flags = std::make_shared<MeasureFlags>();
  CLI::App* sub = app.add_subcommand(
      "measure-hardware",
      "Measure this machine's rates for the capacity model with kvplan's CPU kernels; prints configs/hardware lines");
  sub->add_option("--threads", flags->threads, "Threads, as kvplan run --threads (default 2)");
  sub->add_option("--seconds", flags->seconds, "Least time per measurement (default 0.5)");
  return {sub, [flags] { return run_measure(*flags); }};
}

}  // namespace kvp::cli
