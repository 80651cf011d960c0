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

// Slot storage for one layer's heads, shaped by budgets.
struct LayerCache {
  LayerCache(const std::vector<int32_t>& budgets, int head_dim, bool aux) {
    for (int32_t b : budgets) {
      Head h;
      h.k.resize(size_t(b) * head_dim);
      h.v.resize(size_t(b) * head_dim);
      h.pos.resize(b);
      h.score.resize(b);
      if (aux) h.aux.resize(b);
      h.budget = b;
      heads_.push_back(std::move(h));
    }
    for (Head& h : heads_) {
      views_.push_back(HeadSlots{.k = h.k.data(), .v = h.v.data(), .pos = h.pos.data(), .score = h.score.data(),
                                 .aux = h.aux.empty() ? nullptr : h.aux.data(), .budget = h.budget,
                                 .n_used = &h.n_used, .head_dim = head_dim});
    }
  }
  std::span<const HeadSlots> views() const { return views_; }

 private:
  struct Head {
    std::vector<float> k, v, score, aux;
    std::vector<int32_t> pos;
    int32_t budget = 0;
    int32_t n_used = 0;
  };
  std::vector<Head> heads_;
  std::vector<HeadSlots> views_;
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
    auto policy = make_policy("full", PolicyParams{.sinks = 0, .recent = 0});
    StepScratch scratch(seq.length);
    for (int l = 0; l < m.n_layers; ++l) {
      Layer layer;
      layer.data = trace.layer(s, l);
      layer.o_full.resize(size_t(seq.length) * H * hd);
      layer.log_z_full.resize(size_t(seq.length) * H);
      // The full cache: every position, in order, through the same step as any policy.
      LayerCache cache(std::vector<int32_t>(KVH, seq.length), hd, false);
      for (int t = 0; t < seq.length; ++t) {
        layer_step(**policy, cache.views(),
                   TokenRow{.q = layer.data.q.data() + size_t(t) * H * hd, .k = layer.data.k.data() + size_t(t) * KVH * hd,
                            .v = layer.data.v.data() + size_t(t) * KVH * hd, .pos = t, .layer_idx = l, .prompt_len = 0},
                   group, layer.o_full.data() + size_t(t) * H * hd, layer.log_z_full.data() + size_t(t) * H, scratch,
                   {});
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

void ReplayEngine::replay(int s, int l, const ReplayConfig& config, std::vector<double>& rel,
                          std::vector<double>& mass, double& energy, const KeptFn& on_step) const {
  const Sequence& seq = seqs_[s];
  const Layer& layer = seq.layers[l];
  const Policy& policy = *config.policy;
  const int H = model_.n_heads, KVH = model_.n_kv_heads, hd = model_.head_dim, group = H / KVH;
  const int q_dim = H * hd, dim = model_.dim, T = seq.length, P = seq.prompt_len;
  const bool aux = policy.aux_floats_per_slot() > 0;
  auto row = [&](int t) {
    return TokenRow{.q = layer.data.q.data() + size_t(t) * q_dim, .k = layer.data.k.data() + size_t(t) * KVH * hd,
                    .v = layer.data.v.data() + size_t(t) * KVH * hd, .pos = t, .layer_idx = l, .prompt_len = 0};
  };
  StepScratch scratch(std::max(T, 1));
  std::vector<float> out(q_dim), log_z(H);
  LayerCache cache(config.budgets[l], hd, aux);
  {
    LayerCache prompt(std::vector<int32_t>(KVH, P), hd, aux);
    for (int t = 0; t < P; ++t) {
      TokenRow r = row(t);
      r.prompt_len = P;
      layer_step(policy, prompt.views(), r, group, out.data(), nullptr, scratch, {});
    }
    cut_prefill(policy, prompt.views(), cache.views(), {});
  }
  using RowMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const Eigen::Map<const RowMatrix> wo(wo_[l].data(), dim, q_dim);
  RowMatrix delta(T - P, q_dim);  // [decode steps, q_dim] o − ô, projected by Wo in one product below
  for (int t = P; t < T; ++t) {
    layer_step(policy, cache.views(), row(t), group, out.data(), log_z.data(), scratch, {});
    const float* full = layer.o_full.data() + size_t(t) * q_dim;
    for (int h = 0; h < H; ++h) {
      double diff = 0, norm = 0;
      for (int d = 0; d < hd; ++d) {
        const double a = full[h * hd + d], b = out[h * hd + d];
        diff += (a - b) * (a - b);
        norm += a * a;
      }
      rel[h / group] += norm > 0 ? std::sqrt(diff / norm) : 0.0;
      mass[h / group] += std::exp(double(log_z[h]) - layer.log_z_full[size_t(t) * H + h]);
    }
    for (int i = 0; i < q_dim; ++i) delta(t - P, i) = full[i] - out[i];
    if (on_step) {
      for (int h = 0; h < KVH; ++h) {
        const HeadSlots& head = cache.views()[h];
        on_step(s, l, h, t, std::span<const int32_t>(head.pos, *head.n_used));
      }
    }
  }
  // ‖Wo (o − ô)‖² / ‖x‖² per step, summed in step order.
  const RowMatrix injected = delta * wo.transpose();  // [decode steps, dim]
  for (int t = P; t < T; ++t) {
    const double x = layer.data.resid_norm[t];
    energy += static_cast<double>(injected.row(t - P).squaredNorm()) / std::max(x * x, 1e-30);
  }
}

ReplayResult ReplayEngine::run(const ReplayConfig& config, const KeptFn& on_step) const {
  const auto start = std::chrono::steady_clock::now();
  const int L = model_.n_layers, KVH = model_.n_kv_heads, group = model_.n_heads / KVH;
  KVP_CHECK(static_cast<int>(config.budgets.size()) == L);
  const int tasks = n_sequences() * L;
  std::vector<std::vector<double>> rel(tasks, std::vector<double>(KVH, 0.0)), mass = rel;
  std::vector<double> energy(tasks, 0.0);
  parallel_for(tasks, on_step ? 1 : threads_, [&](int i) {
    replay(i / L, i % L, config, rel[i], mass[i], energy[i], on_step);
  });
  // Sum per (sequence, layer) in a fixed order, so any number of threads gives the same bits.
  ReplayResult r;
  r.rel_error.assign(L, std::vector<double>(KVH, 0.0));
  r.retained_mass = r.rel_error;
  r.resid_energy.assign(L, 0.0);
  const double steps = static_cast<double>(decode_steps());
  for (int i = 0; i < tasks; ++i) {
    const int l = i % L;
    for (int h = 0; h < KVH; ++h) {
      r.rel_error[l][h] += rel[i][h] / (steps * group);
      r.retained_mass[l][h] += mass[i][h] / (steps * group);
    }
    r.resid_energy[l] += energy[i] / steps;
  }
  r.head_steps = decode_steps() * model_.n_heads * L;
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return r;
}

}  // namespace kvp
