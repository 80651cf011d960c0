#include "executor/cpu/cpu_backend.h"

#include <chrono>
#include <utility>

#include "executor/cpu/dot_kernels.h"


#include <Eigen/Core>
#include <algorithm>
#include <cmath>

namespace kvp {
namespace {


using VectorMap = Eigen::Map<Eigen::VectorXf>;
using ConstVectorMap = Eigen::Map<const Eigen::VectorXf>;

}  // namespace

int64_t cpu_activation_bytes(const ModelConfig& config, int64_t rows, int64_t logit_rows) {
  int64_t floats = 0;
  for (int a = 0; a < kNumActs; ++a) {
    const Act act = static_cast<Act>(a);
    floats += (act == Act::kLogits ? logit_rows : rows) * ((act_width(config, act) + 15) / 16 * 16);
  }
  return floats * int64_t{sizeof(float)};
}

CpuBackend::CpuBackend(const ModelWeights& weights, int threads)
    : weights_(weights),
      config_(weights.config()),
      pool_(std::make_unique<ThreadPool>(threads)) {
  static_assert(EIGEN_MAX_ALIGN_BYTES <= 64, "rows are padded for at most 64-byte packets");
  rope_tables(config_, &rope_cos_, &rope_sin_);
  for (int t = 0; t < pool_->n_threads(); ++t) workers_.emplace_back(config_.seq_len);
}

void CpuBackend::reset_sequences(const std::vector<KvBudgets>& budgets,
                                 std::shared_ptr<const Policy> policy) {
  if (!policy) policy = keep_all_policy();
  // The old caches' storage serves the new ones where it is large enough (smallest first).
  std::vector<KvCache::Arena> spare;
  for (KvCache& c : caches_) spare.push_back(std::move(c).release());
  caches_.clear();
  caches_.reserve(budgets.size());
  for (const KvBudgets& b : budgets) {
    KVP_CHECK(b.n_layers == config_.n_layers && b.n_kv_heads == config_.n_kv_heads &&
              b.head_dim == config_.head_dim());
    const size_t need = static_cast<size_t>(b.kv_bytes());
    auto best = spare.end();
    for (auto it = spare.begin(); it != spare.end(); ++it) {
      if (it->data && it->bytes >= need && (best == spare.end() || it->bytes < best->bytes)) best = it;
    }
    caches_.emplace_back(b, best == spare.end() ? KvCache::Arena{} : std::move(*best));
  }
  policies_.assign(budgets.size(), policy);
  prompts_.clear();
  prompts_.resize(budgets.size());
  scorers_.clear();
  scorers_.resize(budgets.size());
  peak_kv_bytes_ = 0;
  attend_stats_ = {};
  note_kv_bytes();
}

void CpuBackend::open_sequence(int seq, const KvBudgets& budgets, std::shared_ptr<const Policy> policy) {
  KVP_CHECK(seq >= 0 && seq < static_cast<int>(caches_.size()), "open_sequence: no sequence {}", seq);
  KVP_CHECK(budgets.n_layers == config_.n_layers && budgets.n_kv_heads == config_.n_kv_heads &&
            budgets.head_dim == config_.head_dim());
  close_sequence(seq);
  caches_[seq] = KvCache(budgets);
  policies_[seq] = policy ? std::move(policy) : keep_all_policy();
  note_kv_bytes();
}

void CpuBackend::close_sequence(int seq) {
  KVP_CHECK(seq >= 0 && seq < static_cast<int>(caches_.size()), "close_sequence: no sequence {}", seq);
  caches_[seq] = KvCache(KvBudgets::uniform(config_.n_layers, config_.n_kv_heads, config_.head_dim(), 0));
  prompts_[seq] = Prompt{};
  scorers_[seq] = Scorers{};
}

void CpuBackend::score_prompt_for(int seq, std::vector<std::shared_ptr<const Policy>> scorers) {
  KVP_CHECK(seq >= 0 && seq < static_cast<int>(caches_.size()), "score_prompt_for: no sequence {}", seq);
  KVP_CHECK(prefill_mode_.evict_chunk == 0, "a shared prefill holds the whole prompt (no --prefill-evict)");
  KVP_CHECK(!prompts_[seq].scratch, "sequence {}: scorers set while its prompt is being prefilled", seq);
  scorers_[seq] = Scorers{.policies = std::move(scorers)};
}

void CpuBackend::fork_prompt(int src, int scorer, int dst, const KvBudgets& budgets, std::shared_ptr<const Policy> policy) {
  const Scorers& sc = scorers_[src];
  KVP_CHECK(scorer >= 0 && scorer < static_cast<int>(sc.policies.size()) && sc.prompt_len > 0 && !prompts_[src].scratch,
            "fork_prompt: sequence {} has no prompt scored by scorer {}", src, scorer);
  KVP_CHECK(src != dst && policy, "fork_prompt: a policy and another sequence");
  KVP_CHECK(budgets.aux_floats_per_slot >= policy->aux_floats_per_slot(), "fork_prompt: budgets without the policy's aux floats");
  KVP_CHECK(!budgets.compressed(), "fork_prompt: ThinK and Mustafar caches are cut in their own prefill");
  open_sequence(dst, budgets, std::move(policy));
  const Policy& p = *policies_[dst];
  const int n_kv = config_.n_kv_heads, n = sc.prompt_len;
  std::vector<std::vector<float>> score(n_kv), aux(n_kv);
  std::vector<HeadSlots> from, to;
  std::vector<int32_t> head_budgets;
  for (int l = 0; l < config_.n_layers; ++l) {
    from.clear(), to.clear(), head_budgets.clear();
    for (int h = 0; h < n_kv; ++h) {
      HeadSlots f = caches_[src].head(l, h);
      KVP_CHECK(*f.n_used == n && f.pos[n - 1] == n - 1, "fork_prompt: sequence {} no longer holds its prompt", src);
      // Copies: finish_prefill rewrites the scores it cuts by.
      score[h] = sc.score[scorer][size_t(l) * n_kv + h];
      f.score = score[h].data();
      f.aux = nullptr;
      if (p.aux_floats_per_slot() > 0) {
        aux[h] = sc.aux[scorer][size_t(l) * n_kv + h];
        f.aux = aux[h].data();
      }
      from.push_back(f);
      to.push_back(caches_[dst].head(l, h));
      head_budgets.push_back(to.back().budget);
    }
    cut_slots(p, from, to, head_budgets, n - 1, true, eviction_logger(dst, n - 1, l, 0));
  }
  note_kv_bytes();
}

std::span<const float> CpuBackend::prompt_scores(int seq, int scorer, int layer, int head, bool aux) const {
  const Scorers& sc = scorers_[seq];
  KVP_CHECK(scorer >= 0 && scorer < static_cast<int>(sc.policies.size()) && sc.prompt_len > 0,
            "prompt_scores: sequence {} has no prompt scored by scorer {}", seq, scorer);
  const auto& v = (aux ? sc.aux : sc.score)[scorer][size_t(layer) * config_.n_kv_heads + head];
  return std::span<const float>(v.data(), size_t(sc.prompt_len));
}

int64_t CpuBackend::kv_bytes_allocated() const {
  int64_t total = 0;
  for (const KvCache& c : caches_) total += c.bytes();
  return total;
}

void CpuBackend::fill_for_benchmark(int n_positions) {
  for (size_t seq = 0; seq < caches_.size(); ++seq) {
    KvCache& cache = caches_[seq];
    const int sinks = policies_[seq]->params().sinks;
    const KvBudgets& b = cache.budgets();
    for (int l = 0; l < b.n_layers; ++l) {
      for (int h = 0; h < b.n_kv_heads; ++h) {
        const HeadSlots head = cache.head(l, h);
        const int n = std::min(head.budget, n_positions), s = std::min(sinks, n);
        std::fill_n(head.k, size_t(head.budget) * head.head_dim, 0.0f);
        std::fill_n(head.v, size_t(head.budget) * head.head_dim, 0.0f);
        std::fill_n(head.score, head.budget, 0.0f);
        if (head.aux) std::fill_n(head.aux, head.budget, 0.0f);
        for (int j = 0; j < s; ++j) head.pos[j] = j;
        for (int j = s; j < n; ++j) head.pos[j] = n_positions - (n - j);
        *head.n_used = n;
      }
    }
  }
}

void CpuBackend::note_kv_bytes() {
  int64_t total = kv_bytes_allocated();
  for (const Prompt& p : prompts_) total += p.scratch ? p.scratch->bytes() : 0;
  peak_kv_bytes_ = std::max(peak_kv_bytes_, total);
}

void CpuBackend::start_prompt(int seq, int prompt_len) {
  Prompt& p = prompts_[seq];
  p.prompt_len = prompt_len;
  p.next_pos = 0;
  if (Scorers& sc = scorers_[seq]; !sc.policies.empty()) {
    KVP_CHECK(!policies_[seq]->evicts(), "sequence {}: a scored prompt runs under a policy that keeps every slot", seq);
    const size_t heads = size_t(config_.n_layers) * config_.n_kv_heads;
    sc.prompt_len = prompt_len;
    sc.score.assign(sc.policies.size(), std::vector<std::vector<float>>(heads, std::vector<float>(prompt_len, 0.0f)));
    sc.aux = sc.score;
  }
  // Held whole, or (--prefill-evict) each head's budget plus one chunk.
  p.scratch = std::make_unique<KvCache>(caches_[seq].budgets().prefill_scratch(prompt_len, prefill_mode_.evict_chunk));
  note_kv_bytes();
}

void CpuBackend::begin_step(const StepRows& rows) {
  rows_ = rows;
  n_rows_ = static_cast<int>(rows.size());
  for (int a = 0; a < kNumActs; ++a) {
    const size_t need = n_rows_ * row_stride(act_width(config_, static_cast<Act>(a)));
    if (acts_[a].size() < need) acts_[a].resize(need);
  }
  for (size_t r = 0; r < rows.size(); ++r) {
    KVP_CHECK(rows.seq_idx[r] >= 0 && rows.seq_idx[r] < static_cast<int>(caches_.size()));
    KVP_CHECK(rows.positions[r] >= 0 && rows.positions[r] < config_.seq_len);
    KVP_CHECK(rows.tokens[r] >= 0 && rows.tokens[r] < config_.vocab_size);
  }
  // Each sequence's rows: a prompt's (a whole prompt of a fresh sequence, or a chunk) or decode rows.
  runs_.clear();
  for (int first = 0; first < n_rows_;) {
    const int seq = rows.seq_idx[first];
    int n = 1;
    while (first + n < n_rows_ && rows.seq_idx[first + n] == seq) ++n;
    Prompt& p = prompts_[seq];
    int prompt_len = rows.prompt_len[first];
    if (prompt_len == 0 && !p.scratch && *caches_[seq].head(0, 0).n_used == 0) prompt_len = n;  // a whole prompt
    if (prompt_len > 0) {
      if (rows.positions[first] == 0) {
        KVP_CHECK(!p.scratch, "sequence {}: a new prompt while one is being prefilled", seq);
        start_prompt(seq, prompt_len);
      }
      KVP_CHECK(p.scratch && p.prompt_len == prompt_len, "sequence {}: prompt rows of no prompt in progress", seq);
      for (int i = 0; i < n; ++i) {
        KVP_CHECK(rows.positions[first + i] == p.next_pos++ && rows.prompt_len[first + i] == rows.prompt_len[first],
                  "sequence {}: a prompt's rows run in order from position 0", seq);
      }
      KVP_CHECK(p.next_pos <= prompt_len, "sequence {}: more rows than its prompt of {}", seq, prompt_len);
    } else {
      KVP_CHECK(!p.scratch, "sequence {}: decode rows before its prompt is prefilled", seq);
    }
    runs_.push_back(Run{.first = first, .n = n, .seq = seq, .prompt_len = prompt_len});
    first += n;
  }
  delta_rows_.resize(n_rows_);
  for (DeltaRow& d : delta_rows_) d.chosen.clear(), d.pos_chosen.clear();
}

void CpuBackend::layer_units(int layer_idx) {
  // A run's rows through one KV head, or through all of them for a policy that keeps one set per
  // layer, at a DELTA selection layer (its page scores take the maximum over all heads) and with an
  // eviction log, which must come in row order. Units touch disjoint heads and rows (a sparse
  // layer's units only read their row's chosen pages), so they run on any thread.
  const int n_kv_heads = config_.n_kv_heads;
  units_.clear();
  for (size_t i = 0; i < runs_.size(); ++i) {
    const Policy& policy = *policies_[runs_[i].seq];
    const bool whole = policy.shared_per_layer() || eviction_log_ ||
                       (runs_[i].prompt_len == 0 && policy.params().delta.role(layer_idx) == kDeltaSelect);
    const int per_unit = whole ? n_kv_heads : 1;
    for (int h0 = 0; h0 < n_kv_heads; h0 += per_unit) units_.push_back(Unit{static_cast<int>(i), h0, h0 + per_unit});
  }
}

void CpuBackend::embed() {
  const int dim = config_.dim;
  for (int r = 0; r < n_rows_; ++r) {
    dequantize_row(weights_.token_embedding(), rows_.tokens[r], std::span<float>(row(Act::kX, r), dim));
  }
}

void CpuBackend::rmsnorm(Act in, Act out, Weight w, int layer_idx) {
  const int n = act_width(config_, in);
  const float* weight = norm_weight(weights_, w, layer_idx);
  for (int r = 0; r < n_rows_; ++r) {
    const float* x = row(in, r);
    float* y = row(out, r);
    float ss = 0.0f;
    for (int i = 0; i < n; ++i) ss += x[i] * x[i];
    const float inv_rms = 1.0f / std::sqrt(ss / static_cast<float>(n) + config_.norm_eps);
    for (int i = 0; i < n; ++i) y[i] = weight[i] * (inv_rms * x[i]);
  }
}

namespace {
double now_s() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }
}  // namespace

