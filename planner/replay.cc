#include "planner/replay.h"

#include <Eigen/Core>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <map>
#include <mutex>
#include <numeric>
#include <thread>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "planner/policy/layer_step.h"

namespace kvp {
namespace {

// Slot storage for one layer's heads, shaped by budgets (carved as the executor's KvCache carves
// them: dense, or compressed by `compression`); reshaping keeps the allocation.
class LayerCache {
 public:
  LayerCache() = default;

  void reshape(const std::vector<int32_t>& budgets, int head_dim, bool aux, const SlotCompression& compression = {},
               bool query_sums = false) {
    budgets_ = budgets;
    head_dim_ = head_dim, aux_ = aux, compression_ = compression, query_sums_ = query_sums;
    std::vector<size_t> offsets;
    size_t bytes = 0;
    for (int32_t b : budgets) {
      offsets.push_back(bytes);
      bytes += head_layout(shape(b)).bytes;
    }
    words_used_ = (bytes + 3) / 4;
    if (bytes_.size() < words_used_) bytes_.resize(words_used_);
    n_used_.assign(budgets.size(), 0);
    views_.clear();
    for (size_t h = 0; h < budgets.size(); ++h) {
      views_.push_back(carve_head(reinterpret_cast<std::byte*>(bytes_.data()) + offsets[h], shape(budgets[h]),
                                  &n_used_[h]));
      reset_compression_state(views_.back());
    }
  }
  std::span<const HeadSlots> views() const { return views_; }

  // Becomes a copy of `other` (same shape and contents), in this cache's own storage.
  void assign(const LayerCache& other) {
    reshape(other.budgets_, other.head_dim_, other.aux_, other.compression_, other.query_sums_);
    std::copy_n(other.bytes_.data(), words_used_, bytes_.data());
    n_used_ = other.n_used_;
  }

 private:
  HeadShape shape(int32_t budget) const {
    return HeadShape{.budget = budget, .head_dim = head_dim_, .aux_floats = aux_ ? 1 : 0, .compression = compression_,
                     .query_sums = query_sums_};
  }

