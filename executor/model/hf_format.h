// Hugging Face model folders: config.json (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM),
// model.safetensors or shards listed in model.safetensors.index.json (F32, F16 or BF16 tensors,
// memory-mapped), tokenizer.json (BPE: SentencePiece-style with byte fallback as Llama 2 ships it,
// or byte-level with a split regex as Llama 3 and Qwen2 ship it), and generation_config.json for
// the end tokens. Hugging Face stores q and k rows for rotate-half RoPE; the model runs that way.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "executor/model/model_weights.h"
#include "executor/model/tokenizer.h"

namespace kvp {

// The canonical (GGUF) name of a Hugging Face parameter (model.layers.3.self_attn.q_proj.weight ->
// blk.3.attn_q.weight), and back; nullopt for a name that is not a decoder parameter.
std::optional<std::string> canonical_tensor_name(const std::string& hf);
std::optional<std::string> hf_tensor_name(const std::string& canonical);

// Whether `dir` looks like a Hugging Face model folder (it has a config.json).
bool is_hf_folder(const std::string& dir);

// The model's shape from config.json; unsupported architectures and features are refused by key.
Result<ModelConfig> read_hf_config(const std::string& dir);

// The weight files of the folder (the index's shards in order, or model.safetensors).
Result<std::vector<std::string>> hf_weight_files(const std::string& dir);

struct HfModel {
  ModelWeights weights;
  Tokenizer tokenizer;
};
Result<HfModel> load_hf(const std::string& dir, bool check_weights = true);

// A tokenizer.json (and generation_config.json beside it, if any) for a model of `vocab_size`.
Result<Tokenizer> load_tokenizer_json(const std::string& path, int vocab_size);

}  // namespace kvp