CpuBackend::PhaseTimer::PhaseTimer(bool on, double* p) : part(on ? p : nullptr), start(on ? now_s() : 0.0) {}
CpuBackend::PhaseTimer::~PhaseTimer() {
  if (part) *part += now_s() - start;
}

void CpuBackend::matmul_rows(Weight w, int layer_idx, Act in, Act out, bool accumulate) {
  const PhaseTimer timer(time_phases_, &phases_.weights_s);
  const WeightShape shape = weight_shape(config_, w);
  KVP_CHECK(act_width(config_, in) == shape.in && act_width(config_, out) == shape.out);
  const WeightTensor& W = matrix_weight(weights_, w, layer_idx);
  KVP_CHECK(W.rows == shape.out && W.cols == shape.in);
  if (n_rows_ == 0) return;
  const MatmulArgs args{.w = &W, .x = row(in, 0), .x_stride = row_stride(shape.in), .y = row(out, 0),
                        .y_stride = row_stride(shape.out), .n_rows = n_rows_, .accumulate = accumulate};
  // Output rows in parts of 16, so that threads never write the same cache line of y.
  pool_->run([&](int part, int n_parts) {
    const RowRange r = split_rows(W.rows, part, n_parts, 16);
    matmul_range(args, r.begin, r.end);
  });
  if (const float* bias = matrix_bias(weights_, w, layer_idx)) {
    for (int r = 0; r < n_rows_; ++r) {
      float* y = row(out, r);
      for (int o = 0; o < shape.out; ++o) y[o] += bias[o];
    }
  }
}

