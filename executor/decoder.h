// The LLaMA decoder, written once against Backend: this file is the model.
#pragma once

#include <span>
#include <vector>

#include "executor/backend.h"

namespace kvp {

class Decoder {
 public:
  explicit Decoder(Backend& backend) : backend_(backend) {}

  Backend& backend() { return backend_; }
  const ModelConfig& config() const { return backend_.config(); }

  // Runs `rows` through every layer (extending each sequence's cache) and writes the logits of
  // the rows named in `logit_rows` (increasing) to `logits`, [logit_rows.size(), vocab_size].
  void forward(const StepRows& rows, std::span<const int32_t> logit_rows,
               std::vector<float>* logits);

 private:
  Backend& backend_;
};

}  // namespace kvp
