#include "executor/model/model_convert.h"

#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <random>

#include "common/file_util.h"
#include "executor/model/hf_format.h"
#include "traces/safetensors_writer.h"

namespace kvp {
namespace fs = std::filesystem;

namespace {

// The permuted copy of one q or k tensor ([n_heads * head_dim, cols] or a bias [1, n * head_dim]).
std::shared_ptr<std::vector<std::byte>> permute_rows(const WeightTensor& t, int head_dim, RopeStyle to, bool bias) {
  auto out = std::make_shared<std::vector<std::byte>>(t.bytes());
  const size_t elem = bias ? 4 : t.bytes_per_row();  // biases: one f32 element per "row"
  const int64_t n = bias ? t.cols : t.rows;
  for (int64_t r = 0; r < n; ++r) {
    const int64_t head = r / head_dim, i = r % head_dim, half = head_dim / 2;
    // Interleaved index 2j+e <-> rotate-half index j + e*half.
    const int64_t inter = i, rot = (i % 2) * half + i / 2;
    const int64_t from = head * head_dim + (to == RopeStyle::kHalf ? inter : rot);
    const int64_t dest = head * head_dim + (to == RopeStyle::kHalf ? rot : inter);
    std::memcpy(out->data() + dest * elem, t.data + from * elem, elem);
  }
  return out;
}

// SentencePiece scores as BPE merges (as transformers' converter does): every split of a normal
// piece into two pieces, best-scoring merged piece first.
std::string escape_marker(const std::string& s, const std::string& marker);

// REQUIRES: pieces written with "▁" (merges are "left right", split at the space).
std::vector<std::string> merges_from_scores(const Vocabulary& v) {
  struct Merge {
    float score;
    int32_t merged;
    std::string text;
  };
  std::unordered_map<std::string, int32_t> ids;
  std::vector<std::string> pieces;
  for (const std::string& p : v.pieces) pieces.push_back(escape_marker(p, v.space_marker));
  for (size_t i = 0; i < pieces.size(); ++i) ids.try_emplace(pieces[i], static_cast<int32_t>(i));
  std::vector<Merge> merges;
  for (size_t i = 0; i < pieces.size(); ++i) {
    if (v.types[i] != TokenType::kNormal) continue;
    const std::string& p = pieces[i];
    for (size_t cut = 1; cut < p.size(); ++cut) {
      if ((static_cast<unsigned char>(p[cut]) & 0xC0) == 0x80) continue;  // inside a character
      auto a = ids.find(p.substr(0, cut)), b = ids.find(p.substr(cut));
      if (a == ids.end() || b == ids.end()) continue;
      if (v.types[a->second] != TokenType::kNormal || v.types[b->second] != TokenType::kNormal) continue;
      merges.push_back({v.scores[i], static_cast<int32_t>(i), p.substr(0, cut) + " " + p.substr(cut)});
    }
  }
  std::stable_sort(merges.begin(), merges.end(), [](const Merge& x, const Merge& y) {
    return x.score > y.score || (x.score == y.score && x.merged < y.merged);
  });
  std::vector<std::string> out;
  for (Merge& m : merges) out.push_back(std::move(m.text));
  return out;
}

std::string escape_marker(const std::string& s, const std::string& marker) {
  if (marker == "\xE2\x96\x81") return s;
  std::string out;
  for (size_t i = 0; i < s.size();) {
    if (s.compare(i, marker.size(), marker) == 0) {
      out += "\xE2\x96\x81";
      i += marker.size();
    } else {
      out.push_back(s[i++]);
    }
  }
  return out;
}

Result<nlohmann::ordered_json> tokenizer_json(const Tokenizer& tokenizer) {
  using nlohmann::ordered_json;
  const Vocabulary& v = tokenizer.vocabulary();
  ordered_json j;
  j["version"] = "1.0";
  ordered_json added = ordered_json::array();
  ordered_json vocab = ordered_json::object();
  for (size_t i = 0; i < v.pieces.size(); ++i) {
    const std::string piece = v.kind == TokenizerKind::kSentencePiece ? escape_marker(v.pieces[i], v.space_marker) : v.pieces[i];
    vocab[piece] = i;
    if (v.types[i] == TokenType::kControl || v.types[i] == TokenType::kUnknown || v.types[i] == TokenType::kUserDefined) {
      added.push_back({{"id", i}, {"content", piece}, {"single_word", false}, {"lstrip", false}, {"rstrip", false},
                       {"normalized", false}, {"special", v.types[i] != TokenType::kUserDefined}});
    }
  }
  j["added_tokens"] = added;
  ordered_json model = {{"type", "BPE"}, {"dropout", nullptr}};
  if (v.kind == TokenizerKind::kSentencePiece) {
    ordered_json normalizers = ordered_json::array();
    if (v.add_space_prefix) normalizers.push_back({{"type", "Prepend"}, {"prepend", "\xE2\x96\x81"}});
    normalizers.push_back({{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", "\xE2\x96\x81"}});
    j["normalizer"] = {{"type", "Sequence"}, {"normalizers", normalizers}};
    j["pre_tokenizer"] = nullptr;
    model["unk_token"] = "<unk>";
    model["byte_fallback"] = true;
    model["merges"] = v.merges.empty() ? merges_from_scores(v) : v.merges;
  } else {
    // One Split per expression, in order (as the reader applies them), then the byte mapping.
    ordered_json pre = ordered_json::array();
    for (const std::string& re : v.pre_regexes) {
      pre.push_back({{"type", "Split"}, {"pattern", {{"Regex", re}}}, {"behavior", "Isolated"}, {"invert", false}});
    }
    pre.push_back({{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", false}});
    j["normalizer"] = nullptr;
    j["pre_tokenizer"] = {{"type", "Sequence"}, {"pretokenizers", pre}};
    model["byte_fallback"] = false;
    model["ignore_merges"] = v.ignore_merges;
    model["merges"] = v.merges;
  }
  if (v.add_bos && v.bos >= 0) {
    const std::string bos = v.pieces[v.bos];
    j["post_processor"] = {{"type", "TemplateProcessing"},
                           {"single", {{{"SpecialToken", {{"id", bos}, {"type_id", 0}}}}, {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
                           {"pair", ordered_json::array()},
                           {"special_tokens", {{bos, {{"id", bos}, {"ids", {v.bos}}, {"tokens", {bos}}}}}}};
  } else {
    j["post_processor"] = nullptr;
  }
  model["vocab"] = vocab;
  j["model"] = model;
  return j;
}

}  // namespace

Status save_tokenizer_json(const std::string& path, const Tokenizer& tokenizer) {
  Result<nlohmann::ordered_json> j = tokenizer_json(tokenizer);
  if (!j.ok()) return j.error().with_context(path);
  return write_file_atomic(path, j->dump(2) + "\n");
}

ModelWeights with_rope_style(const ModelWeights& weights, RopeStyle style) {
  const ModelConfig& c = weights.config();
  NamedTensors tensors = weights.tensors();
  std::vector<std::shared_ptr<const void>> storage = weights.storage();  // the unpermuted tensors' memory
  if (c.rope_style != style) {
    for (int l = 0; l < c.n_layers; ++l) {
      for (const char* what : {"attn_q.weight", "attn_k.weight", "attn_q.bias", "attn_k.bias"}) {
        auto it = tensors.find(fmt::format("blk.{}.{}", l, what));
        if (it == tensors.end()) continue;
        auto rows = permute_rows(it->second, c.head_dim(), style, std::string(what).ends_with(".bias"));
        it->second.data = rows->data();
        storage.push_back(rows);
      }
    }
  }
  ModelConfig out = c;
  out.rope_style = style;
  Result<ModelWeights> w = ModelWeights::from_tensors(out, tensors, std::move(storage), weights.source());
  KVP_CHECK(w.ok(), "{}", w.error().message());
  return std::move(w).value();
}

ModelWeights random_typed_weights(const ModelConfig& config, uint64_t seed, WeightType type,
                                  const std::function<void(int64_t, int64_t)>& progress) {
  KVP_CHECK(config.validate().ok());
  NamedTensors tensors;
  std::vector<std::shared_ptr<const void>> storage;
  uint64_t tensor_seed = seed;
  const std::vector<TensorSpec> specs = model_tensor_specs(config);
  int64_t total = 0, done = 0;
  for (const TensorSpec& spec : specs) total += spec.rows * spec.cols;
  for (const TensorSpec& spec : specs) {
    std::mt19937_64 rng(tensor_seed++);
    std::normal_distribution<float> normal(0.0f, 0.02f);
    const bool vector = spec.rows == 1;
    std::vector<float> values(static_cast<size_t>(spec.rows * spec.cols));
    for (float& x : values) x = spec.name.ends_with("_norm.weight") ? 1.0f : normal(rng);
    const WeightType t = vector ? WeightType::kF32 : (row_layout_ok(type, spec.cols) ? type : WeightType::kF16);
    auto bytes = std::make_shared<std::vector<std::byte>>(quantize(values, spec.rows, spec.cols, t));
    tensors[spec.name] = WeightTensor{.type = t, .data = bytes->data(), .rows = spec.rows, .cols = spec.cols};
    storage.push_back(bytes);
    done += spec.rows * spec.cols;
    if (progress) progress(done, total);
  }
  Result<ModelWeights> w = ModelWeights::from_tensors(config, tensors, std::move(storage),
                                                      fmt::format("random(seed={}, {})", seed, weight_type_name(type)));
  KVP_CHECK(w.ok(), "{}", w.error().message());
  return std::move(w).value();
}

Tokenizer synthetic_tokenizer(int vocab_size) {
  KVP_CHECK(vocab_size >= 260);
  Vocabulary v;
  v.pieces = {"<unk>", "<s>", "</s>"};
  v.types = {TokenType::kUnknown, TokenType::kControl, TokenType::kControl};
  for (int b = 0; b < 256; ++b) {
    v.pieces.push_back(fmt::format("<0x{:02X}>", b));
    v.types.push_back(TokenType::kByte);
  }
  for (int i = static_cast<int>(v.pieces.size()); i < vocab_size; ++i) {
    v.pieces.push_back(fmt::format("\xE2\x96\x81w{}", i));
    v.types.push_back(TokenType::kNormal);
  }
  v.scores.assign(v.pieces.size(), 0.0f);
  for (size_t i = 259; i < v.pieces.size(); ++i) v.scores[i] = -static_cast<float>(i);
  v.bos = 1;
  v.eos = 2;
  Result<Tokenizer> t = Tokenizer::create(std::move(v), "synthetic");
  KVP_CHECK(t.ok(), "{}", t.error().message());
  return std::move(t).value();
}

Status save_hf(const std::string& dir, const ModelWeights& weights, const Tokenizer& tokenizer,
               const HfWriteOptions& options) {
  const ModelConfig& c = weights.config();
  if (c.rope_style != RopeStyle::kHalf) {
    return make_error("{}: Hugging Face checkpoints store rotate-half q/k rows; convert with with_rope_style first", dir);
  }
  if (options.shards < 1 || options.shards > 999) return make_error("--shards: expected 1..999, found {}", options.shards);
  std::error_code ec;
  if (fs::exists(dir, ec)) return make_error("{}: already exists; remove it or choose another --out", dir);
  const fs::path tmp = fs::path(dir).string() + fmt::format(".tmp-{}", ::getpid());
  fs::remove_all(tmp, ec);
  if (!fs::create_directories(tmp, ec)) return make_error("{}: cannot create: {}", tmp.string(), ec.message());
  auto fail = [&](Error e) {
    fs::remove_all(tmp, ec);
    return e;
  };

  nlohmann::ordered_json config = {
      {"architectures", {c.architecture == "qwen2" ? "Qwen2ForCausalLM" : "LlamaForCausalLM"}},
      {"model_type", c.architecture == "qwen2" ? "qwen2" : "llama"},
      {"hidden_size", c.dim},
      {"intermediate_size", c.hidden_dim},
      {"num_hidden_layers", c.n_layers},
      {"num_attention_heads", c.n_heads},
      {"num_key_value_heads", c.n_kv_heads},
      {"head_dim", c.head_dim()},
      {"vocab_size", c.vocab_size},
      {"max_position_embeddings", c.seq_len},
      {"rms_norm_eps", c.norm_eps},
      {"rope_theta", c.rope_theta},
      {"tie_word_embeddings", c.shared_classifier},
      {"hidden_act", "silu"},
      {"torch_dtype", std::string(weight_type_name(weights.layer(0).wq.type)) == "bf16" ? "bfloat16" : "float32"},
  };
  if (!c.rope_freq_divisors.empty()) return fail(make_error("{}: writing scaled RoPE to config.json is not supported", dir));
  const Vocabulary& v = tokenizer.vocabulary();
  if (v.bos >= 0) config["bos_token_id"] = v.bos;
  if (v.eos >= 0) config["eos_token_id"] = v.eos;
  if (Status s = write_file_atomic((tmp / "config.json").string(), config.dump(2) + "\n"); !s.ok()) return fail(s.error());
  nlohmann::ordered_json generation = {{"bos_token_id", v.bos}, {"eos_token_id", v.eos}};
  KVP_RETURN_IF_ERROR(write_file_atomic((tmp / "generation_config.json").string(), generation.dump(2) + "\n"));
  Result<nlohmann::ordered_json> tj = tokenizer_json(tokenizer);
  if (!tj.ok()) return fail(tj.error());
  KVP_RETURN_IF_ERROR(write_file_atomic((tmp / "tokenizer.json").string(), tj->dump(2) + "\n"));

  // Tensors in HF order, split into shards of about equal bytes.
  std::vector<std::pair<std::string, const WeightTensor*>> order;
  int64_t total = 0;
  for (const auto& [name, t] : weights.tensors()) {
    if (t.type == WeightType::kQ8_0) return fail(make_error("{}: tensor {}: safetensors holds f32, f16 or bf16, not q8_0", dir, name));
    const std::optional<std::string> hf = hf_tensor_name(name);
    KVP_CHECK(hf.has_value(), "no Hugging Face name for {}", name);
    order.emplace_back(*hf, &t);
    total += static_cast<int64_t>(t.bytes());
  }
  std::sort(order.begin(), order.end());
  nlohmann::ordered_json weight_map = nlohmann::ordered_json::object();
  size_t next = 0;
  for (int shard = 0; shard < options.shards; ++shard) {
    const std::string file = options.shards == 1 ? "model.safetensors"
                                                 : fmt::format("model-{:05d}-of-{:05d}.safetensors", shard + 1, options.shards);
    SafetensorsWriter w;
    w.set_metadata("format", "pt");
    const int64_t until = total * (shard + 1) / options.shards;
    int64_t written = total * shard / options.shards;
    while (next < order.size() && (written < until || shard + 1 == options.shards)) {
      const auto& [name, t] = order[next++];
      const TensorDtype dtype = t->type == WeightType::kF32 ? TensorDtype::kF32
                                : t->type == WeightType::kF16 ? TensorDtype::kF16 : TensorDtype::kBF16;
      std::vector<int64_t> shape = t->rows == 1 ? std::vector<int64_t>{t->cols} : std::vector<int64_t>{t->rows, t->cols};
      w.add(name, dtype, shape, std::span<const std::byte>(t->data, t->bytes()));
      weight_map[name] = file;
      written += static_cast<int64_t>(t->bytes());
    }
    Result<std::string> digest = w.write((tmp / file).string());
    if (!digest.ok()) return fail(digest.error());
  }
  if (options.shards > 1) {
    const nlohmann::ordered_json index = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
    KVP_RETURN_IF_ERROR(write_file_atomic((tmp / "model.safetensors.index.json").string(), index.dump(2) + "\n"));
  }
  fs::rename(tmp, dir, ec);
  if (ec) return fail(make_error("{}: cannot rename the finished folder {} into place: {}", dir, tmp.string(), ec.message()));
  return ok_status();
}

}  // namespace kvp
