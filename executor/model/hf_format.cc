#include "executor/model/hf_format.h"

#include <filesystem>
#include <nlohmann/json.hpp>
#include <cmath>
#include <functional>
#include <optional>
#include <set>

#include "common/file_util.h"
#include "traces/safetensors_file.h"

namespace kvp {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

Result<json> read_json(const std::string& path) {
  KVP_ASSIGN_OR_RETURN(std::string text, read_file_text(path));
  json j = json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return make_error("{}: not a JSON object", path);
  return j;
}

Result<int> json_int(const json& j, const std::string& path, const char* key, std::optional<int> fallback) {
  if (!j.contains(key) || j[key].is_null()) {
    if (fallback) return *fallback;
    return make_error("{}: {}: missing", path, key);
  }
  if (!j[key].is_number_integer() || j[key].get<int64_t>() < 0 || j[key].get<int64_t>() > (1 << 30)) {
    return make_error("{}: {}: expected an integer 0..2^30, found {}", path, key, j[key].dump());
  }
  return j[key].get<int>();
}

Result<double> json_number(const json& j, const std::string& path, const char* key, double fallback) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  if (!j[key].is_number()) return make_error("{}: {}: expected a number, found {}", path, key, j[key].dump());
  return j[key].get<double>();
}

}  // namespace

namespace {

// Hugging Face parameter names and the canonical (GGUF) names: the whole-model ones, then the per-layer
// suffixes (after model.layers.L. and blk.L.). The one table both directions read.
constexpr std::pair<const char*, const char*> kGlobalNames[] = {
    {"model.embed_tokens.weight", "token_embd.weight"},
    {"model.norm.weight", "output_norm.weight"},
    {"lm_head.weight", "output.weight"},
};
constexpr std::pair<const char*, const char*> kLayerNames[] = {
    {"input_layernorm.weight", "attn_norm.weight"},     {"self_attn.q_proj.weight", "attn_q.weight"},
    {"self_attn.k_proj.weight", "attn_k.weight"},       {"self_attn.v_proj.weight", "attn_v.weight"},
    {"self_attn.q_proj.bias", "attn_q.bias"},           {"self_attn.k_proj.bias", "attn_k.bias"},
    {"self_attn.v_proj.bias", "attn_v.bias"},           {"self_attn.o_proj.weight", "attn_output.weight"},
    {"post_attention_layernorm.weight", "ffn_norm.weight"}, {"mlp.gate_proj.weight", "ffn_gate.weight"},
    {"mlp.up_proj.weight", "ffn_up.weight"},            {"mlp.down_proj.weight", "ffn_down.weight"},
};

// `name` split as PREFIX<digits>.REST; nullopt when it is not.
std::optional<std::pair<std::string, std::string>> split_layer(const std::string& name, const std::string& prefix) {
  if (name.rfind(prefix, 0) != 0) return std::nullopt;
  const size_t dot = name.find('.', prefix.size());
  if (dot == std::string::npos) return std::nullopt;
  const std::string layer = name.substr(prefix.size(), dot - prefix.size());
  if (layer.empty() || layer.find_first_not_of("0123456789") != std::string::npos) return std::nullopt;
  return std::pair{layer, name.substr(dot + 1)};
}

}  // namespace

std::optional<std::string> canonical_tensor_name(const std::string& hf) {
  for (const auto& [h, c] : kGlobalNames) {
    if (hf == h) return c;
  }
  const auto parts = split_layer(hf, "model.layers.");
  if (!parts) return std::nullopt;
  for (const auto& [h, c] : kLayerNames) {
    if (parts->second == h) return "blk." + parts->first + "." + c;
  }
  return std::nullopt;
}

std::optional<std::string> hf_tensor_name(const std::string& canonical) {
  for (const auto& [h, c] : kGlobalNames) {
    if (canonical == c) return h;
  }
  const auto parts = split_layer(canonical, "blk.");
  if (!parts) return std::nullopt;
  for (const auto& [h, c] : kLayerNames) {
    if (parts->second == c) return "model.layers." + parts->first + "." + h;
  }
  return std::nullopt;
}

bool is_hf_folder(const std::string& dir) {
  std::error_code ec;
  return fs::is_directory(dir, ec) && fs::is_regular_file(fs::path(dir) / "config.json", ec);
}