void CpuBackend::matmul(Weight w, int layer_idx, Act in, Act out) {
  matmul_rows(w, layer_idx, in, out, false);
}

void CpuBackend::matmul_add(Weight w, int layer_idx, Act in, Act out) {
  matmul_rows(w, layer_idx, in, out, true);
}

void CpuBackend::rope(Act qk) {
  const int head_dim = config_.head_dim(), half = head_dim / 2;
  const int n_heads = act_width(config_, qk) / head_dim;
  for (int r = 0; r < n_rows_; ++r) {
    const float* cos = rope_cos_.data() + static_cast<size_t>(rows_.positions[r]) * half;
    const float* sin = rope_sin_.data() + static_cast<size_t>(rows_.positions[r]) * half;
    float* x = row(qk, r);
    // Pair i is (2i, 2i+1) for interleaved checkpoints, (i, i + half) for rotate-half ones.
    const int stride = config_.rope_style == RopeStyle::kInterleaved ? 2 : 1;
    const int offset = config_.rope_style == RopeStyle::kInterleaved ? 1 : half;
    for (int h = 0; h < n_heads; ++h) {
      float* v = x + h * head_dim;
      for (int i = 0; i < half; ++i) {
        float& a = v[stride * i];
        float& b = v[stride * i + offset];
        const float v0 = a, v1 = b;
        a = v0 * cos[i] - v1 * sin[i];
        b = v0 * sin[i] + v1 * cos[i];
      }
    }
  }
}

