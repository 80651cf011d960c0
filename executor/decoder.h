// The LLaMA decoder, written once against Backend: this file is the model.
#pragma once

#include <span>
#include <vector>

#include "executor/backend.h"

namespace kvp {

// Sees the activations of a forward pass as they are made: for recording traces and for tests.
// Each hook may read the named activations of the current rows through Backend::read.
class ForwardObserver {
 public:
  virtual ~ForwardObserver() = default;
  // Act::kX holds the residual stream entering layer `layer_idx`.
  virtual void before_layer(int /*layer_idx*/, const Backend& /*backend*/) {}
  // Act::kQ, kK (both post-RoPE) and kV hold the layer's projections, before attention.
  virtual void after_qkv(int /*layer_idx*/, const Backend& /*backend*/) {}
  // Act::kAttn holds the attention output (before Wo).
  virtual void after_attention(int /*layer_idx*/, const Backend& /*backend*/) {}
};

class Decoder {
 public:
  explicit Decoder(Backend& backend) : backend_(backend) {}

  Backend& backend() { return backend_; }
  const ModelConfig& config() const { return backend_.config(); }

  // Runs `rows` through every layer (extending each sequence's cache) and writes the logits of
  // the rows named in `logit_rows` (increasing) to `logits`, [logit_rows.size(), vocab_size] (when
  // null, they stay on the backend for Backend::pick_tokens).
  void forward(const StepRows& rows, std::span<const int32_t> logit_rows,
               std::vector<float>* logits, ForwardObserver* observer = nullptr);

 private:
  Backend& backend_;
};

}  // namespace kvp
