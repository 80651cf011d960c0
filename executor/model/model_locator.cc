#include "executor/model/model_locator.h"

#include <cstdlib>
#include <filesystem>

#include "executor/model/llama2c_format.h"

namespace kvp {
namespace fs = std::filesystem;

namespace {

bool is_tokenizer_name(const fs::path& p) {
  const std::string name = p.filename().string();
  return name == "tokenizer.bin" || (name.rfind("tok", 0) == 0 && p.extension() == ".bin" &&
                                     name.find_first_not_of("0123456789", 3) == name.size() - 4);
}

// The one checkpoint (.bin that is not a tokenizer) in `dir`.
Result<std::string> checkpoint_in_dir(const fs::path& dir) {
  std::vector<fs::path> found;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    if (entry.is_regular_file() && entry.path().extension() == ".bin" &&
        !is_tokenizer_name(entry.path())) {
      found.push_back(entry.path());
    }
  }
  if (ec) return make_error("{}: cannot list directory: {}", dir.string(), ec.message());
  if (found.empty()) {
    return make_error("{}: is a directory with no llama2.c checkpoint (*.bin) in it", dir.string());
  }
  if (found.size() > 1) {
    return make_error("{}: holds {} checkpoints; name one with --model FILE", dir.string(),
                      found.size());
  }
  return found.front().string();
}

}  // namespace

std::vector<std::string> model_search_dirs() {
  std::vector<std::string> dirs;
  if (const char* env = std::getenv("KVPLAN_MODEL_DIR"); env && *env) dirs.emplace_back(env);
  dirs.push_back((fs::path(KVP_SOURCE_DIR).parent_path() / "shared" / "models").string());
  dirs.emplace_back("../shared/models");
  dirs.emplace_back("shared/models");
  return dirs;
}

Result<ModelFiles> locate_model(const std::string& model_arg, const std::string& tokenizer_arg) {
  ModelFiles files;
  const std::string name = model_arg.empty() ? kDefaultModelName : model_arg;
  std::error_code ec;
  if (fs::exists(name, ec)) {
    if (fs::is_directory(name, ec)) {
      KVP_ASSIGN_OR_RETURN(files.model_path, checkpoint_in_dir(name));
    } else {
      files.model_path = name;
    }
  } else if (name.find('/') == std::string::npos) {
    for (const std::string& dir : model_search_dirs()) {
      const fs::path candidate = fs::path(dir) / name;
      if (fs::is_directory(candidate, ec)) {
        KVP_ASSIGN_OR_RETURN(files.model_path, checkpoint_in_dir(candidate));
        break;
      }
    }
    if (files.model_path.empty()) {
      std::string searched;
      for (const std::string& dir : model_search_dirs()) searched += (searched.empty() ? "" : ", ") + dir;
      return make_error("--model {}: no such file, and no model of that name in {} (set "
                        "KVPLAN_MODEL_DIR or pass --model PATH)", name, searched);
    }
  } else {
    return make_error("{}: cannot open: No such file or directory", name);
  }

  if (!tokenizer_arg.empty()) {
    files.tokenizer_path = tokenizer_arg;
    return files;
  }
  KVP_ASSIGN_OR_RETURN(ModelConfig config, read_llama2c_config(files.model_path));
  const fs::path dir = fs::path(files.model_path).parent_path();
  for (const std::string& candidate :
       {fmt::format("tok{}.bin", config.vocab_size), std::string("tokenizer.bin")}) {
    if (fs::is_regular_file(dir / candidate, ec)) {
      files.tokenizer_path = (dir / candidate).string();
      return files;
    }
  }
  return make_error("{}: no tokenizer beside it (tok{}.bin or tokenizer.bin); pass --tokenizer",
                    files.model_path, config.vocab_size);
}

Result<LoadedModel> load_model(const std::string& model_arg, const std::string& tokenizer_arg) {
  KVP_ASSIGN_OR_RETURN(ModelFiles files, locate_model(model_arg, tokenizer_arg));
  KVP_ASSIGN_OR_RETURN(ModelWeights weights, load_llama2c(files.model_path));
  KVP_ASSIGN_OR_RETURN(Tokenizer tokenizer,
                       Tokenizer::load(files.tokenizer_path, weights.config().vocab_size));
  return LoadedModel{std::move(files), std::move(weights), std::move(tokenizer)};
}

}  // namespace kvp
