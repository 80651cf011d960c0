#include "executor/cpu/cpu_backend.h"

#include "executor/cpu/dot_kernels.h"


#include <Eigen/Core>
#include <algorithm>
#include <cmath>

namespace kvp {
namespace {


using VectorMap = Eigen::Map<Eigen::VectorXf>;
using ConstVectorMap = Eigen::Map<const Eigen::VectorXf>;

}  // namespace

CpuBackend::CpuBackend(const ModelWeights& weights, int threads)
    : weights_(weights),
      config_(weights.config()),
      pool_(std::make_unique<ThreadPool>(threads)),
      step_scratch_(config_.seq_len) {
  static_assert(EIGEN_MAX_ALIGN_BYTES <= 64, "rows are padded for at most 64-byte packets");
  rope_tables(config_, &rope_cos_, &rope_sin_);
}

void CpuBackend::reset_sequences(const std::vector<KvBudgets>& budgets,
                                 std::shared_ptr<const Policy> policy) {
  policy_ = policy ? std::move(policy) : keep_all_policy();
  caches_.clear();
  caches_.reserve(budgets.size());
  for (const KvBudgets& b : budgets) {
    KVP_CHECK(b.n_layers == config_.n_layers && b.n_kv_heads == config_.n_kv_heads &&
              b.head_dim == config_.head_dim());
    caches_.emplace_back(b);
  }
}

int64_t CpuBackend::kv_bytes_allocated() const {
  int64_t total = 0;
  for (const KvCache& c : caches_) total += c.bytes();
  return total;
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

void CpuBackend::matmul_rows(Weight w, int layer_idx, Act in, Act out, bool accumulate) {
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

void CpuBackend::heads_of(KvCache& cache, int layer_idx, std::vector<HeadSlots>* heads) const {
  heads->clear();
  for (int h = 0; h < config_.n_kv_heads; ++h) heads->push_back(cache.head(layer_idx, h));
}

EvictFn CpuBackend::eviction_logger(int seq, int32_t step, int layer_idx) {
  if (!eviction_log_) return {};
  return [this, seq, step, layer_idx](int kv_head_idx, int32_t pos, float key) {
    eviction_log_->push_back(EvictionRecord{.seq_idx = seq, .step = step, .layer_idx = layer_idx,
                                            .kv_head_idx = kv_head_idx, .evicted_pos = pos, .score = key});
  };
}

void CpuBackend::step_row(int r, int seq, int layer_idx, KvCache& cache, int cache_layer, int prompt_len) {
  heads_of(cache, cache_layer, &row_heads_);
  layer_step(*policy_, row_heads_,
             TokenRow{.q = row(Act::kQ, r), .k = row(Act::kK, r), .v = row(Act::kV, r),
                      .pos = rows_.positions[r], .layer_idx = layer_idx, .prompt_len = prompt_len},
             config_.group_size(), row(Act::kAttn, r), nullptr, step_scratch_,
             eviction_logger(seq, rows_.positions[r], layer_idx));
}

void CpuBackend::prefill(int first, int n, int seq, int layer_idx) {
  KvCache& cache = caches_[seq];
  const int n_kv_heads = config_.n_kv_heads, head_dim = config_.head_dim();
  const int aux = cache.budgets().aux_floats_per_slot;
  if (!scratch_ || scratch_->budgets().budget_tokens[0] < n || scratch_->budgets().aux_floats_per_slot != aux) {
    KvBudgets b = KvBudgets::uniform(1, n_kv_heads, head_dim, std::max(n, config_.seq_len));
    b.aux_floats_per_slot = aux;
    scratch_ = std::make_unique<KvCache>(b);
  }
  scratch_->clear();
  for (int i = 0; i < n; ++i) {
    KVP_CHECK(rows_.positions[first + i] == i, "a prefill starts at position 0 and runs in order");
    step_row(first + i, seq, layer_idx, *scratch_, 0, n);
  }
  heads_of(*scratch_, 0, &prefill_heads_);
  heads_of(cache, layer_idx, &row_heads_);
  cut_prefill(*policy_, prefill_heads_, row_heads_,
              eviction_logger(seq, rows_.positions[first + n - 1], layer_idx));
}

void CpuBackend::attention(int layer_idx) {
  for (int first = 0; first < n_rows_;) {
    const int seq = rows_.seq_idx[first];
    int n = 1;
    while (first + n < n_rows_ && rows_.seq_idx[first + n] == seq) ++n;
    KvCache& cache = caches_[seq];
    if (*cache.head(layer_idx, 0).n_used == 0) {
      prefill(first, n, seq, layer_idx);
    } else {
      for (int i = 0; i < n; ++i) step_row(first + i, seq, layer_idx, cache, layer_idx, 0);
    }
    first += n;
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
