// Shape of a LLaMA-family decoder: RMSNorm, RoPE, grouped-query attention, SwiGLU, optionally
// tied classifier. Every hyper-parameter comes from the model file, never from constants.
#pragma once

#include <cstdint>
#include <string>

#include "common/status.h"

namespace kvp {

struct ModelConfig {
  int dim = 0;         // residual stream width
  int hidden_dim = 0;  // SwiGLU inner width
  int n_layers = 0;
  int n_heads = 0;     // query heads
  int n_kv_heads = 0;  // key/value heads; n_heads is a multiple of it (GQA)
  int vocab_size = 0;
  int seq_len = 0;     // longest context the model was trained for
  bool shared_classifier = true;  // classifier is the token embedding table
  float rope_theta = 10000.0f;
  float norm_eps = 1e-5f;

  int head_dim() const { return dim / n_heads; }
  int q_dim() const { return n_heads * head_dim(); }
  int kv_dim() const { return n_kv_heads * head_dim(); }
  int group_size() const { return n_heads / n_kv_heads; }  // query heads per KV head

  int64_t parameter_count() const;
  int64_t weight_bytes() const { return parameter_count() * 4; }  // f32 weights

  // Checks ranges and divisibility; errors read "field: expected ..., found ...".
  Status validate() const;
  // "dim 64, hidden_dim 172, n_layers 5, ..." for messages and `inspect`.
  std::string describe() const;
};

}  // namespace kvp
