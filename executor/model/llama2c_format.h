// llama2.c checkpoints: a 7-int32 little-endian header (dim, hidden_dim, n_layers, n_heads,
// n_kv_heads, vocab_size, seq_len; a negative vocab_size means an unshared classifier), then f32
// tensors: token_embedding [vocab, dim]; rms_att [L, dim]; wq [L, q_dim, dim]; wk, wv
// [L, kv_dim, dim]; wo [L, dim, q_dim]; rms_ffn [L, dim]; w1 [L, hidden, dim]; w2 [L, dim, hidden];
// w3 [L, hidden, dim]; rms_final [dim]; two legacy RoPE tables (seq_len * head_dim / 2 each,
// ignored); then, if unshared, the classifier [vocab, dim].
#pragma once

#include <string>

#include "executor/model/model_weights.h"

namespace kvp {

inline constexpr int64_t kLlama2cHeaderBytes = 7 * 4;

// Reads and validates only the header; the file length must match the shape it declares.
Result<ModelConfig> read_llama2c_config(const std::string& path);

// Maps a checkpoint. Every size is checked against the file length before data is read, and
// every weight must be finite (unless `check_weights` is false). Errors name the file and the
// header field or tensor.
Result<ModelWeights> load_llama2c(const std::string& path, bool check_weights = true);

// Writes `weights` as a llama2.c checkpoint, atomically.
Status save_llama2c(const std::string& path, const ModelWeights& weights);

}  // namespace kvp