void CpuBackend::heads_of(KvCache& cache, int layer_idx, int h0, int h1, std::vector<HeadSlots>* heads) const {
  heads->clear();
  for (int h = h0; h < h1; ++h) heads->push_back(cache.head(layer_idx, h));
}

EvictFn CpuBackend::eviction_logger(int seq, int32_t step, int layer_idx, int h0) {
  if (!eviction_log_) return {};
  return [this, seq, step, layer_idx, h0](int kv_head_idx, int32_t pos, float key) {
    eviction_log_->push_back(EvictionRecord{.seq_idx = seq, .step = step, .layer_idx = layer_idx,
                                            .kv_head_idx = h0 + kv_head_idx, .evicted_pos = pos, .score = key});
  };
}

void CpuBackend::decode_row(Worker& w, int r, int seq, int layer_idx, int h0, int h1) {
  heads_of(caches_[seq], layer_idx, h0, h1, &w.heads);
  const int group = config_.group_size(), hd = config_.head_dim();
  const size_t q_at = static_cast<size_t>(h0) * group * hd, kv_at = static_cast<size_t>(h0) * hd;
  // A DELTA row's pages pass from its selection layer to the sparse layers in delta_rows_.
  const bool delta = policies_[seq]->params().delta.on();
  layer_step(*policies_[seq], w.heads,
             TokenRow{.q = row(Act::kQ, r) + q_at, .k = row(Act::kK, r) + kv_at, .v = row(Act::kV, r) + kv_at,
                      .pos = rows_.positions[r], .layer_idx = layer_idx, .prompt_len = 0, .kv_head_first = h0,
                      .delta = delta ? &delta_rows_[r] : nullptr},
             group, row(Act::kAttn, r) + q_at, nullptr, w.scratch,
             eviction_logger(seq, rows_.positions[r], layer_idx, h0));
}

