#include "executor/model/model_config.h"

#include <cmath>

namespace kvp {
namespace {

// Upper bounds far beyond any real model; they keep every size computation inside int64.
constexpr int kMaxDim = 1 << 16;
constexpr int kMaxHiddenDim = 1 << 18;
constexpr int kMaxLayers = 1024;
constexpr int kMaxHeads = 1024;
constexpr int kMaxVocab = 1 << 22;
constexpr int kMaxSeqLen = 1 << 22;

Status check_range(const char* field, int value, int lo, int hi) {
  if (value < lo || value > hi) {
    return make_error("{}: expected {}..{}, found {}", field, lo, hi, value);
  }
  return ok_status();
}

}  // namespace

int64_t ModelConfig::parameter_count() const {
  const int64_t d = dim, h = hidden_dim, q = q_dim(), kv = kv_dim();
  const int64_t per_layer = 2 * d /* rms_att, rms_ffn */ + q * d /* wq */ + 2 * kv * d /* wk, wv */ +
                            d * q /* wo */ + 3 * h * d /* w1, w2, w3 */ +
                            (qkv_bias ? q + 2 * kv : 0);
  const int64_t embedding = int64_t{vocab_size} * d;
  return embedding + n_layers * per_layer + d /* rms_final */ + (shared_classifier ? 0 : embedding);
}

Status ModelConfig::validate() const {
  KVP_RETURN_IF_ERROR(check_range("dim", dim, 1, kMaxDim));
  KVP_RETURN_IF_ERROR(check_range("hidden_dim", hidden_dim, 1, kMaxHiddenDim));
  KVP_RETURN_IF_ERROR(check_range("n_layers", n_layers, 1, kMaxLayers));
  KVP_RETURN_IF_ERROR(check_range("n_heads", n_heads, 1, kMaxHeads));
  KVP_RETURN_IF_ERROR(check_range("n_kv_heads", n_kv_heads, 1, n_heads));
  KVP_RETURN_IF_ERROR(check_range("vocab_size", vocab_size, 3, kMaxVocab));
  KVP_RETURN_IF_ERROR(check_range("seq_len", seq_len, 1, kMaxSeqLen));
  if (head_size < 0 || head_size > 1024) {
    return make_error("head_dim: expected 1..1024, found {}", head_size);
  }
  if (head_size == 0 && dim % n_heads != 0) {
    return make_error("n_heads: expected a divisor of dim {}, found {}", dim, n_heads);
  }
  if (n_heads % n_kv_heads != 0) {
    return make_error("n_kv_heads: expected a divisor of n_heads {}, found {}", n_heads, n_kv_heads);
  }
  if (head_dim() % 2 != 0) {
    return make_error("head_dim: expected an even head dimension for RoPE, found {}", head_dim());
  }
  if (!(rope_theta > 0.0f) || !std::isfinite(rope_theta)) {
    return make_error("rope_theta: expected a positive finite base, found {}", rope_theta);
  }
  if (!(norm_eps > 0.0f) || !(norm_eps < 1.0f)) {
    return make_error("norm_eps: expected a value in (0, 1), found {}", norm_eps);
  }
  if (!rope_freq_divisors.empty() && static_cast<int>(rope_freq_divisors.size()) != head_dim() / 2) {
    return make_error("rope_freq_divisors: expected {} (head_dim / 2), found {}", head_dim() / 2,
                      rope_freq_divisors.size());
  }
  for (float f : rope_freq_divisors) {
    if (!(f > 0.0f) || !std::isfinite(f)) {
      return make_error("rope_freq_divisors: expected positive finite factors, found {}", f);
    }
  }
  return ok_status();
}

std::string ModelConfig::describe() const {
  return fmt::format(
      "dim {}, hidden_dim {}, n_layers {}, n_heads {}, n_kv_heads {}, vocab_size {}, seq_len {}, "
      "{} classifier{}",
      dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len,
      shared_classifier ? "shared" : "unshared",
      head_size > 0 && head_size * n_heads != dim ? fmt::format(", head_dim {}", head_size) : "");
}

}  // namespace kvp
