#include "executor/model/model_locator.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "common/sha256.h"
#include "executor/model/gguf_format.h"
#include "executor/model/hf_format.h"
#include "executor/model/llama2c_format.h"

namespace kvp {
namespace fs = std::filesystem;

namespace {

bool is_tokenizer_name(const fs::path& p) {
  const std::string name = p.filename().string();
  return name == "tokenizer.bin" || (name.rfind("tok", 0) == 0 && p.extension() == ".bin" &&
                                     name.find_first_not_of("0123456789", 3) == name.size() - 4);
}

bool starts_with_gguf_magic(const std::string& path) {
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> f(std::fopen(path.c_str(), "rb"), &std::fclose);
  char magic[4];
  return f && std::fread(magic, 1, 4, f.get()) == 4 && std::memcmp(magic, "GGUF", 4) == 0;
}

// The model a directory holds: a Hugging Face folder, else its one llama2.c checkpoint, else its
// one .gguf file.
Result<ModelFiles> model_in_dir(const fs::path& dir) {
  ModelFiles files;
  if (is_hf_folder(dir.string())) {
    files.format = ModelFormat::kHuggingFace;
    files.model_path = dir.string();
    return files;
  }
  std::vector<fs::path> bins, ggufs;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    if (!entry.is_regular_file()) continue;
    if (entry.path().extension() == ".bin" && !is_tokenizer_name(entry.path())) bins.push_back(entry.path());
    if (entry.path().extension() == ".gguf") ggufs.push_back(entry.path());
  }
  if (ec) return make_error("{}: cannot list directory: {}", dir.string(), ec.message());
  const std::vector<fs::path>& found = !bins.empty() ? bins : ggufs;
  if (found.empty()) {
    return make_error("{}: is a directory with no model in it (config.json, a llama2.c *.bin or a *.gguf)",
                      dir.string());
  }
  if (found.size() > 1) {
    return make_error("{}: holds {} checkpoints; name one with --model FILE", dir.string(), found.size());
  }
  files.model_path = found.front().string();
  files.format = !bins.empty() ? ModelFormat::kLlama2c : ModelFormat::kGguf;
  return files;
}

ModelFiles model_file(const std::string& path) {
  ModelFiles files;
  files.model_path = path;
  files.format = starts_with_gguf_magic(path) ? ModelFormat::kGguf : ModelFormat::kLlama2c;
  return files;
}

}  // namespace

std::string_view model_format_name(ModelFormat format) {
  switch (format) {
    case ModelFormat::kLlama2c: return "llama2.c";
    case ModelFormat::kGguf: return "gguf";
    case ModelFormat::kHuggingFace: return "huggingface";
  }
  return "?";
}

std::string embedded_model_dir() { return (fs::path(KVP_SOURCE_DIR) / "models").string(); }

std::vector<std::string> model_search_dirs() {
  std::vector<std::string> dirs;
  dirs.push_back(embedded_model_dir());
  if (const char* env = std::getenv("KVPLAN_MODEL_DIR"); env && *env) dirs.emplace_back(env);
  dirs.push_back((fs::path(KVP_SOURCE_DIR).parent_path() / "shared" / "models").string());
  dirs.emplace_back("../shared/models");
  dirs.emplace_back("shared/models");
  if (const std::string cache = cache_dir(); !cache.empty()) dirs.push_back((fs::path(cache) / "models").string());
  return dirs;
}