Result<ModelConfig> read_hf_config(const std::string& dir) {
  const std::string path = (fs::path(dir) / "config.json").string();
  KVP_ASSIGN_OR_RETURN(json j, read_json(path));
  std::string arch;
  if (j.contains("architectures") && j["architectures"].is_array() && !j["architectures"].empty() &&
      j["architectures"][0].is_string()) {
    arch = j["architectures"][0].get<std::string>();
  }
  if (arch != "LlamaForCausalLM" && arch != "MistralForCausalLM" && arch != "Qwen2ForCausalLM") {
    return make_error("{}: architectures: '{}' is not supported (LlamaForCausalLM, MistralForCausalLM, "
                      "Qwen2ForCausalLM)", path, arch);
  }
  const bool qwen2 = arch == "Qwen2ForCausalLM";
  ModelConfig c;
  c.architecture = qwen2 ? "qwen2" : "llama";
  c.rope_style = RopeStyle::kHalf;
  KVP_ASSIGN_OR_RETURN(c.dim, json_int(j, path, "hidden_size", std::nullopt));
  KVP_ASSIGN_OR_RETURN(c.hidden_dim, json_int(j, path, "intermediate_size", std::nullopt));
  KVP_ASSIGN_OR_RETURN(c.n_layers, json_int(j, path, "num_hidden_layers", std::nullopt));
  KVP_ASSIGN_OR_RETURN(c.n_heads, json_int(j, path, "num_attention_heads", std::nullopt));
  KVP_ASSIGN_OR_RETURN(c.n_kv_heads, json_int(j, path, "num_key_value_heads", c.n_heads));
  KVP_ASSIGN_OR_RETURN(c.vocab_size, json_int(j, path, "vocab_size", std::nullopt));
  KVP_ASSIGN_OR_RETURN(c.seq_len, json_int(j, path, "max_position_embeddings", std::nullopt));
  KVP_ASSIGN_OR_RETURN(int head_dim, json_int(j, path, "head_dim", 0));
  if (head_dim > 0 && head_dim * c.n_heads != c.dim) c.head_size = head_dim;
  KVP_ASSIGN_OR_RETURN(double eps, json_number(j, path, "rms_norm_eps", 1e-6));
  KVP_ASSIGN_OR_RETURN(double theta, json_number(j, path, "rope_theta", 10000.0));
  c.norm_eps = static_cast<float>(eps);
  c.rope_theta = static_cast<float>(theta);
  c.qkv_bias = qwen2;
  if (j.value("attention_bias", false) == true && !qwen2) {
    return make_error("{}: attention_bias: biases on every attention projection (o_proj too) are not supported", path);
  }
  if (j.value("mlp_bias", false) == true) return make_error("{}: mlp_bias: MLP biases are not supported", path);
  if (j.contains("num_local_experts") || j.contains("num_experts")) {
    return make_error("{}: num_local_experts: mixture of experts is not supported", path);
  }
  if (j.contains("sliding_window") && !j["sliding_window"].is_null()) {
    const bool used = qwen2 ? j.value("use_sliding_window", false) == true : true;
    const bool effective = !j["sliding_window"].is_number_integer() || j["sliding_window"].get<int64_t>() < c.seq_len;
    if (used && effective) {
      return make_error("{}: sliding_window: sliding-window attention ({}) is not supported", path,
                        j["sliding_window"].dump());
    }
  }
  const bool tie = j.value("tie_word_embeddings", false) == true;
  c.shared_classifier = tie;
  if (j.contains("rope_scaling") && !j["rope_scaling"].is_null()) {
    const json& rs = j["rope_scaling"];
    const std::string type = rs.value("rope_type", rs.value("type", std::string()));
    if (Status s = c.validate(); !s.ok()) return s.error().with_context(path);
    const int half = c.head_dim() / 2;
    if (type == "linear") {
      KVP_ASSIGN_OR_RETURN(double factor, json_number(rs, path + ": rope_scaling", "factor", 0.0));
      if (!(factor > 0)) return make_error("{}: rope_scaling.factor: expected a positive factor", path);
      c.rope_freq_divisors.assign(half, static_cast<float>(factor));
    } else if (type == "llama3") {
      KVP_ASSIGN_OR_RETURN(double factor, json_number(rs, path + ": rope_scaling", "factor", 0.0));
      KVP_ASSIGN_OR_RETURN(double low, json_number(rs, path + ": rope_scaling", "low_freq_factor", 1.0));
      KVP_ASSIGN_OR_RETURN(double high, json_number(rs, path + ": rope_scaling", "high_freq_factor", 4.0));
      KVP_ASSIGN_OR_RETURN(double original, json_number(rs, path + ": rope_scaling", "original_max_position_embeddings", 8192));
      if (!(factor > 0) || !(high > low) || !(original > 0)) {
        return make_error("{}: rope_scaling: expected factor > 0, high_freq_factor > low_freq_factor and an original "
                          "context, found {}", path, rs.dump());
      }
      // Llama 3.1's rule: long wavelengths are divided by the factor, short ones kept, and the
      // band between interpolated (transformers' _compute_llama3_parameters).
      const double low_wavelen = original / low, high_wavelen = original / high;
      for (int i = 0; i < half; ++i) {
        const double freq = std::pow(static_cast<double>(c.rope_theta), -2.0 * i / c.head_dim());
        const double wavelen = 2.0 * M_PI / freq;
        double scaled = freq;
        if (wavelen > low_wavelen) {
          scaled = freq / factor;
        } else if (wavelen >= high_wavelen) {
          const double smooth = (original / wavelen - low) / (high - low);
          scaled = (1 - smooth) * freq / factor + smooth * freq;
        }
        c.rope_freq_divisors.push_back(static_cast<float>(freq / scaled));
      }
    } else if (type != "default") {
      return make_error("{}: rope_scaling: '{}' RoPE scaling is not supported (linear, llama3)", path, type);
    }
  }
  if (Status s = c.validate(); !s.ok()) return s.error().with_context(path);
  return c;
}

