#include "planner/replay.h"

#include <Eigen/Core>
#include <atomic>
#include <chrono>
#include <cmath>
#include <mutex>
#include <numeric>
#include <thread>

#include "planner/policy/layer_step.h"

namespace kvp {
namespace {

// Slot storage for one layer's heads, shaped by budgets; reshaping keeps the allocations.
class LayerCache {
 public:
  LayerCache() = default;
  LayerCache(const std::vector<int32_t>& budgets, int head_dim, bool aux) { reshape(budgets, head_dim, aux); }

  void reshape(const std::vector<int32_t>& budgets, int head_dim, bool aux) {
    const size_t slots = std::accumulate(budgets.begin(), budgets.end(), size_t{0});
    k_.resize(slots * head_dim);
    v_.resize(slots * head_dim);
    pos_.resize(slots);
    score_.resize(slots);
    aux_.resize(aux ? slots : 0);
    n_used_.assign(budgets.size(), 0);
    views_.clear();
    size_t at = 0;
    for (size_t h = 0; h < budgets.size(); ++h) {
      views_.push_back(HeadSlots{.k = k_.data() + at * head_dim, .v = v_.data() + at * head_dim,
                                 .pos = pos_.data() + at, .score = score_.data() + at,
                                 .aux = aux ? aux_.data() + at : nullptr, .budget = budgets[h],
                                 .n_used = &n_used_[h], .head_dim = head_dim});
      at += budgets[h];
    }
  }
  std::span<const HeadSlots> views() const { return views_; }

  // Becomes a copy of `other` (same shape and contents), in this cache's own storage.
  void assign(const LayerCache& other) {
    std::vector<int32_t> budgets;
    for (const HeadSlots& h : other.views_) budgets.push_back(h.budget);
    reshape(budgets, other.views_.empty() ? 0 : other.views_[0].head_dim, !other.aux_.empty());
    k_ = other.k_, v_ = other.v_, score_ = other.score_, aux_ = other.aux_, pos_ = other.pos_;
    n_used_ = other.n_used_;
  }

