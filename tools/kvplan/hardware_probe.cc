#include "tools/kvplan/hardware_probe.h"

#include <Eigen/Core>
#include <algorithm>
#include <chrono>
#include <cstring>
#include <random>
#include <tuple>
#include <utility>

#include "executor/cpu/dot_kernels.h"
#include "executor/kv_cache.h"
#include "planner/policy/layer_step.h"
#include "planner/policy/policy.h"
#include "planner/policy/slot_attention.h"

namespace kvp::cli {

double now_s() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

namespace {

constexpr int kSlots = 4129, kHeadDim = 64, kGroup = 8, kHeads = 128;

}  // namespace

// Kept between measurements: the streamed weights' copies and the attention's cache and operands.
struct HardwareProbe::Buffers {
  std::vector<std::byte> copies;  // stream_bytes_ at the most, reused by every matrix shape and type
  std::unique_ptr<KvCache> kv;    // one layer of kHeads KV heads
  std::vector<HeadSlots> cache;
  std::vector<float> q, k, v;
  std::vector<StepScratch> scratch;
  std::vector<std::vector<float>> out;
  int32_t pos = kSlots;
};

HardwareProbe::HardwareProbe(ThreadPool& pool, double min_s, int runs, int64_t stream_bytes)
    : pool_(pool),
      min_s_(min_s),
      runs_(std::max(1, runs)),
      stream_bytes_(stream_bytes),
      buffers_(std::make_unique<Buffers>()) {}

HardwareProbe::~HardwareProbe() = default;

// Seconds per call of `once`: the mean over a run of at least min_s_ (at least twice), best of
// runs_ runs.
template <typename F>
double HardwareProbe::best_time(F&& once) {
  double best = 1e30;
  for (int run = 0; run < runs_; ++run) {
    const double t0 = now_s();
    int calls = 0;
    while (calls < 2 || now_s() - t0 < min_s_) {
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
double HardwareProbe::read_bandwidth() {
  const size_t n = size_t(stream_bytes_) / sizeof(float);
  std::vector<float> buf(n, 1.0f);
  std::vector<double> sums(pool_.n_threads());
  const double t = best_time([&] {
    pool_.run([&](int part, int parts) {
      const RowRange r = split_rows(static_cast<int64_t>(n), part, parts, 1024);
      sums[part] = Eigen::Map<const Eigen::ArrayXf>(buf.data() + r.begin, r.end - r.begin).sum();
    });
  });
  return double(n * sizeof(float)) / t;
}

// Seconds per product of a random `rows` x 2048 matrix of `type` with `batch` rows, the output rows
// split over the threads as the CPU backend splits them, going through `n_mats` copies in turn: one
// copy stays in the L3 (the in-cache rate); copies of 1 GiB in all stream from memory.
double HardwareProbe::matmul_seconds(WeightType type, int batch, int64_t rows, int n_mats) {
  const int64_t cols = 2048;
  std::mt19937 rng(1);
  std::normal_distribution<float> dist(0.0f, 0.02f);
  std::vector<float> w(static_cast<size_t>(rows * cols));
  for (float& v : w) v = dist(rng);
  const std::vector<std::byte> one = quantize(w, rows, cols, type);
  std::vector<std::byte>& all = buffers_->copies;
  if (all.size() < one.size() * n_mats) all.resize(one.size() * n_mats);
  for (int m = 0; m < n_mats; ++m) std::memcpy(all.data() + m * one.size(), one.data(), one.size());
  std::vector<float> x(static_cast<size_t>(batch) * cols), y(static_cast<size_t>(batch) * rows);
  for (float& v : x) v = dist(rng);
  const double s = best_time([&] {
    for (int m = 0; m < n_mats; ++m) {
      const WeightTensor t{.type = type, .data = all.data() + m * one.size(), .rows = rows, .cols = cols};
      const MatmulArgs args{
          .w = &t, .x = x.data(), .x_stride = size_t(cols), .y = y.data(), .y_stride = size_t(rows), .n_rows = batch};
      pool_.run([&](int part, int parts) {
        const RowRange r = split_rows(rows, part, parts, 16);
        matmul_range(args, r.begin, r.end);
      });
    }
  });
  return s / n_mats;
}

double HardwareProbe::matmul_flops(WeightType type) {
  return 2.0 * 5632 * 2048 * 32 / matmul_seconds(type, 32, 5632, 1);
}

// Streamed from memory: FLOP/s and seconds per call of t = call_s + FLOPs / rate, through a small and
// a large matrix (each call's fixed cost shows in the small one).
StreamRate HardwareProbe::stream_rate(WeightType type, int batch) {
  const int64_t small_rows = 256, large_rows = 5632;
  auto copies = [&](int64_t rows) {
    const int64_t bytes = static_cast<int64_t>(rows * row_bytes(type, 2048));
    return static_cast<int>(std::max<int64_t>(2, stream_bytes_ / bytes));
  };
  const double t_small = matmul_seconds(type, batch, small_rows, copies(small_rows));
  const double t_large = matmul_seconds(type, batch, large_rows, copies(large_rows));
  const double f_small = 2.0 * small_rows * 2048 * batch, f_large = 2.0 * large_rows * 2048 * batch;
  if (t_large > t_small) {
    const double rate = (f_large - f_small) / (t_large - t_small), call_s = t_small - f_small / rate;
    if (call_s >= 0) return {rate, call_s};
  }
  return {f_large / t_large, 0.0};  // the machine's noise hid the fixed cost
}

// Decode attention as the CPU backend runs it: layer_step over 128 KV heads of 4129 slots (head_dim
// 64, 8 query heads each; 268 MB of cache, past the L3, streamed from memory as a long context's is),
// `per_call` of them per fork/join shared over the threads (4: one sequence's layer; 128: 32
// sequences'), with policy full (attention alone) and vatp (its bookkeeping too), alternately so both
// see the same machine. FLOP/s of the full policy, and VATP's extra seconds per KV-head slot.
HardwareProbe::Attention HardwareProbe::attention(int per_call) {
  const int layers = kHeads / per_call;
  auto full = make_policy("full", published_defaults("full", kSlots));
  auto vatp = make_policy("vatp", published_defaults("vatp", kSlots));
  KVP_CHECK(full.ok() && vatp.ok());
  Buffers& b = *buffers_;
  if (!b.kv) {
    std::mt19937 rng(2);
    std::normal_distribution<float> dist(0.0f, 1.0f);
    // The executor's own cache (allocation, alignment, huge pages, layout): one layer of kHeads KV
    // heads, with VATP's value norm per slot (the full policy ignores it). A cache of malloc'ed
    // vectors measured 2.4x slower than kvplan bench's caches on the same shape.
    KvBudgets budgets = KvBudgets::uniform(1, kHeads, kHeadDim, kSlots, KvDtype::kF32);
    budgets.aux_floats_per_slot = 1;
    b.kv = std::make_unique<KvCache>(budgets);
    for (int h = 0; h < kHeads; ++h) {
      const HeadSlots c = b.kv->head(0, h);
      for (size_t e = 0; e < size_t(kHeadDim) * kSlots; ++e) c.k[e] = dist(rng), c.v[e] = dist(rng);
      for (int j = 0; j < kSlots; ++j) c.score[j] = 0.0f, c.aux[j] = 1.0f, c.pos[j] = j;
      b.cache.push_back(c);
    }
    b.q.resize(size_t(kHeads) * kGroup * kHeadDim);
    b.k.resize(size_t(kHeads) * kHeadDim);
    b.v.resize(b.k.size());
    for (auto* a : {&b.q, &b.k, &b.v}) {
      for (float& e : *a) e = dist(rng);
    }
    for (int t = 0; t < pool_.n_threads(); ++t) b.scratch.emplace_back(kSlots);
  }
  b.out.assign(pool_.n_threads(), std::vector<float>(size_t(per_call) * kGroup * kHeadDim));
  // All layers once under `policy`; seconds.
  auto sweep = [&](const Policy& policy) {
    const bool aux = policy.aux_floats_per_slot() > 0;
    const double t0 = now_s();
    for (int l = 0; l < layers; ++l) {
      ++b.pos;
      pool_.run([&](int part, int parts) {
        for (int h = per_call * l + part; h < per_call * (l + 1); h += parts) {
          HeadSlots view = b.cache[h];
          *view.n_used = policy.evicts() ? kSlots : kSlots - 1;  // full: a free slot; vatp: evict one
          if (!aux) view.aux = nullptr;
          layer_step(policy, std::span(&view, 1),
                     TokenRow{.q = b.q.data() + size_t(h) * kGroup * kHeadDim,
                              .k = b.k.data() + size_t(h) * kHeadDim,
                              .v = b.v.data() + size_t(h) * kHeadDim,
                              .pos = b.pos,
                              .layer_idx = 0,
                              .prompt_len = 0,
                              .kv_head_first = h},
                     kGroup, b.out[part].data() + size_t(h % per_call) * kGroup * kHeadDim, nullptr, b.scratch[part],
                     {});
        }
      });
    }
    return now_s() - t0;
  };
  std::pair<double, double> best{1e30, 1e30};
  for (int run = 0; run < runs_; ++run) {
    double t_full = 0, t_vatp = 0, t0 = now_s();
    int calls = 0;
    while (calls < 2 || now_s() - t0 < min_s_) {
      t_full += sweep(**full);
      t_vatp += sweep(**vatp);
      ++calls;
    }
    if (t_full + t_vatp < (best.first + best.second) * calls * layers) {
      best = {t_full / calls / layers, t_vatp / calls / layers};
    }
  }
  const double flops_per_head = 4.0 * kHeadDim * kGroup * kSlots;
  return {.flops = per_call * flops_per_head / best.first,
          .evict_slot_s = std::max(0.0, best.second - best.first) / (double(per_call) * kSlots)};
}

double HardwareProbe::sync_seconds() {
  const int reps = 1000;
  const double t = best_time([&] {
    for (int i = 0; i < reps; ++i) pool_.run([](int, int) {});
  });
  return pool_.n_threads() > 1 ? t / reps : 0.0;
}

ProbedRates HardwareProbe::rates(WeightType type) {
  ProbedRates r{.type = std::string(weight_type_name(type))};
  r.matmul_flops = matmul_flops(type);
  r.stream4 = stream_rate(type, 4);
  r.stream1 = stream_rate(type, 1);
  r.stream32 = stream_rate(type, 32);
  const Attention one = attention(4);
  r.attention_flops = one.flops, r.evict_slot_s = one.evict_slot_s;
  r.attention_batch_flops = attention(kHeads).flops;
  return r;
}

namespace {

void set_rate(std::vector<std::pair<std::string, double>>* rates, const std::string& type, double value) {
  for (auto& [t, v] : *rates) {
    if (t == type) {
      v = value;
      return;
    }
  }
  rates->emplace_back(type, value);
}

}  // namespace

ProbedRates best_rates(const std::vector<ProbedRates>& probes) {
  KVP_CHECK(!probes.empty());
  ProbedRates best = probes.front();
  for (const ProbedRates& p : probes) {
    KVP_CHECK(p.type == best.type, "probes of {} and {} weights", p.type, best.type);
    best.matmul_flops = std::max(best.matmul_flops, p.matmul_flops);
    for (auto [mine, theirs] : {std::pair{&best.stream1, &p.stream1}, {&best.stream4, &p.stream4},
                                {&best.stream32, &p.stream32}}) {
      if (theirs->flops > mine->flops) *mine = *theirs;
    }
    best.attention_flops = std::max(best.attention_flops, p.attention_flops);
    best.attention_batch_flops = std::max(best.attention_batch_flops, p.attention_batch_flops);
    best.evict_slot_s = std::min(best.evict_slot_s, p.evict_slot_s);
  }
  return best;
}

namespace {

// The streamed rates with the hardware file's key of each (its _flops and _call_s fields).
template <typename Rates, typename F>
void each_stream(Rates& r, F&& f) {
  f("matmul_stream1", r.stream1);
  f("matmul_stream", r.stream4);
  f("matmul_stream32", r.stream32);
}

}  // namespace

nlohmann::json probed_rates_json(const ProbedRates& r) {
  nlohmann::json j = {{"type", r.type},
                      {"matmul_flops", r.matmul_flops},
                      {"attention_flops", r.attention_flops},
                      {"attention_batch_flops", r.attention_batch_flops},
                      {"evict_slot_s", r.evict_slot_s}};
  each_stream(r, [&](const std::string& key, const StreamRate& s) {
    j[key + "_flops"] = s.flops;
    j[key + "_call_s"] = s.call_s;
  });
  return j;
}

ProbedRates probed_rates_from_json(const nlohmann::json& j) {
  ProbedRates r{.type = j.at("type"),
                .matmul_flops = j.at("matmul_flops"),
                .attention_flops = j.at("attention_flops"),
                .attention_batch_flops = j.at("attention_batch_flops"),
                .evict_slot_s = j.at("evict_slot_s")};
  each_stream(r, [&](const std::string& key, StreamRate& s) {
    if (key == "matmul_stream32" && !j.contains(key + "_flops")) return;  // absent: the in-cache rate
    s = StreamRate{.flops = j.at(key + "_flops"), .call_s = j.at(key + "_call_s")};
  });
  return r;
}

HardwareSpec with_probed_rates(HardwareSpec hw, const ProbedRates& r) {
  set_rate(&hw.matmul_flops, r.type, r.matmul_flops);
  for (auto [s, flops, call_s] : {std::tuple{&r.stream1, &hw.matmul_stream1_flops, &hw.matmul_stream1_call_s},
                                   {&r.stream4, &hw.matmul_stream_flops, &hw.matmul_stream_call_s},
                                   {&r.stream32, &hw.matmul_stream32_flops, &hw.matmul_stream32_call_s}}) {
    if (s == &r.stream32 && s->flops <= 0) continue;  // not in an older bench file: the hardware file's own
    set_rate(flops, r.type, s->flops);
    set_rate(call_s, r.type, s->call_s);
  }
  hw.attention_flops = r.attention_flops;
  hw.attention_batch_flops = r.attention_batch_flops;
  hw.evict_slot_s = r.evict_slot_s;
  return hw;
}

}  // namespace kvp::cli