Result<std::vector<std::string>> hf_weight_files(const std::string& dir) {
  const fs::path d(dir);
  std::error_code ec;
  const fs::path index = d / "model.safetensors.index.json";
  if (fs::is_regular_file(index, ec)) {
    KVP_ASSIGN_OR_RETURN(json j, read_json(index.string()));
    if (!j.contains("weight_map") || !j["weight_map"].is_object()) {
      return make_error("{}: weight_map: expected an object of tensor -> file", index.string());
    }
    std::set<std::string> files;
    for (const auto& [name, file] : j["weight_map"].items()) {
      if (!file.is_string()) return make_error("{}: weight_map.{}: expected a file name", index.string(), name);
      const std::string f = file.get<std::string>();
      if (f.empty() || f.find('/') != std::string::npos || f == "." || f == "..") {
        return make_error("{}: weight_map.{}: '{}' is not a file in the folder", index.string(), name, f);
      }
      files.insert(f);
    }
    std::vector<std::string> out;
    for (const std::string& f : files) out.push_back((d / f).string());
    return out;
  }
  if (fs::is_regular_file(d / "model.safetensors", ec)) return std::vector<std::string>{(d / "model.safetensors").string()};
  return make_error("{}: no model.safetensors or model.safetensors.index.json", dir);
}

