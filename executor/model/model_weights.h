// The f32 weights of a decoder, in one buffer laid out as a llama2.c checkpoint is, with typed
// views into it. Matrices are [out, in] row-major (y = W x).
#pragma once

#include <string>
#include <vector>

#include "executor/model/model_config.h"

namespace kvp {

struct LayerWeights {
  const float* rms_att;  // [dim]
  const float* wq;       // [q_dim, dim]
  const float* wk;       // [kv_dim, dim]
  const float* wv;       // [kv_dim, dim]
  const float* wo;       // [dim, q_dim]
  const float* rms_ffn;  // [dim]
  const float* w1;       // [hidden_dim, dim]  gate
  const float* w2;       // [dim, hidden_dim]  down
  const float* w3;       // [hidden_dim, dim]  up
};

class ModelWeights {
 public:
  // Takes the floats of a llama2.c checkpoint after its header (legacy RoPE tables included).
  // REQUIRES: config.validate().ok() and data.size() == llama2c_float_count(config).
  ModelWeights(const ModelConfig& config, std::vector<float> data);

  ModelWeights(ModelWeights&&) = default;
  ModelWeights& operator=(ModelWeights&&) = default;
  ModelWeights(const ModelWeights&) = delete;
  ModelWeights& operator=(const ModelWeights&) = delete;

  const ModelConfig& config() const { return config_; }
  const float* token_embedding() const { return token_embedding_; }  // [vocab_size, dim]
  const LayerWeights& layer(int layer_idx) const { return layers_[layer_idx]; }
  const float* rms_final() const { return rms_final_; }    // [dim]
  const float* classifier() const { return classifier_; }  // [vocab_size, dim]
  const std::vector<float>& data() const { return data_; }

  // A model of `n_layers` whose layers all view `one_layer`'s single layer: the host memory of one
  // layer, for device benchmarks of large shapes where the values do not matter. data() then holds
  // the one-layer checkpoint.
  static ModelWeights repeat_layer(ModelWeights one_layer, int n_layers);

  // Where the weights came from: a file path, or "random(seed=...)".
  const std::string& source() const { return source_; }
  void set_source(std::string source) { source_ = std::move(source); }

 private:
  ModelConfig config_;
  std::vector<float> data_;
  const float* token_embedding_ = nullptr;
  std::vector<LayerWeights> layers_;
  const float* rms_final_ = nullptr;
  const float* classifier_ = nullptr;
  std::string source_;
};

// A named range of floats in the llama2.c layout (all layers of one kind together).
struct TensorSpan {
  std::string name;
  size_t offset;  // floats from the start of the data after the header
  size_t count;
};

// The weight tensors of this shape in file order (the legacy RoPE tables excluded).
std::vector<TensorSpan> llama2c_tensor_spans(const ModelConfig& config);

// Floats after the 7-int header of a llama2.c checkpoint of this shape.
int64_t llama2c_float_count(const ModelConfig& config);

// Weights of the given shape drawn from a seeded normal distribution scaled like an initialised
// network (std 0.02, norms 1). For speed and memory work where quality does not matter.
ModelWeights random_weights(const ModelConfig& config, uint64_t seed);

}  // namespace kvp
