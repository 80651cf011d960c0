// Shape of a LLaMA-family decoder: RMSNorm, RoPE, grouped-query attention, SwiGLU, optionally
// tied classifier. Every hyper-parameter comes from the model file, never from constants.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"

namespace kvp {

// How RoPE pairs the elements of a head: (2i, 2i+1) as llama2.c and GGUF `llama` store q and k, or
// (i, i + head_dim/2) ("rotate half") as Hugging Face checkpoints and GGUF `qwen2` do. The same
// rotation either way; only the layout of the q/k rows differs, so a checkpoint runs in the
// style it was stored in and nothing is permuted at load.
enum class RopeStyle { kInterleaved, kHalf };

struct ModelConfig {
  std::string architecture = "llama";  // llama or qwen2
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
  int head_size = 0;  // head dimension when the file states one; 0: dim / n_heads
  RopeStyle rope_style = RopeStyle::kInterleaved;
  // Per frequency i (head_dim / 2 of them), the divisor of theta^(-2i/head_dim): Llama 3.x
  // scaling or linear scaling; empty when the model has none.
  std::vector<float> rope_freq_divisors;
  bool qkv_bias = false;  // q, k and v projections add a bias (qwen2)

  int head_dim() const { return head_size > 0 ? head_size : dim / n_heads; }
  int q_dim() const { return n_heads * head_dim(); }
  int kv_dim() const { return n_kv_heads * head_dim(); }
  int group_size() const { return n_heads / n_kv_heads; }  // query heads per KV head

  int64_t parameter_count() const;

  // Checks ranges and divisibility; errors read "field: expected ..., found ...".
  Status validate() const;
  // "dim 64, hidden_dim 172, n_layers 5, ..." for messages and `inspect`.
  std::string describe() const;
};

}  // namespace kvp