Result<Tokenizer> load_tokenizer_json(const std::string& path, int vocab_size) {
  KVP_ASSIGN_OR_RETURN(json j, read_json(path));
  if (!j.contains("model") || !j["model"].is_object()) return make_error("{}: model: expected an object", path);
  const json& m = j["model"];
  if (m.value("type", std::string()) != "BPE") {
    return make_error("{}: model.type: '{}' is not supported (BPE)", path, m.value("type", std::string("?")));
  }
  if (!m.contains("vocab") || !m["vocab"].is_object()) return make_error("{}: model.vocab: expected an object", path);
  Vocabulary v;
  std::vector<bool> filled(static_cast<size_t>(vocab_size), false);
  v.pieces.assign(static_cast<size_t>(vocab_size), std::string());
  v.types.assign(static_cast<size_t>(vocab_size), TokenType::kUnused);
  auto place = [&](const std::string& piece, const json& id, TokenType type, const char* field) -> Status {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() >= vocab_size) {
      return make_error("{}: {}: id {} of '{}' is outside the model's {}-token vocabulary", path, field, id.dump(), piece,
                        vocab_size);
    }
    const size_t i = id.get<size_t>();
    v.pieces[i] = piece;
    v.types[i] = type;
    filled[i] = true;
    return ok_status();
  };
  for (const auto& [piece, id] : m["vocab"].items()) KVP_RETURN_IF_ERROR(place(piece, id, TokenType::kNormal, "model.vocab"));
  if (j.contains("added_tokens") && j["added_tokens"].is_array()) {
    for (const json& t : j["added_tokens"]) {
      if (!t.is_object() || !t.contains("content") || !t["content"].is_string() || !t.contains("id")) {
        return make_error("{}: added_tokens: expected objects with id and content", path);
      }
      KVP_RETURN_IF_ERROR(place(t["content"].get<std::string>(), t["id"],
                                t.value("special", false) ? TokenType::kControl : TokenType::kUserDefined, "added_tokens"));
    }
  }
  for (size_t i = 0; i < filled.size(); ++i) {
    if (!filled[i]) v.pieces[i] = fmt::format("[PAD{}]", i);  // embedding rows the tokenizer never produces
  }
  if (m.contains("merges") && m["merges"].is_array()) {
    for (const json& mg : m["merges"]) {
      if (mg.is_string()) {
        v.merges.push_back(mg.get<std::string>());
      } else if (mg.is_array() && mg.size() == 2 && mg[0].is_string() && mg[1].is_string()) {
        v.merges.push_back(mg[0].get<std::string>() + " " + mg[1].get<std::string>());
      } else {
        return make_error("{}: model.merges: expected 'a b' or [a, b], found {}", path, mg.dump());
      }
    }
  }
  // Which family: a ByteLevel pre-tokenizer means byte-level BPE; otherwise SentencePiece-style
  // (a normalizer that turns spaces into "▁", byte fallback).
  std::function<void(const json&)> walk_pre = [&](const json& p) {
    if (!p.is_object()) return;
    const std::string type = p.value("type", std::string());
    if (type == "Sequence" && p.contains("pretokenizers") && p["pretokenizers"].is_array()) {
      for (const json& q : p["pretokenizers"]) walk_pre(q);
    } else if (type == "ByteLevel") {
      v.kind = TokenizerKind::kBytePair;
      // use_regex (the default) splits by GPT-2's expression here, after what came before it.
      if (p.value("use_regex", true) == true) v.pre_regexes.push_back(pre_tokenizer_regexes("gpt-2").value()[0]);
    } else if (type == "Digits") {  // SmolLM2's: each digit its own word
      v.pre_regexes.push_back(p.value("individual_digits", false) == true ? R"(\p{N})" : R"(\p{N}+)");
    } else if (type == "Split" && p.contains("pattern") && p["pattern"].is_object() && p["pattern"].contains("Regex") &&
               p["pattern"]["Regex"].is_string()) {
      v.pre_regexes.push_back(p["pattern"]["Regex"].get<std::string>());
    }
  };
  v.kind = TokenizerKind::kSentencePiece;
  if (j.contains("pre_tokenizer")) walk_pre(j["pre_tokenizer"]);
  if (v.kind == TokenizerKind::kBytePair) {
    v.pre = "tokenizer.json";
    v.ignore_merges = m.value("ignore_merges", false) == true;
    v.add_space_prefix = false;
  } else {
    if (m.value("byte_fallback", false) != true) {
      return make_error("{}: model.byte_fallback: a SentencePiece-style BPE without byte fallback is not supported", path);
    }
    std::string normalizer = j.contains("normalizer") ? j["normalizer"].dump() : "";
    v.add_space_prefix = normalizer.find("\"Prepend\"") != std::string::npos;
    v.space_marker = "\xE2\x96\x81";
  }
  // BOS: what the post-processor puts before a single sequence.
  v.add_bos = false;
  if (j.contains("post_processor") && j["post_processor"].is_object()) {
    const json& pp = j["post_processor"];
    if (pp.value("type", std::string()) == "TemplateProcessing" && pp.contains("single") && pp["single"].is_array() &&
        !pp["single"].empty() && pp["single"][0].contains("SpecialToken")) {
      const std::string bos = pp["single"][0]["SpecialToken"].value("id", std::string());
      for (size_t i = 0; i < v.pieces.size(); ++i) {
        if (v.pieces[i] == bos) {
          v.bos = static_cast<int32_t>(i);
          v.add_bos = true;
          break;
        }
      }
    }
  }
  // End tokens: generation_config.json beside the tokenizer, else config.json.
  const fs::path dir = fs::path(path).parent_path();
  for (const char* name : {"generation_config.json", "config.json"}) {
    std::error_code ec;
    if (!fs::is_regular_file(dir / name, ec)) continue;
    KVP_ASSIGN_OR_RETURN(json g, read_json((dir / name).string()));
    std::vector<int64_t> ids;
    if (g.contains("eos_token_id") && g["eos_token_id"].is_number_integer()) ids.push_back(g["eos_token_id"].get<int64_t>());
    if (g.contains("eos_token_id") && g["eos_token_id"].is_array()) {
      for (const json& e : g["eos_token_id"]) {
        if (e.is_number_integer()) ids.push_back(e.get<int64_t>());
      }
    }
    if (v.bos < 0 && g.contains("bos_token_id") && g["bos_token_id"].is_number_integer() &&
        g["bos_token_id"].get<int64_t>() >= 0 && g["bos_token_id"].get<int64_t>() < vocab_size) {
      v.bos = g["bos_token_id"].get<int32_t>();
    }
    for (int64_t id : ids) {
      if (id < 0 || id >= vocab_size) return make_error("{}: eos_token_id: {} is outside the vocabulary", (dir / name).string(), id);
      if (v.eos < 0) {
        v.eos = static_cast<int32_t>(id);
      } else {
        v.extra_end_tokens.push_back(static_cast<int32_t>(id));
      }
    }
    if (v.eos >= 0) break;
  }
  return Tokenizer::create(std::move(v), path);
}

