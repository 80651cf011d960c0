// Finding a model and its tokenizer from what the user typed (or nothing), and loading it.
//
// `--model` may be empty (the default model, stories260K), a model name looked up in the model
// directories, a directory, or a file. The model directories are the repository's own models/
// (the embedded default model), then $KVPLAN_MODEL_DIR, then ../shared/models beside the source
// tree, then ../shared/models and shared/models relative to the working directory, then the
// models/ folder of kvplan's cache directory (cache_dir(), where tools/fetch-model.sh puts models);
// a name is a folder there (stories260K) or a file in one of their folders (stories260K.gguf). A directory is a Hugging Face folder when it has a config.json; otherwise it
// holds one llama2.c checkpoint (*.bin that is not a tokenizer), preferred, or one .gguf file. A
// file is GGUF when it starts with "GGUF", else a llama2.c checkpoint. The tokenizer is
// `--tokenizer` (a llama2.c tokenizer.bin or a tokenizer.json), else the one the format carries
// (GGUF metadata, the folder's tokenizer.json), else tok<vocab>.bin or tokenizer.bin beside a
// llama2.c checkpoint.
#pragma once

#include <string>
#include <vector>

#include "executor/model/model_weights.h"
#include "executor/model/tokenizer.h"

namespace kvp {

inline constexpr const char* kDefaultModelName = "stories260K";

enum class ModelFormat { kLlama2c, kGguf, kHuggingFace };
std::string_view model_format_name(ModelFormat format);  // "llama2.c", "gguf", "huggingface"

struct ModelFiles {
  ModelFormat format = ModelFormat::kLlama2c;
  std::string model_path;      // the checkpoint file, or the Hugging Face folder
  std::string tokenizer_path;  // empty when the tokenizer is inside the model file
  std::vector<std::string> weight_files;  // every file the weights come from (the fingerprint's)
};

// The repository's models/ folder, which holds the default model.
std::string embedded_model_dir();
std::vector<std::string> model_search_dirs();

Result<ModelFiles> locate_model(const std::string& model_arg, const std::string& tokenizer_arg);

struct LoadOptions {
  bool check_weights = true;  // reject NaN/Inf weights (a full scan of the tensors)
};

struct LoadedModel {
  ModelFiles files;
  ModelWeights weights;
  Tokenizer tokenizer;
};

// Locates, loads and cross-checks a model and its tokenizer.
Result<LoadedModel> load_model(const std::string& model_arg, const std::string& tokenizer_arg,
                               const LoadOptions& options = {});

// Only the tokenizer of a model (or of a tokenizer-only GGUF file such as llama.cpp's vocab files),
// without mapping its weights.
Result<Tokenizer> load_tokenizer_only(const std::string& model_arg, const std::string& tokenizer_arg);

// The model fingerprint plans and traces carry: the sha256 of the weights file for a single-file
// model (llama2.c or GGUF), and for a Hugging Face folder the sha256 of "name sha256\n" lines of
// config.json and every weight file in name order. Large files' digests are cached
// (sha256_file_cached).
Result<std::string> fingerprint_files(const ModelFiles& files);

}  // namespace kvp
