// Finding a model and its tokenizer from what the user typed (or nothing).
//
// `--model` may be empty (the default model, stories260K), a model name looked up in the model
// directories, a directory holding one checkpoint, or a checkpoint file. The model directories are
// $KVPLAN_MODEL_DIR, then ../shared/models beside the source tree, then ../shared/models and
// shared/models relative to the working directory. The tokenizer is `--tokenizer`, else
// tok<vocab>.bin or tokenizer.bin beside the checkpoint.
#pragma once

#include <string>
#include <vector>

#include "executor/model/model_weights.h"
#include "executor/model/tokenizer.h"

namespace kvp {

inline constexpr const char* kDefaultModelName = "stories260K";

struct ModelFiles {
  std::string model_path;
  std::string tokenizer_path;
};

std::vector<std::string> model_search_dirs();

Result<ModelFiles> locate_model(const std::string& model_arg, const std::string& tokenizer_arg);

struct LoadedModel {
  ModelFiles files;
  ModelWeights weights;
  Tokenizer tokenizer;
};

// Locates, loads and cross-checks a checkpoint and its tokenizer.
Result<LoadedModel> load_model(const std::string& model_arg, const std::string& tokenizer_arg);

}  // namespace kvp