void CpuBackend::prefill_rows(Worker& w, const Run& run, int layer_idx, int h0, int h1) {
  Prompt& p = prompts_[run.seq];
  std::vector<int32_t> budgets;
  heads_of(*p.scratch, layer_idx, h0, h1, &w.heads);
  heads_of(caches_[run.seq], layer_idx, h0, h1, &w.dest);
  for (const HeadSlots& d : w.dest) budgets.push_back(d.budget);
  const int group = config_.group_size(), hd = config_.head_dim();
  const size_t q_at = static_cast<size_t>(h0) * group * hd, kv_at = static_cast<size_t>(h0) * hd;
  // The sequence's scorers, over heads [h0, h1) of this layer.
  Scorers& sc = scorers_[run.seq];
  std::vector<ScoreObserver> observers;
  std::vector<std::vector<float*>> obs_score(sc.policies.size()), obs_aux(sc.policies.size());
  for (size_t o = 0; o < sc.policies.size(); ++o) {
    for (int h = h0; h < h1; ++h) {
      obs_score[o].push_back(sc.score[o][size_t(layer_idx) * config_.n_kv_heads + h].data());
      obs_aux[o].push_back(sc.aux[o][size_t(layer_idx) * config_.n_kv_heads + h].data());
    }
    observers.push_back(ScoreObserver{.policy = sc.policies[o].get(), .score = obs_score[o], .aux = obs_aux[o]});
  }
  for (int i = 0; i < run.n; ++i) {
    const int r = run.first + i;
    const int32_t pos = rows_.positions[r];
    prefill_row(*policies_[run.seq], w.heads, w.dest, budgets,
                TokenRow{.q = row(Act::kQ, r) + q_at, .k = row(Act::kK, r) + kv_at, .v = row(Act::kV, r) + kv_at,
                         .pos = pos, .layer_idx = layer_idx, .prompt_len = p.prompt_len, .kv_head_first = h0},
                group, row(Act::kAttn, r) + q_at, w.scratch, prefill_mode_.evict_chunk,
                eviction_logger(run.seq, pos, layer_idx, h0), observers);
  }
}

