// Turning one model into another of the same function: a different RoPE layout of the q/k rows,
// other weight types (model_weights.h: convert_weights), random weights of a published shape, and
// the writers of the formats kvplan reads (GGUF in gguf_format.h; Hugging Face folders here).
#pragma once

#include <functional>
#include <string>

#include "executor/model/model_weights.h"
#include "executor/model/tokenizer.h"

namespace kvp {

// The same model with each head's q and k rows (and biases) reordered for `style`: interleaved
// row 2j+e (pair j, element e) is rotate-half row j + e·head_dim/2. Any weight type: whole rows move.
ModelWeights with_rope_style(const ModelWeights& weights, RopeStyle style);

// Random weights of `config` stored in `type` (std 0.02, norms 1), made one tensor at a time so
// that a 1.1B-parameter f16 model never needs its f32 copy.
// `progress(done, total)` is called after each tensor with counts of parameters.
ModelWeights random_typed_weights(const ModelConfig& config, uint64_t seed, WeightType type,
                                  const std::function<void(int64_t done, int64_t total)>& progress = {});

// A synthetic SentencePiece vocabulary of `vocab_size` pieces (<unk>, <s>, </s>, the 256 byte
// pieces, then "▁w<i>" words) for random-weight models, whose text does not matter.
Tokenizer synthetic_tokenizer(int vocab_size);

// Writes `tokenizer` as a Hugging Face tokenizer.json (BPE: SentencePiece-style with byte fallback
// and merges from the scores, or byte-level with its one Split regex), atomically.
Status save_tokenizer_json(const std::string& path, const Tokenizer& tokenizer);

struct HfWriteOptions {
  int shards = 1;  // > 1: model-0000k-of-0000n.safetensors and model.safetensors.index.json
};

// Writes a Hugging Face folder: config.json, the safetensors shard(s), tokenizer.json and
// generation_config.json. The weights must be f32, f16 or bf16 with rotate-half q/k rows
// (with_rope_style). The folder appears only when complete (written under a temporary name).
Status save_hf(const std::string& dir, const ModelWeights& weights, const Tokenizer& tokenizer,
               const HfWriteOptions& options = {});

}  // namespace kvp
