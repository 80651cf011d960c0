#include "executor/model/model_config.h"

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
                            d * q /* wo */ + 3 * h * d /* w1, w2, w3 */;
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
  if (dim % n_heads != 0) {
    return make_error("n_heads: expected a divisor of dim {}, found {}", dim, n_heads);
  }
  if (n_heads % n_kv_heads != 0) {
    return make_error("n_kv_heads: expected a divisor of n_heads {}, found {}", n_heads, n_kv_heads);
  }
  if (head_dim() % 2 != 0) {
    return make_error("n_heads: head_dim = dim / n_heads must be even for RoPE, found {}",
                      head_dim());
  }
  return ok_status();
}

std::string ModelConfig::describe() const {
  return fmt::format(
      "dim {}, hidden_dim {}, n_layers {}, n_heads {}, n_kv_heads {}, vocab_size {}, seq_len {}, "
      "{} classifier",
      dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len,
      shared_classifier ? "shared" : "unshared");
}

}  // namespace kvp