Result<HfModel> load_hf(const std::string& dir, bool check_weights) {
  KVP_ASSIGN_OR_RETURN(ModelConfig config, read_hf_config(dir));
  KVP_ASSIGN_OR_RETURN(std::vector<std::string> files, hf_weight_files(dir));
  NamedTensors tensors;
  std::vector<std::shared_ptr<const void>> storage;
  std::map<std::string, std::string> where;  // canonical name -> file, for duplicate checks
  for (const std::string& file : files) {
    KVP_ASSIGN_OR_RETURN(SafetensorsFile st, SafetensorsFile::open(file));
    auto shared = std::make_shared<SafetensorsFile>(std::move(st));
    for (const TensorInfo& t : shared->tensors()) {
      if (t.name.ends_with("rotary_emb.inv_freq")) continue;  // older checkpoints store RoPE tables
      const std::optional<std::string> name = canonical_tensor_name(t.name);
      if (!name) return make_error("{}: tensor {}: not a parameter of a {} model", file, t.name, config.architecture);
      if (where.count(*name)) return make_error("{}: tensor {}: also in {}", file, t.name, where[*name]);
      WeightType type;
      switch (t.dtype) {
        case TensorDtype::kF32: type = WeightType::kF32; break;
        case TensorDtype::kF16: type = WeightType::kF16; break;
        case TensorDtype::kBF16: type = WeightType::kBF16; break;
        default: return make_error("{}: tensor {}: dtype {} is not a weight type (F32, F16, BF16)", file, t.name, dtype_name(t.dtype));
      }
      if (t.shape.empty() || t.shape.size() > 2) {
        return make_error("{}: tensor {}: expected 1 or 2 dimensions, found {}", file, t.name, t.shape.size());
      }
      const int64_t rows = t.shape.size() == 2 ? t.shape[0] : 1, cols = t.shape.back();
      tensors[*name] = WeightTensor{.type = type, .data = shared->bytes(t).data(), .rows = rows, .cols = cols};
      where[*name] = file;
    }
    storage.push_back(shared);
  }
  if (!tensors.count("output.weight") && !config.shared_classifier) {
    return make_error("{}: lm_head.weight: missing, and config.json's tie_word_embeddings is false", dir);
  }
  if (config.shared_classifier) tensors.erase("output.weight");
  const std::string source = dir;
  KVP_ASSIGN_OR_RETURN(ModelWeights weights, ModelWeights::from_tensors(config, tensors, std::move(storage), source));
  if (check_weights) KVP_RETURN_IF_ERROR(check_finite(weights));
  const fs::path tok = fs::path(dir) / "tokenizer.json";
  std::error_code ec;
  if (!fs::is_regular_file(tok, ec)) return make_error("{}: missing; the folder has no tokenizer", tok.string());
  KVP_ASSIGN_OR_RETURN(Tokenizer tokenizer, load_tokenizer_json(tok.string(), config.vocab_size));
  return HfModel{std::move(weights), std::move(tokenizer)};
}

}  // namespace kvp