  std::vector<uint32_t> bytes_;  // 4-byte words: every part of a head is 4-byte aligned
  size_t words_used_ = 0;        // by the heads of the current shape
  std::vector<int32_t> budgets_, n_used_;
  int head_dim_ = 0;
  bool aux_ = false;
  SlotCompression compression_;
  bool query_sums_ = false;
  std::vector<HeadSlots> views_;
};

// One worker's buffers, kept across the (sequence, layer) tasks it replays.
struct Workspace {
  StepScratch scratch{1};  // grows as layer_step needs
  LayerCache prompt, cut_from, cache;  // the prefilled prompt; its copy that a cut may change
  std::vector<float> out, softmax, mass, rel, delta, injected;  // [steps, ...] for the decode
  std::vector<float> compressed_mass;  // [steps, n_heads] retained mass of a compressed cache
  // The (sequence, layer) being replayed: its trace data, and its full-cache outputs at the
  // recorded queries.
  TraceLayer data;
  std::vector<float> wo;          // [dim, n_heads * head_dim]
  std::vector<int32_t> q_row;     // per position: its row in data.q, or -1
  std::vector<int32_t> measured;  // the decode positions with a recorded query
  LayerCache full;
  std::vector<float> o_full;      // [Tq, n_heads, head_dim]
  std::vector<float> log_z_full;  // [Tq, n_heads]
  std::vector<float> norm_full;   // [Tq, n_heads] ‖o‖
};

// Per-layer values of the unmeasured layers, linear in the layer index between the nearest
// measured ones (the nearest one's value beyond the first and the last).
template <typename T, typename Lerp>
void interpolate_layers(std::vector<T>& per_layer, const std::vector<int>& measured, const Lerp& lerp) {
  const int L = static_cast<int>(per_layer.size());
  for (int l = 0, next = 0; l < L; ++l) {
    while (next < static_cast<int>(measured.size()) && measured[next] < l) ++next;
    if (next < static_cast<int>(measured.size()) && measured[next] == l) continue;
    const int hi = next < static_cast<int>(measured.size()) ? measured[next] : measured.back();
    const int lo = next > 0 ? measured[next - 1] : measured.front();
    const double f = hi == lo ? 0.0 : double(l - lo) / (hi - lo);
    per_layer[l] = lerp(per_layer[lo], per_layer[hi], f);
  }
}

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
  for (int s = 0; s < trace_->n_sequences(); ++s) n = std::max(n, static_cast<int32_t>(trace_->length(s)));
  return n;
}

int64_t ReplayEngine::decode_steps() const {
  int64_t n = 0;
  for (int s = 0; s < trace_->n_sequences(); ++s) {
    const int T = trace_->length(s), P = trace_->prompt_len(s);
    // The prompt's last position is always recorded; recorded positions before it are not decode steps.
    n += recorded_query_count(T, P, trace_->query_stride()) - recorded_query_count(P, P, trace_->query_stride());
  }
  return n;
}

Result<std::unique_ptr<ReplayEngine>> ReplayEngine::create(const Trace& trace, int threads) {
  std::unique_ptr<ReplayEngine> e(new ReplayEngine);
  e->trace_ = &trace;
  e->model_ = trace.model();
  e->threads_ = std::max(1, threads);
  // Full-cache outputs: o, log Z and ‖o‖ per recorded query row and query head, per measured layer.
  int64_t bytes = 0;
  const int64_t per_row = int64_t{sizeof(float)} * (int64_t{e->model_.n_heads} * e->model_.head_dim + 2 * e->model_.n_heads);
  for (int s = 0; s < trace.n_sequences(); ++s) {
    bytes += int64_t{trace.length(s)} * per_row * static_cast<int64_t>(trace.layers().size());
  }
  e->keep_full_outputs_ = bytes <= kFullCacheBytes;
  return e;
}

struct ReplayEngine::Totals {
  std::vector<double> rel, mass;  // [n_kv_heads]
  double energy = 0;
  std::vector<double> head_energy;  // [n_kv_heads] when asked
  double attended = 0;  // keys attended, over KV heads and measured decode steps
  double seconds = 0;
};

struct ReplayEngine::LayerMemo {
  std::vector<std::map<std::string, Totals>> sums;  // [sequence * n_layers + layer]
};

namespace {

// What a layer's replay depends on: the policy and every setting, the layer's budgets and
// compression, the prefill mode and whether head energies are asked for.
std::string layer_signature(const ReplayConfig& c, int layer) {
  const PolicyParams& p = c.policy->params();
  const SlotCompression s = c.compression.empty() ? SlotCompression{} : c.compression[layer];
  return fmt::format("{}|{} {} {} {} {} {}|{} {} {} {}|{}|{} {} {} {} {} {}|{} {}", c.policy->name(), p.sinks, p.recent,
                     int(p.vatp_base), p.seed, p.snap_window, p.snap_kernel, p.crush_base, p.crush_ratio,
                     int(p.crush_anchor), p.crush_period, fmt::join(c.budgets[layer], ","), s.key_channels,
                     s.key_elements, s.value_elements, s.think_recent, s.think_queries, s.dense_recent,
                     c.prefill_evict_chunk, c.head_energy ? 1 : 0);
}

// ThinK's prefill sums the last prompt queries' q² (0: none needed).
int think_queries(const ReplayConfig& c, int layer, int head_dim) {
  if (c.compression.empty() || !c.compression[layer].thin(head_dim)) return 0;
  return c.compression[layer].think_queries;
}

}  // namespace

Status check_delta_layers(const DeltaParams& delta, const std::vector<int>& recorded, const std::string& trace_path) {
  if (!delta.on()) return ok_status();
  for (size_t l = 0; l < delta.layers.size(); ++l) {
    if (delta.layers[l] == kDeltaSelect && std::find(recorded.begin(), recorded.end(), int(l)) == recorded.end()) {
      return make_error("{}: layers: DELTA's selection layer {} is not recorded (record it with --layers)", trace_path,
                        l);
    }
  }
  return ok_status();
}

void ReplayEngine::replay(int s, int l, const std::vector<ReplayConfig>& configs, std::vector<Totals>& totals,
                          const KeptFn& on_step, std::vector<std::vector<DeltaRow>>& delta_rows) const {
  const int H = model_.n_heads, KVH = model_.n_kv_heads, hd = model_.head_dim, group = H / KVH;
  const int q_dim = H * hd, dim = model_.dim, T = trace_->length(s), P = trace_->prompt_len(s);
  // Configurations whose layer this engine has replayed before take their sums from the memo; when
  // every one does, the layer is not read at all.
  std::map<std::string, Totals>* memo = memo_ && !on_step ? &memo_->sums[size_t(s) * model_.n_layers + l] : nullptr;
  std::vector<std::string> signatures(configs.size());  // empty: not memoised (DELTA)
  auto from_memo = [&](size_t c) {
    if (signatures[c].empty()) return false;
    const auto hit = memo->find(signatures[c]);
    if (hit == memo->end()) return false;
    totals[c] = hit->second;
    totals[c].seconds = 0;  // no work done
    return true;
  };
  bool every = memo != nullptr;
  for (size_t c = 0; memo && c < configs.size(); ++c) {
    if (!configs[c].policy->params().delta.on() && !configs[c].step_energies) {
      signatures[c] = layer_signature(configs[c], l);
    }
    every = every && !signatures[c].empty() && memo->count(signatures[c]);
  }
  if (every) {
    for (size_t c = 0; c < configs.size(); ++c) from_memo(c);
    return;
  }
  thread_local Workspace ws;
  TraceLayer& data = ws.data;
  trace_->read_layer(s, l, &data);
  ws.wo = trace_->wo(l);
  ws.q_row = trace_->query_rows(s);
  ws.measured.clear();
  for (int t = P; t < T; ++t) {
    if (ws.q_row[t] >= 0) ws.measured.push_back(t);
  }
  auto row = [&](int t) {
    return TokenRow{.q = ws.q_row[t] >= 0 ? data.q.data() + size_t(ws.q_row[t]) * q_dim : nullptr,
                    .k = data.k.data() + size_t(t) * KVH * hd, .v = data.v.data() + size_t(t) * KVH * hd,
                    .pos = t, .layer_idx = l, .prompt_len = 0};
  };
  StepScratch& scratch = ws.scratch;
  ws.out.resize(q_dim);
  float* out = ws.out.data();
  FullOutputs* kept = keep_full_outputs_ ? &full_outputs_[size_t(s) * model_.n_layers + l] : nullptr;
  if (kept && kept->ready) {
    ws.o_full = kept->o, ws.log_z_full = kept->log_z, ws.norm_full = kept->norm;
  } else {
    // The full cache: every position, in order, through the same step as any policy.
    const size_t Tq = data.q.size() / q_dim;
    ws.o_full.resize(Tq * q_dim);
    ws.log_z_full.resize(Tq * H);
    ws.norm_full.resize(Tq * H);
    ws.softmax.resize(size_t(2) * H);
    ws.full.reshape(std::vector<int32_t>(KVH, T), hd, false);
    for (int t = 0; t < T; ++t) {
      const int32_t r = ws.q_row[t];
      layer_step(*keep_all_policy(), ws.full.views(), row(t), group, r >= 0 ? ws.o_full.data() + size_t(r) * q_dim : out,
                 r >= 0 ? ws.softmax.data() : nullptr, scratch, {});
      for (int h = 0; r >= 0 && h < H; ++h) {
        ws.log_z_full[size_t(r) * H + h] = ws.softmax[2 * h] + std::log(ws.softmax[2 * h + 1]);
      }
    }
    for (size_t i = 0; i < ws.norm_full.size(); ++i) {
      double norm = 0;
      for (int d = 0; d < hd; ++d) norm += double(ws.o_full[i * hd + d]) * ws.o_full[i * hd + d];
      ws.norm_full[i] = static_cast<float>(std::sqrt(norm));
    }
    if (kept) *kept = FullOutputs{.o = ws.o_full, .log_z = ws.log_z_full, .norm = ws.norm_full, .ready = true};
  }
  const int steps = static_cast<int>(ws.measured.size());
  ws.softmax.resize(size_t(steps) * 2 * H);
  ws.mass.resize(size_t(steps) * H);
  ws.rel.resize(size_t(steps) * H);
  ws.delta.resize(size_t(steps) * q_dim);
  ws.injected.resize(size_t(steps) * dim);
  using RowMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using Array = Eigen::Map<Eigen::ArrayXf>;
  using ConstArray = Eigen::Map<const Eigen::ArrayXf>;
  const Eigen::Map<const RowMatrix> wo(ws.wo.data(), dim, q_dim);
  // [measured decode steps, q_dim]: the replayed outputs ô, then o − ô, projected by Wo in one product below
  Eigen::Map<RowMatrix> delta(ws.delta.data(), steps, q_dim);
  Eigen::Map<RowMatrix> injected(ws.injected.data(), steps, dim);
  // The first measured decode step's row in the full-cache arrays (the measured rows are consecutive).
  const size_t first = steps > 0 ? size_t(ws.q_row[ws.measured[0]]) : 0;
  const Policy* prefilled = nullptr;
  int prefilled_queries = 0;
  for (size_t c = 0; c < configs.size(); ++c) {
    const std::string& signature = signatures[c];
    if (from_memo(c)) continue;  // an earlier configuration of this batch included
    const auto start = std::chrono::steady_clock::now();
    const ReplayConfig& config = configs[c];
    const Policy& policy = *config.policy;
    const bool aux = policy.aux_floats_per_slot() > 0;
    Totals& tot = totals[c];
    LayerCache& cache = ws.cache;
    const SlotCompression compression = config.compression.empty() ? SlotCompression{} : config.compression[l];
    const int queries = think_queries(config, l, hd);
    SlotCompression scratch_shape;  // dense, with ThinK's query window when it sums queries
    scratch_shape.think_queries = queries;
    if (config.prefill_evict_chunk > 0) {
      // Cut after every chunk: the prefill depends on the budgets, so it runs per configuration.
      const int chunk = config.prefill_evict_chunk;
      std::vector<int32_t> room;
      for (int32_t b : config.budgets[l]) room.push_back(std::min(P, b + chunk));
      ws.cut_from.reshape(room, hd, aux, scratch_shape, queries > 0);
      cache.reshape(config.budgets[l], hd, aux, compression);
      for (int t = 0; t < P; ++t) {
        TokenRow r = row(t);
        r.prompt_len = P;
        prefill_row(policy, ws.cut_from.views(), cache.views(), config.budgets[l], r, group, out, scratch, chunk, {});
      }
      prefilled = nullptr;
    } else {
      if (prefilled == nullptr || !same_prefill(*prefilled, policy) || prefilled_queries != queries) {
        ws.prompt.reshape(std::vector<int32_t>(KVH, P), hd, aux, scratch_shape, queries > 0);
        for (int t = 0; t < P; ++t) {
          TokenRow r = row(t);
          r.prompt_len = P;
          layer_step(policy, ws.prompt.views(), r, group, out, nullptr, scratch, {});
        }
        prefilled = &policy;
        prefilled_queries = queries;
      }
      ws.cut_from.assign(ws.prompt);
      cache.reshape(config.budgets[l], hd, aux, compression);
      cut_prefill(policy, ws.cut_from.views(), cache.views(), {});
    }
    // The decode: each step's outputs and softmax statistics into their rows; the measures after.
    const bool compressed = compression.compressed();
    if (compressed) ws.compressed_mass.resize(size_t(steps) * H);
    // DELTA's pages pass between this sequence's layers.
    std::vector<DeltaRow>* pages = policy.params().delta.on() ? &delta_rows[c] : nullptr;
    if (pages && pages->size() < size_t(T - P)) pages->resize(size_t(T - P));
    for (int t = P, m = 0, last_query = P - 1; t < T; ++t) {
      const bool measure = ws.q_row[t] >= 0;
      TokenRow r = row(t);
      if (pages) r.delta = &(*pages)[t - P];
      const int64_t attended_before = scratch.attended;
      if (measure && compressed) {
        // The compressed attention's softmax is not the full cache's over a subset, so the mass of
        // the kept tokens (and the new one) is summed from the full-width keys of the trace.
        const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
        for (int qh = 0; qh < H; ++qh) {
          const HeadSlots& head = cache.views()[qh / group];
          const float* q = r.q + size_t(qh) * hd;
          const double log_z = ws.log_z_full[size_t(ws.q_row[t]) * H + qh];
          auto weight = [&](int32_t p) {
            return std::exp(double(fixed_order_dot(q, data.k.data() + (size_t(p) * KVH + qh / group) * hd, hd)) * scale - log_z);
          };
          double mass = weight(t);
          for (int j = 0; j < *head.n_used; ++j) mass += weight(head.pos[j]);
          ws.compressed_mass[size_t(m) * H + qh] = static_cast<float>(mass);
        }
      }
      if (measure) {
        last_query = t;
      } else if (policy.uses_attention()) {  // scores from keys or values alone are whole
        r.unscored_from = last_query + 1;
      }
      layer_step(policy, cache.views(), r, group, measure ? ws.delta.data() + size_t(m) * q_dim : out,
                 measure ? ws.softmax.data() + size_t(m) * 2 * H : nullptr, scratch, {});
      tot.attended += double(scratch.attended - attended_before);
      m += measure;
      if (on_step) {
        for (int h = 0; h < KVH; ++h) {
          const HeadSlots& head = cache.views()[h];
          on_step(s, l, h, t, std::span<const int32_t>(head.pos, *head.n_used));
        }
      }
    }
    const size_t n_heads = size_t(steps) * H;
    Array(ws.delta.data(), delta.size()) =
        ConstArray(ws.o_full.data() + first * q_dim, delta.size()) - Array(ws.delta.data(), delta.size());
    // Retained mass Σ_kept exp(logit − log Z_full) = Σ · exp(m − log Z_full) per step and head.
    const Eigen::Map<const Eigen::Array2Xf> z(ws.softmax.data(), 2, n_heads);
    Array(ws.mass.data(), n_heads) =
        z.row(1).transpose() * (z.row(0).transpose() - ConstArray(ws.log_z_full.data() + first * H, n_heads)).exp();
    if (compressed) std::copy_n(ws.compressed_mass.data(), n_heads, ws.mass.data());
    // ‖o − ô‖ / ‖o‖ per step and query head.
    Array(ws.rel.data(), n_heads) =
        Eigen::Map<const Eigen::MatrixXf>(ws.delta.data(), hd, n_heads).colwise().norm().transpose().array() /
        ConstArray(ws.norm_full.data() + first * H, n_heads).max(1e-30f);
    for (size_t i = 0; i < n_heads; ++i) {  // in step order, then head order
      const int kv_head = static_cast<int>(i % H) / group;
      tot.rel[kv_head] += ws.rel[i];
      tot.mass[kv_head] += ws.mass[i];
    }
    // Σ over steps, in step order, of ‖injected row‖² / ‖x‖²: the energy an error injects (each
    // step's into `per_step` when given).
    auto injected_energy = [&](std::vector<float>* per_step) {
      double energy = 0;
      if (per_step) per_step->resize(steps);
      for (int m = 0; m < steps; ++m) {
        const double x = data.resid_norm[ws.measured[m]];
        const double e = static_cast<double>(injected.row(m).squaredNorm()) / std::max(x * x, 1e-30);
        energy += e;
        if (per_step) (*per_step)[m] = static_cast<float>(e);
      }
      return energy;
    };
    // ‖Wo (o − ô)‖² / ‖x‖² per step.
    injected.noalias() = delta * wo.transpose();
    tot.energy += injected_energy(config.step_energies ? &config.step_energies->values[s][l] : nullptr);
    if (config.head_energy) {
      // Each KV head's query heads' columns alone: ‖W_o,h (o_h − ô_h)‖² / ‖x‖².
      tot.head_energy.assign(KVH, 0.0);
      const int cols = group * hd;
      for (int h = 0; h < KVH; ++h) {
        injected.noalias() = delta.middleCols(h * cols, cols) * wo.middleCols(h * cols, cols).transpose();
        tot.head_energy[h] += injected_energy(nullptr);
      }
    }
    tot.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (!signature.empty()) memo->emplace(signature, tot);
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
  const std::vector<int>& layers = measured_layers();
  const int Lm = static_cast<int>(layers.size());
  const size_t C = configs.size();
  for (const ReplayConfig& c : configs) KVP_CHECK(static_cast<int>(c.budgets.size()) == L);
  const int tasks = n_sequences() * Lm;
  if (keep_full_outputs_ && full_outputs_.empty()) full_outputs_.resize(size_t(n_sequences()) * L);
  if (!memo_) {
    memo_ = std::make_shared<LayerMemo>();
    memo_->sums.resize(size_t(n_sequences()) * L);
  }
  for (const ReplayConfig& c : configs) {
    if (c.step_energies) c.step_energies->values.assign(n_sequences(), std::vector<std::vector<float>>(L));
  }
  std::vector<std::vector<Totals>> totals(
      tasks, std::vector<Totals>(C, Totals{.rel = std::vector<double>(KVH, 0.0), .mass = std::vector<double>(KVH, 0.0)}));
  std::mutex mu;
  int64_t done = 0;
  // With DELTA roles in any configuration a task is a sequence, its layers in order (the sparse
  // layers need the pages their selection layer chose at the same steps); else a (sequence, layer).
  const bool delta = std::any_of(configs.begin(), configs.end(), [](const ReplayConfig& c) {
    return c.policy->params().delta.on();
  });
  for (const ReplayConfig& c : configs) {
    const Status replayable = check_delta_layers(c.policy->params().delta, layers, "trace");
    KVP_CHECK(replayable.ok(), "{}", replayable.error().message());
  }
  const int per_task = delta ? Lm : 1;
  parallel_for(tasks / per_task, on_step ? 1 : threads_, [&](int task) {
    std::vector<std::vector<DeltaRow>> delta_rows(delta ? C : 0);
    for (int i = task * per_task; i < (task + 1) * per_task; ++i) {
      replay(i / Lm, layers[i % Lm], configs, totals[i], on_step, delta_rows);
    }
    if (progress_) {
      std::lock_guard<std::mutex> lock(mu);
      done += per_task;
      progress_(done, tasks);
    }
  });
  // Sum per (sequence, layer) in a fixed order, so any number of threads gives the same bits.
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const int64_t decode = decode_steps();
  const double steps = std::max<double>(1.0, static_cast<double>(decode));
  std::vector<ReplayResult> results(C);
  for (size_t c = 0; c < C; ++c) {
    ReplayResult& r = results[c];
    r.rel_error.assign(L, std::vector<double>(KVH, 0.0));
    r.retained_mass = r.rel_error;
    r.resid_energy.assign(L, 0.0);
    r.attended.assign(L, 0.0);
    if (configs[c].head_energy) r.head_resid_energy.assign(L, std::vector<double>(KVH, 0.0));
    for (int i = 0; i < tasks; ++i) {
      const int l = layers[i % Lm];
      const Totals& t = totals[i][c];
      for (int h = 0; h < KVH; ++h) {
        r.rel_error[l][h] += t.rel[h] / (steps * group);
        r.retained_mass[l][h] += t.mass[h] / (steps * group);
      }
      r.resid_energy[l] += t.energy / steps;
      r.attended[l] += t.attended / (steps * KVH);
      for (size_t h = 0; h < t.head_energy.size(); ++h) r.head_resid_energy[l][h] += t.head_energy[h] / steps;
      r.cpu_seconds += t.seconds;
    }
    if (Lm < L) {
      const auto lerp = [](double a, double b, double f) { return a + (b - a) * f; };
      const auto lerp_heads = [&](const std::vector<double>& a, const std::vector<double>& b, double f) {
        std::vector<double> out(a.size());
        for (size_t h = 0; h < a.size(); ++h) out[h] = lerp(a[h], b[h], f);
        return out;
      };
      interpolate_layers(r.resid_energy, layers, lerp);
      interpolate_layers(r.attended, layers, lerp);
      interpolate_layers(r.rel_error, layers, lerp_heads);
      interpolate_layers(r.retained_mass, layers, lerp_heads);
      if (!r.head_resid_energy.empty()) interpolate_layers(r.head_resid_energy, layers, lerp_heads);
    }
    r.measured_layers = layers;
    r.head_steps = decode * model_.n_heads * Lm;
    r.seconds = wall;
  }
  return results;
}

}  // namespace kvp
