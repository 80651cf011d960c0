#include "executor/cpu/cpu_backend.h"

#include <Eigen/Core>
#include <algorithm>
#include <cmath>

namespace kvp {
namespace {

using ConstMatrixMap =
    Eigen::Map<const Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>;
using RowMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using ConstMatrixStrideMap = Eigen::Map<const RowMatrix, 0, Eigen::OuterStride<>>;
using ConstColMatrixStrideMap = Eigen::Map<const Eigen::MatrixXf, 0, Eigen::OuterStride<>>;
using VectorMap = Eigen::Map<Eigen::VectorXf>;
using ConstVectorMap = Eigen::Map<const Eigen::VectorXf>;

}  // namespace

CpuBackend::CpuBackend(const ModelWeights& weights)
    : weights_(weights), config_(weights.config()), scores_(config_.seq_len + 1) {
  static_assert(EIGEN_MAX_ALIGN_BYTES <= 64, "rows are padded for at most 64-byte packets");
  // RoPE tables as llama2.c computes them: theta_i = 10000^(-2i/head_dim), in f32.
  const int half = config_.head_dim() / 2;
  rope_cos_.resize(static_cast<size_t>(config_.seq_len) * half);
  rope_sin_.resize(rope_cos_.size());
  for (int pos = 0; pos < config_.seq_len; ++pos) {
    for (int i = 0; i < half; ++i) {
      const float freq =
          1.0f / std::pow(config_.rope_theta, static_cast<float>(2 * i) / config_.head_dim());
      const float angle = static_cast<float>(pos) * freq;
      rope_cos_[static_cast<size_t>(pos) * half + i] = std::cos(angle);
      rope_sin_[static_cast<size_t>(pos) * half + i] = std::sin(angle);
    }
  }
}

void CpuBackend::reset_sequences(const std::vector<KvBudgets>& budgets) {
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
    std::copy_n(weights_.token_embedding() + static_cast<size_t>(rows_.tokens[r]) * dim, dim,
                row(Act::kX, r));
  }
}

void CpuBackend::rmsnorm(Act in, Act out, Weight w, int layer_idx) {
  const int n = act_width(config_, in);
  const float* weight = host_weight(weights_, w, layer_idx);
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
  const ConstMatrixMap W(host_weight(weights_, w, layer_idx), shape.out, shape.in);
  for (int r = 0; r < n_rows_; ++r) {
    const ConstVectorMap x(row(in, r), shape.in);
    VectorMap y(row(out, r), shape.out);
    if (accumulate) {
      y.noalias() += W * x;
    } else {
      y.noalias() = W * x;
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
    for (int h = 0; h < n_heads; ++h) {
      float* v = x + h * head_dim;
      for (int i = 0; i < half; ++i) {
        const float v0 = v[2 * i], v1 = v[2 * i + 1];
        v[2 * i] = v0 * cos[i] - v1 * sin[i];
        v[2 * i + 1] = v0 * sin[i] + v1 * cos[i];
      }
    }
  }
}

void CpuBackend::attention(int layer_idx) {
  const int head_dim = config_.head_dim(), group = config_.group_size();
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  for (int r = 0; r < n_rows_; ++r) {
    KvCache& cache = caches_[rows_.seq_idx[r]];
    const float* q_row = row(Act::kQ, r);
    const float* k_row = row(Act::kK, r);
    const float* v_row = row(Act::kV, r);
    float* out_row = row(Act::kAttn, r);
    for (int kv_head_idx = 0; kv_head_idx < config_.n_kv_heads; ++kv_head_idx) {
      HeadCache head = cache.head(layer_idx, kv_head_idx);
      const int n_cached = *head.n_used;
      const float* k_new = k_row + kv_head_idx * head_dim;
      const float* v_new = v_row + kv_head_idx * head_dim;
      // Keys as [n_cached, head_dim] column-major and values as [head_dim, n_cached] row-major,
      // both views of the transposed [head_dim, budget] storage.
      const ConstColMatrixStrideMap keys(head.k, n_cached, head_dim, Eigen::OuterStride<>(head.budget));
      const ConstMatrixStrideMap values(head.v, head_dim, n_cached, Eigen::OuterStride<>(head.budget));
      // Each query head of the group attends over the cached slots plus the new token itself.
      for (int g = 0; g < group; ++g) {
        const int head_idx = kv_head_idx * group + g;
        const ConstVectorMap q(q_row + head_idx * head_dim, head_dim);
        VectorMap s(scores_.data(), n_cached + 1);  // [n_cached + 1], the new token last
        s.head(n_cached).noalias() = scale * (keys * q);
        s[n_cached] = scale * q.dot(ConstVectorMap(k_new, head_dim));
        s = (s.array() - s.maxCoeff()).exp();
        s /= s.sum();
        VectorMap out(out_row + head_idx * head_dim, head_dim);
        out.noalias() = values * s.head(n_cached);
        out += s[n_cached] * ConstVectorMap(v_new, head_dim);
      }
      // The full cache keeps every token; eviction under a budget is the policy's job.
      KVP_CHECK(n_cached < head.budget, "layer {} head {}: cache of {} slots is full",
                layer_idx, kv_head_idx, head.budget);
      head.store(n_cached, k_new, v_new, rows_.positions[r]);
      head.score[n_cached] = 0.0f;
      ++*head.n_used;
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
  const int dim = config_.dim;
  StepRows kept;
  for (size_t i = 0; i < row_idx.size(); ++i) {
    const int32_t r = row_idx[i];
    KVP_CHECK(r >= static_cast<int32_t>(i) && r < n_rows_, "rows must be increasing");
    if (r != static_cast<int32_t>(i)) std::copy_n(row(Act::kX, r), dim, row(Act::kX, i));
    kept.add(rows_.tokens[r], rows_.positions[r], rows_.seq_idx[r]);
  }
  rows_ = std::move(kept);
  n_rows_ = static_cast<int>(row_idx.size());
}

void CpuBackend::read(Act act, std::span<float> out) const {
  const size_t width = act_width(config_, act);
  KVP_CHECK(out.size() == n_rows_ * width, "read: expected {} floats, got {}", n_rows_ * width,
            out.size());
  for (int r = 0; r < n_rows_; ++r) std::copy_n(row(act, r), width, out.data() + r * width);
}

}  // namespace kvp