Result<ModelFiles> locate_model(const std::string& model_arg, const std::string& tokenizer_arg) {
  ModelFiles files;
  const std::string name = model_arg.empty() ? kDefaultModelName : model_arg;
  std::error_code ec;
  bool found = false;
  if (fs::exists(name, ec)) {
    if (fs::is_directory(name, ec)) {
      KVP_ASSIGN_OR_RETURN(files, model_in_dir(name));
    } else {
      files = model_file(name);
    }
    found = true;
  } else if (name.find('/') == std::string::npos) {
    for (const std::string& dir : model_search_dirs()) {
      const fs::path candidate = fs::path(dir) / name;
      if (fs::is_directory(candidate, ec)) {
        KVP_ASSIGN_OR_RETURN(files, model_in_dir(candidate));
        found = true;
        break;
      }
      // A file in one of the directory's model folders: stories260K.gguf.
      for (const auto& entry : fs::directory_iterator(dir, ec)) {
        if (entry.is_directory() && fs::is_regular_file(entry.path() / name, ec)) {
          files = model_file((entry.path() / name).string());
          found = true;
          break;
        }
      }
      if (found) break;
    }
    if (!found) {
      std::string searched;
      for (const std::string& dir : model_search_dirs()) searched += (searched.empty() ? "" : ", ") + dir;
      return make_error("--model {}: no such file, and no model of that name in {} (set "
                        "KVPLAN_MODEL_DIR or pass --model PATH)", name, searched);
    }
  } else {
    return make_error("{}: cannot open: No such file or directory", name);
  }

  if (files.format == ModelFormat::kHuggingFace) {
    KVP_RETURN_IF_ERROR(read_hf_config(files.model_path));  // what it is, before what it lacks
    KVP_ASSIGN_OR_RETURN(files.weight_files, hf_weight_files(files.model_path));
  } else {
    files.weight_files = {files.model_path};
  }
  if (!tokenizer_arg.empty()) {
    files.tokenizer_path = tokenizer_arg;
    return files;
  }
  if (files.format != ModelFormat::kLlama2c) return files;  // the tokenizer comes with the model
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

Result<LoadedModel> load_model(const std::string& model_arg, const std::string& tokenizer_arg,
                               const LoadOptions& options) {
  KVP_ASSIGN_OR_RETURN(ModelFiles files, locate_model(model_arg, tokenizer_arg));
  auto override_tokenizer = [&](int vocab_size) -> Result<Tokenizer> {
    if (files.tokenizer_path.ends_with(".json")) return load_tokenizer_json(files.tokenizer_path, vocab_size);
    return Tokenizer::load(files.tokenizer_path, vocab_size);
  };
  switch (files.format) {
    case ModelFormat::kLlama2c: {
      KVP_ASSIGN_OR_RETURN(ModelWeights weights, load_llama2c(files.model_path, options.check_weights));
      KVP_ASSIGN_OR_RETURN(Tokenizer tokenizer, override_tokenizer(weights.config().vocab_size));
      return LoadedModel{std::move(files), std::move(weights), std::move(tokenizer)};
    }
    case ModelFormat::kGguf: {
      KVP_ASSIGN_OR_RETURN(GgufModel m, load_gguf(files.model_path, options.check_weights));
      if (!files.tokenizer_path.empty()) {
        KVP_ASSIGN_OR_RETURN(m.tokenizer, override_tokenizer(m.weights.config().vocab_size));
      }
      return LoadedModel{std::move(files), std::move(m.weights), std::move(m.tokenizer)};
    }
    case ModelFormat::kHuggingFace: {
      KVP_ASSIGN_OR_RETURN(HfModel m, load_hf(files.model_path, options.check_weights));
      if (!files.tokenizer_path.empty()) {
        KVP_ASSIGN_OR_RETURN(m.tokenizer, override_tokenizer(m.weights.config().vocab_size));
      }
      return LoadedModel{std::move(files), std::move(m.weights), std::move(m.tokenizer)};
    }
  }
  return make_error("unknown model format");
}

Result<Tokenizer> load_tokenizer_only(const std::string& model_arg, const std::string& tokenizer_arg) {
  ModelFiles files;
  std::error_code ec;
  const std::string name = model_arg.empty() ? kDefaultModelName : model_arg;
  // A tokenizer-only GGUF (no tensors, any architecture) has no model to locate.
  if (tokenizer_arg.empty() && fs::is_regular_file(name, ec) && starts_with_gguf_magic(name)) {
    KVP_ASSIGN_OR_RETURN(GgufFile f, GgufFile::open(name));
    return gguf_tokenizer(f);
  }
  KVP_ASSIGN_OR_RETURN(files, locate_model(model_arg, tokenizer_arg));
  int vocab_size = 0;
  switch (files.format) {
    case ModelFormat::kLlama2c: {
      KVP_ASSIGN_OR_RETURN(ModelConfig c, read_llama2c_config(files.model_path));
      vocab_size = c.vocab_size;
      break;
    }
    case ModelFormat::kGguf: {
      KVP_ASSIGN_OR_RETURN(GgufFile f, GgufFile::open(files.model_path));
      if (files.tokenizer_path.empty()) return gguf_tokenizer(f);
      KVP_ASSIGN_OR_RETURN(ModelConfig c, read_gguf_config(f));
      vocab_size = c.vocab_size;
      break;
    }
    case ModelFormat::kHuggingFace: {
      KVP_ASSIGN_OR_RETURN(ModelConfig c, read_hf_config(files.model_path));
      vocab_size = c.vocab_size;
      if (files.tokenizer_path.empty()) files.tokenizer_path = (fs::path(files.model_path) / "tokenizer.json").string();
      break;
    }
  }
  if (files.tokenizer_path.ends_with(".json")) return load_tokenizer_json(files.tokenizer_path, vocab_size);
  return Tokenizer::load(files.tokenizer_path, vocab_size);
}

Result<std::string> fingerprint_files(const ModelFiles& files) {
  if (files.format != ModelFormat::kHuggingFace) return sha256_file_cached(files.model_path);
  std::vector<std::string> paths = files.weight_files;
  paths.push_back((fs::path(files.model_path) / "config.json").string());
  std::sort(paths.begin(), paths.end(), [](const std::string& a, const std::string& b) {
    return fs::path(a).filename() < fs::path(b).filename();
  });
  std::string lines;
  for (const std::string& p : paths) {
    KVP_ASSIGN_OR_RETURN(std::string digest, sha256_file_cached(p));
    lines += fs::path(p).filename().string() + " " + digest + "\n";
  }
  return sha256_hex(std::as_bytes(std::span<const char>(lines.data(), lines.size())));
}

}  // namespace kvp