void CpuBackend::attention(int layer_idx) {
  const PhaseTimer timer(time_phases_, &phases_.attention_s);
  layer_units(layer_idx);
  // The layer's work units: with an eviction log they run in order on one thread, so the log comes
  // in row order.
  const size_t n_units = units_.size();
  auto do_unit = [&](Worker& w, size_t u) {
    const Unit& unit = units_[u];
    const Run& run = runs_[unit.run];
    if (run.prompt_len > 0) {
      prefill_rows(w, run, layer_idx, unit.h0, unit.h1);
    } else {
      for (int i = 0; i < run.n; ++i) decode_row(w, run.first + i, run.seq, layer_idx, unit.h0, unit.h1);
    }
  };
  if (eviction_log_ || pool_->n_threads() == 1 || n_units == 1) {
    for (size_t u = 0; u < n_units; ++u) do_unit(workers_[0], u);
  } else {
    pool_->run([&](int part, int n_parts) {
      for (size_t u = part; u < n_units; u += n_parts) do_unit(workers_[part], u);
    });
  }
  if (layer_idx == config_.n_layers - 1) {
    for (const Run& run : runs_) {
      if (run.prompt_len == 0) attend_stats_.head_steps += int64_t{run.n} * config_.n_layers * config_.n_kv_heads;
    }
    for (Worker& w : workers_) attend_stats_.keys += std::exchange(w.scratch.attended, 0);
    for (Prompt& p : prompts_) {
      if (p.scratch && p.next_pos == p.prompt_len) p.scratch.reset();  // cut into the cache at every layer
    }
  }
}

void CpuBackend::swiglu(Act gate, Act up) {
  const int n = act_width(config_, gate);
  for (int r = 0; r < n_rows_; ++r) {
    VectorMap g(row(gate, r), n);
    const ConstVectorMap u(row(up, r), n);
    // silu(g) = g * sigmoid(g), with Eigen's vectorised exp.
    g.array() = g.array() * (1.0f + (-g.array()).exp()).inverse() * u.array();
  }
}

void CpuBackend::select_rows(std::span<const int32_t> row_idx) {
  rows_ = select_step_rows(rows_, row_idx,
                           [&](int32_t from, int32_t to) { std::copy_n(row(Act::kX, from), config_.dim, row(Act::kX, to)); });
  n_rows_ = static_cast<int>(row_idx.size());
}

void CpuBackend::read(Act act, std::span<float> out) const {
  const size_t width = act_width(config_, act);
  KVP_CHECK(out.size() == n_rows_ * width, "read: expected {} floats, got {}", n_rows_ * width,
            out.size());
  for (int r = 0; r < n_rows_; ++r) std::copy_n(row(act, r), width, out.data() + r * width);
}

}  // namespace kvp