 private:
  std::vector<float> k_, v_, score_, aux_;
  std::vector<int32_t> pos_, n_used_;
  std::vector<HeadSlots> views_;
};

// One worker's buffers, kept across the (sequence, layer) tasks it replays.
struct Workspace {
  StepScratch scratch{1};  // grows as layer_step needs
  LayerCache prompt, cut_from, cache;  // the prefilled prompt; its copy that a cut may change
  std::vector<float> out, softmax, mass, rel, delta, injected;  // [steps, ...] for the decode
};

template <typename Task>
void parallel_for(int n, int threads, const Task& task) {
  std::atomic<int> next{0};
  auto work = [&] {
    for (int i; (i = next++) < n;) task(i);
  };
  std::vector<std::thread> pool;
  for (int t = 1; t < std::min(threads, n); ++t) pool.emplace_back(work);
  work();
  for (auto& t : pool) t.join();
}

}  // namespace

double ReplayResult::mean_rel_error() const {
  double sum = 0;
  int n = 0;
  for (const auto& l : rel_error) for (double e : l) sum += e, ++n;
  return n ? sum / n : 0;
}

double ReplayResult::mean_retained_mass() const {
  double sum = 0;
  int n = 0;
  for (const auto& l : retained_mass) for (double e : l) sum += e, ++n;
  return n ? sum / n : 0;
}

double ReplayResult::total_resid_energy() const {
  return std::accumulate(resid_energy.begin(), resid_energy.end(), 0.0);
}

int32_t ReplayEngine::max_length() const {
  int32_t n = 0;
  for (const Sequence& s : seqs_) n = std::max(n, static_cast<int32_t>(s.length));
  return n;
}

int64_t ReplayEngine::decode_steps() const {
  int64_t n = 0;
  for (const Sequence& s : seqs_) n += s.length - s.prompt_len;
  return n;
}

Result<std::unique_ptr<ReplayEngine>> ReplayEngine::create(const Trace& trace, int threads,
                                                           const std::function<void(int)>& progress) {
  std::unique_ptr<ReplayEngine> e(new ReplayEngine);
  e->model_ = trace.model();
  e->threads_ = std::max(1, threads);
  const TraceModelShape& m = e->model_;
  const int H = m.n_heads, KVH = m.n_kv_heads, hd = m.head_dim, group = H / KVH;
  for (int l = 0; l < m.n_layers; ++l) e->wo_.push_back(trace.wo(l));
  e->seqs_.resize(trace.n_sequences());
  std::atomic<int> done{0};
  std::mutex mu;
  parallel_for(trace.n_sequences(), e->threads_, [&](int s) {
    Sequence& seq = e->seqs_[s];
    seq.length = trace.length(s);
    seq.prompt_len = trace.prompt_len(s);
    StepScratch scratch(seq.length);
    std::vector<float> softmax(2 * H);
    for (int l = 0; l < m.n_layers; ++l) {
      Layer layer;
      layer.data = trace.layer(s, l);
      layer.o_full.resize(size_t(seq.length) * H * hd);
      layer.log_z_full.resize(size_t(seq.length) * H);
      layer.norm_full.resize(size_t(seq.length) * H);
      // The full cache: every position, in order, through the same step as any policy.
      LayerCache cache(std::vector<int32_t>(KVH, seq.length), hd, false);
      for (int t = 0; t < seq.length; ++t) {
        layer_step(*keep_all_policy(), cache.views(),
                   TokenRow{.q = layer.data.q.data() + size_t(t) * H * hd, .k = layer.data.k.data() + size_t(t) * KVH * hd,
                            .v = layer.data.v.data() + size_t(t) * KVH * hd, .pos = t, .layer_idx = l, .prompt_len = 0},
                   group, layer.o_full.data() + size_t(t) * H * hd, softmax.data(), scratch, {});
        for (int h = 0; h < H; ++h) {
          layer.log_z_full[size_t(t) * H + h] = softmax[2 * h] + std::log(softmax[2 * h + 1]);
        }
      }
      for (size_t i = 0; i < layer.norm_full.size(); ++i) {
        double norm = 0;
        for (int d = 0; d < hd; ++d) norm += double(layer.o_full[i * hd + d]) * layer.o_full[i * hd + d];
        layer.norm_full[i] = static_cast<float>(std::sqrt(norm));
      }
      seq.layers.push_back(std::move(layer));
    }
    if (progress) {
      std::lock_guard<std::mutex> lock(mu);
      progress(++done);
    }
  });
  return e;
}

struct ReplayEngine::Totals {
  std::vector<double> rel, mass;  // [n_kv_heads]
  double energy = 0;
  std::vector<double> head_energy;  // [n_kv_heads] when asked
  double seconds = 0;
};

namespace {

bool same_prefill(const Policy& a, const Policy& b) {
  const PolicyParams &x = a.params(), &y = b.params();
  return a.name() == b.name() && x.vatp_base == y.vatp_base && x.seed == y.seed && x.snap_window == y.snap_window &&
         x.snap_kernel == y.snap_kernel;
}

}  // namespace

void ReplayEngine::replay(int s, int l, const std::vector<ReplayConfig>& configs, std::vector<Totals>& totals,
                          const KeptFn& on_step) const {
  const Sequence& seq = seqs_[s];
  const Layer& layer = seq.layers[l];
  const int H = model_.n_heads, KVH = model_.n_kv_heads, hd = model_.head_dim, group = H / KVH;
  const int q_dim = H * hd, dim = model_.dim, T = seq.length, P = seq.prompt_len;
  auto row = [&](int t) {
    return TokenRow{.q = layer.data.q.data() + size_t(t) * q_dim, .k = layer.data.k.data() + size_t(t) * KVH * hd,
                    .v = layer.data.v.data() + size_t(t) * KVH * hd, .pos = t, .layer_idx = l, .prompt_len = 0};
  };
  thread_local Workspace ws;
  StepScratch& scratch = ws.scratch;
  const int steps = T - P;
  ws.out.resize(q_dim);
  ws.softmax.resize(size_t(steps) * 2 * H);
  ws.mass.resize(size_t(steps) * H);
  ws.rel.resize(size_t(steps) * H);
  ws.delta.resize(size_t(steps) * q_dim);
  ws.injected.resize(size_t(steps) * dim);
  float* out = ws.out.data();
  using RowMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using Array = Eigen::Map<Eigen::ArrayXf>;
  using ConstArray = Eigen::Map<const Eigen::ArrayXf>;
  const Eigen::Map<const RowMatrix> wo(wo_[l].data(), dim, q_dim);
  // [decode steps, q_dim]: the replayed outputs ô, then o − ô, projected by Wo in one product below
  Eigen::Map<RowMatrix> delta(ws.delta.data(), steps, q_dim);
  Eigen::Map<RowMatrix> injected(ws.injected.data(), steps, dim);
  const size_t first = size_t(P);  // the first decode step's row in the full-cache arrays
  const Policy* prefilled = nullptr;
  for (size_t c = 0; c < configs.size(); ++c) {
    const auto start = std::chrono::steady_clock::now();
    const ReplayConfig& config = configs[c];
    const Policy& policy = *config.policy;
    const bool aux = policy.aux_floats_per_slot() > 0;
    Totals& tot = totals[c];
    LayerCache& cache = ws.cache;
    if (config.prefill_evict_chunk > 0) {
      // Cut after every chunk: the prefill depends on the budgets, so it runs per configuration.
      const int chunk = config.prefill_evict_chunk;
      std::vector<int32_t> room;
      for (int32_t b : config.budgets[l]) room.push_back(std::min(P, b + chunk));
      ws.cut_from.reshape(room, hd, aux);
      cache.reshape(config.budgets[l], hd, aux);
      for (int t = 0; t < P; ++t) {
        TokenRow r = row(t);
        r.prompt_len = P;
        prefill_row(policy, ws.cut_from.views(), cache.views(), config.budgets[l], r, group, out, scratch, chunk, {});
      }
      prefilled = nullptr;
    } else {
      if (prefilled == nullptr || !same_prefill(*prefilled, policy)) {
        ws.prompt.reshape(std::vector<int32_t>(KVH, P), hd, aux);
        for (int t = 0; t < P; ++t) {
          TokenRow r = row(t);
          r.prompt_len = P;
          layer_step(policy, ws.prompt.views(), r, group, out, nullptr, scratch, {});
        }
        prefilled = &policy;
      }
      ws.cut_from.assign(ws.prompt);
      cache.reshape(config.budgets[l], hd, aux);
      cut_prefill(policy, ws.cut_from.views(), cache.views(), {});
    }
    // The decode: each step's outputs and softmax statistics into their rows; the measures after.
    for (int t = P; t < T; ++t) {
      layer_step(policy, cache.views(), row(t), group, ws.delta.data() + size_t(t - P) * q_dim,
                 ws.softmax.data() + size_t(t - P) * 2 * H, scratch, {});
      if (on_step) {
        for (int h = 0; h < KVH; ++h) {
          const HeadSlots& head = cache.views()[h];
          on_step(s, l, h, t, std::span<const int32_t>(head.pos, *head.n_used));
        }
      }
    }
    const size_t n_heads = size_t(steps) * H;
    Array(ws.delta.data(), delta.size()) =
        ConstArray(layer.o_full.data() + first * q_dim, delta.size()) - Array(ws.delta.data(), delta.size());
    // Retained mass Σ_kept exp(logit − log Z_full) = Σ · exp(m − log Z_full) per step and head.
    const Eigen::Map<const Eigen::Array2Xf> z(ws.softmax.data(), 2, n_heads);
    Array(ws.mass.data(), n_heads) =
        z.row(1).transpose() * (z.row(0).transpose() - ConstArray(layer.log_z_full.data() + first * H, n_heads)).exp();
    // ‖o − ô‖ / ‖o‖ per step and query head.
    Array(ws.rel.data(), n_heads) =
        Eigen::Map<const Eigen::MatrixXf>(ws.delta.data(), hd, n_heads).colwise().norm().transpose().array() /
        ConstArray(layer.norm_full.data() + first * H, n_heads).max(1e-30f);
    for (size_t i = 0; i < n_heads; ++i) {  // in step order, then head order
      const int kv_head = static_cast<int>(i % H) / group;
      tot.rel[kv_head] += ws.rel[i];
      tot.mass[kv_head] += ws.mass[i];
    }
    // Σ over steps, in step order, of ‖injected row‖² / ‖x‖²: the energy an error injects.
    auto injected_energy = [&] {
      double energy = 0;
      for (int t = P; t < T; ++t) {
        const double x = layer.data.resid_norm[t];
        energy += static_cast<double>(injected.row(t - P).squaredNorm()) / std::max(x * x, 1e-30);
      }
      return energy;
    };
    // ‖Wo (o − ô)‖² / ‖x‖² per step.
    injected.noalias() = delta * wo.transpose();
    tot.energy += injected_energy();
    if (config.head_energy) {
      // Each KV head's query heads' columns alone: ‖W_o,h (o_h − ô_h)‖² / ‖x‖².
      tot.head_energy.assign(KVH, 0.0);
      const int cols = group * hd;
      for (int h = 0; h < KVH; ++h) {
        injected.noalias() = delta.middleCols(h * cols, cols) * wo.middleCols(h * cols, cols).transpose();
        tot.head_energy[h] += injected_energy();
      }
    }
    tot.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  }
}

ReplayResult ReplayEngine::run(const ReplayConfig& config, const KeptFn& on_step) const {
  return std::move(run_configs({config}, on_step).front());
}

std::vector<ReplayResult> ReplayEngine::run_batch(const std::vector<ReplayConfig>& configs) const {
  return run_configs(configs, {});
}

std::vector<ReplayResult> ReplayEngine::run_configs(const std::vector<ReplayConfig>& configs,
                                                    const KeptFn& on_step) const {
  const auto start = std::chrono::steady_clock::now();
  const int L = model_.n_layers, KVH = model_.n_kv_heads, group = model_.n_heads / KVH;
  const size_t C = configs.size();
  for (const ReplayConfig& c : configs) KVP_CHECK(static_cast<int>(c.budgets.size()) == L);
  const int tasks = n_sequences() * L;
  std::vector<std::vector<Totals>> totals(
      tasks, std::vector<Totals>(C, Totals{.rel = std::vector<double>(KVH, 0.0), .mass = std::vector<double>(KVH, 0.0)}));
  parallel_for(tasks, on_step ? 1 : threads_, [&](int i) { replay(i / L, i % L, configs, totals[i], on_step); });
  // Sum per (sequence, layer) in a fixed order, so any number of threads gives the same bits.
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const double steps = static_cast<double>(decode_steps());
  std::vector<ReplayResult> results(C);
  for (size_t c = 0; c < C; ++c) {
    ReplayResult& r = results[c];
    r.rel_error.assign(L, std::vector<double>(KVH, 0.0));
    r.retained_mass = r.rel_error;
    r.resid_energy.assign(L, 0.0);
    if (configs[c].head_energy) r.head_resid_energy.assign(L, std::vector<double>(KVH, 0.0));
    for (int i = 0; i < tasks; ++i) {
      const int l = i % L;
      const Totals& t = totals[i][c];
      for (int h = 0; h < KVH; ++h) {
        r.rel_error[l][h] += t.rel[h] / (steps * group);
        r.retained_mass[l][h] += t.mass[h] / (steps * group);
      }
      r.resid_energy[l] += t.energy / steps;
      for (size_t h = 0; h < t.head_energy.size(); ++h) r.head_resid_energy[l][h] += t.head_energy[h] / steps;
      r.cpu_seconds += t.seconds;
    }
    r.head_steps = decode_steps() * model_.n_heads * L;
    r.seconds = wall;
  }
  return results;
}

}  // namespace kvp
