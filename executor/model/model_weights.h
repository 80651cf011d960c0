// The weights of a decoder: named tensors, each in its stored type (weight_tensor.h), viewed
// where they live — a memory-mapped model file, or buffers this object owns — never widened to
// f32 as a whole. Norm weights and biases are vectors and are kept as f32. Matrices are [out, in]
// row-major (y = W x).
//
// Canonical tensor names are GGUF's: token_embd.weight, output_norm.weight, output.weight, and per
// layer blk.L.{attn_norm, attn_q, attn_k, attn_v, attn_output, ffn_norm, ffn_gate, ffn_down,
// ffn_up}.weight and blk.L.attn_{q,k,v}.bias. Each reader maps its own names onto these.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "executor/model/model_config.h"
#include "executor/model/weight_tensor.h"

namespace kvp {

struct LayerWeights {
  const float* rms_att = nullptr;  // [dim]
  WeightTensor wq;                 // [q_dim, dim]
  WeightTensor wk;                 // [kv_dim, dim]
  WeightTensor wv;                 // [kv_dim, dim]
  WeightTensor wo;                 // [dim, q_dim]
  const float* bq = nullptr;       // [q_dim]  (qkv_bias only)
  const float* bk = nullptr;       // [kv_dim] (qkv_bias only)
  const float* bv = nullptr;       // [kv_dim] (qkv_bias only)
  const float* rms_ffn = nullptr;  // [dim]
  WeightTensor w1;                 // [hidden_dim, dim]  gate
  WeightTensor w2;                 // [dim, hidden_dim]  down
  WeightTensor w3;                 // [hidden_dim, dim]  up
};

// Tensors by canonical name, as a reader found them.
using NamedTensors = std::map<std::string, WeightTensor>;

class ModelWeights {
 public:
  // Takes the floats of a llama2.c checkpoint after its header (legacy RoPE tables included).
  // REQUIRES: config.validate().ok() and data.size() == llama2c_float_count(config).
  ModelWeights(const ModelConfig& config, std::vector<float> data);

  // Checks that `tensors` hold exactly the tensors `config` needs, with their shapes and row
  // layouts (output.weight may be missing when the classifier is shared), and builds the views.
  // `storage` keeps the memory the tensors point into alive. Errors name `source` and the tensor.
  static Result<ModelWeights> from_tensors(const ModelConfig& config, const NamedTensors& tensors,
                                           std::vector<std::shared_ptr<const void>> storage,
                                           const std::string& source);

  ModelWeights(ModelWeights&&) = default;
  ModelWeights& operator=(ModelWeights&&) = default;
  ModelWeights(const ModelWeights&) = delete;
  ModelWeights& operator=(const ModelWeights&) = delete;

  const ModelConfig& config() const { return config_; }
  const WeightTensor& token_embedding() const { return token_embedding_; }  // [vocab_size, dim]
  const LayerWeights& layer(int layer_idx) const { return layers_[layer_idx]; }
  const float* rms_final() const { return rms_final_; }                      // [dim]
  const WeightTensor& classifier() const { return classifier_; }            // [vocab_size, dim]

  // Every tensor by canonical name, in the stored type (norms and biases as f32).
  const NamedTensors& tensors() const { return tensors_; }
  // Bytes of all tensors as held (the shared classifier counted once).
  int64_t weight_bytes() const;
  // "f16 (7), f32 (11)": how many tensors of each type.
  std::string type_summary() const;

  // A model of `n_layers` whose layers all view `one_layer`'s single layer: the host memory of one
  // layer, for device benchmarks of large shapes where the values do not matter.
  static ModelWeights repeat_layer(ModelWeights one_layer, int n_layers);

  // What keeps the tensors' memory alive (mapped files, owned buffers), for a derived model.
  const std::vector<std::shared_ptr<const void>>& storage() const { return storage_; }

  // Where the weights came from: a file path, or "random(seed=...)".
  const std::string& source() const { return source_; }
  void set_source(std::string source) { source_ = std::move(source); }

 private:
  ModelWeights() = default;
  ModelConfig config_;
  std::vector<std::shared_ptr<const void>> storage_;
  NamedTensors tensors_;
  WeightTensor token_embedding_;
  std::vector<LayerWeights> layers_;
  const float* rms_final_ = nullptr;
  WeightTensor classifier_;
  std::string source_;
};

// The tensor names and [rows, cols] shapes a model of this shape needs: the embedding, each
// layer's tensors, the final norm, and the classifier only when unshared (biases with qkv_bias).
struct TensorSpec {
  std::string name;
  int64_t rows;
  int64_t cols;
};
std::vector<TensorSpec> model_tensor_specs(const ModelConfig& config);

// A named range of floats in the llama2.c layout (all layers of one kind together).
struct TensorSpan {
  std::string name;
  size_t offset;  // floats from the start of the data after the header
  size_t count;
};

// The weight tensors of this shape in file order (the legacy RoPE tables excluded).
std::vector<TensorSpan> llama2c_tensor_spans(const ModelConfig& config);

// Views of the tensors of a llama2.c checkpoint's floats (after the header), by canonical name.
NamedTensors llama2c_tensor_views(const ModelConfig& config, const float* base);

// Floats after the 7-int header of a llama2.c checkpoint of this shape.
int64_t llama2c_float_count(const ModelConfig& config);

// Weights of the given shape drawn from a seeded normal distribution scaled like an initialised
// network (std 0.02, norms 1), in f32. For speed and memory work where quality does not matter.
ModelWeights random_weights(const ModelConfig& config, uint64_t seed);

// A copy of the model with every matrix (embedding and classifier included) stored in `type`;
// norms and biases stay f32. Values are rounded as quantize() rounds them; for q8_0, a matrix
// whose rows are not whole blocks is stored as f16 instead.
ModelWeights convert_weights(const ModelWeights& weights, WeightType type);

// Rejects NaN or Inf in any tensor; the error names the source, the tensor and the element.
Status check_finite(const ModelWeights& weights);

}  // namespace kvp
