#include "executor/model/model_weights.h"

#include <cmath>
#include <random>

namespace kvp {
namespace {

// The llama2.c layout: each tensor kind is stored for all layers before the next kind.
struct Layout {
  size_t embedding, rms_att, wq, wk, wv, wo, rms_ffn, w1, w2, w3, rms_final, rope, classifier, end;
};

Layout llama2c_layout(const ModelConfig& c) {
  const size_t d = c.dim, h = c.hidden_dim, q = c.q_dim(), kv = c.kv_dim(), L = c.n_layers;
  Layout l{};
  size_t at = 0;
  auto take = [&](size_t n) { size_t start = at; at += n; return start; };
  l.embedding = take(size_t(c.vocab_size) * d);
  l.rms_att = take(L * d);
  l.wq = take(L * q * d);
  l.wk = take(L * kv * d);
  l.wv = take(L * kv * d);
  l.wo = take(L * d * q);
  l.rms_ffn = take(L * d);
  l.w1 = take(L * h * d);
  l.w2 = take(L * d * h);
  l.w3 = take(L * h * d);
  l.rms_final = take(d);
  l.rope = take(size_t(c.seq_len) * c.head_dim());  // two legacy tables, unused
  l.classifier = c.shared_classifier ? l.embedding : take(size_t(c.vocab_size) * d);
  l.end = at;
  return l;
}

std::string layer_name(int layer_idx, const char* what) { return fmt::format("blk.{}.{}", layer_idx, what); }

bool is_vector_name(const std::string& name) {
  return name.ends_with("_norm.weight") || name.ends_with(".bias");
}

WeightTensor f32_view(const float* data, int64_t rows, int64_t cols) {
  return WeightTensor{.type = WeightType::kF32, .data = reinterpret_cast<const std::byte*>(data), .rows = rows, .cols = cols};
}

}  // namespace

std::vector<TensorSpec> model_tensor_specs(const ModelConfig& c) {
  const int64_t d = c.dim, h = c.hidden_dim, q = c.q_dim(), kv = c.kv_dim();
  std::vector<TensorSpec> specs = {{"token_embd.weight", c.vocab_size, d}};
  for (int l = 0; l < c.n_layers; ++l) {
    specs.push_back({layer_name(l, "attn_norm.weight"), 1, d});
    specs.push_back({layer_name(l, "attn_q.weight"), q, d});
    specs.push_back({layer_name(l, "attn_k.weight"), kv, d});
    specs.push_back({layer_name(l, "attn_v.weight"), kv, d});
    if (c.qkv_bias) {
      specs.push_back({layer_name(l, "attn_q.bias"), 1, q});
      specs.push_back({layer_name(l, "attn_k.bias"), 1, kv});
      specs.push_back({layer_name(l, "attn_v.bias"), 1, kv});
    }
    specs.push_back({layer_name(l, "attn_output.weight"), d, q});
    specs.push_back({layer_name(l, "ffn_norm.weight"), 1, d});
    specs.push_back({layer_name(l, "ffn_gate.weight"), h, d});
    specs.push_back({layer_name(l, "ffn_down.weight"), d, h});
    specs.push_back({layer_name(l, "ffn_up.weight"), h, d});
  }
  specs.push_back({"output_norm.weight", 1, d});
  if (!c.shared_classifier) specs.push_back({"output.weight", c.vocab_size, d});
  return specs;
}

Result<ModelWeights> ModelWeights::from_tensors(const ModelConfig& config, const NamedTensors& tensors,
                                                std::vector<std::shared_ptr<const void>> storage,
                                                const std::string& source) {
  KVP_RETURN_IF_ERROR(config.validate().ok() ? ok_status() : config.validate().error().with_context(source));
  ModelWeights w;
  w.config_ = config;
  w.storage_ = std::move(storage);
  w.source_ = source;
  const std::vector<TensorSpec> specs = model_tensor_specs(config);
  for (const TensorSpec& spec : specs) {
    auto it = tensors.find(spec.name);
    if (it == tensors.end()) return make_error("{}: tensor {}: missing", source, spec.name);
    WeightTensor t = it->second;
    if (t.rows != spec.rows || t.cols != spec.cols) {
      return make_error("{}: tensor {}: shape: expected [{}, {}] for {}, found [{}, {}]", source, spec.name,
                        spec.rows, spec.cols, config.describe(), t.rows, t.cols);
    }
    if (!row_layout_ok(t.type, t.cols)) {
      return make_error("{}: tensor {}: {} rows of {} elements are not whole blocks", source, spec.name,
                        weight_type_name(t.type), t.cols);
    }
    if (is_vector_name(spec.name) && t.type != WeightType::kF32) {
      // Vectors are tiny: keep them as f32 so norms and biases need no per-type code.
      auto owned = std::make_shared<std::vector<float>>(dequantize(t));
      t = f32_view(owned->data(), t.rows, t.cols);
      w.storage_.push_back(owned);
    }
    w.tensors_[spec.name] = t;
  }
  for (const auto& [name, t] : tensors) {
    if (!w.tensors_.count(name) && !(name == "output.weight" && config.shared_classifier)) {
      return make_error("{}: tensor {}: not a tensor of a {} model with {} (is the file for another "
                        "architecture?)", source, name, config.architecture, config.describe());
    }
  }
  auto get = [&](const std::string& name) { return w.tensors_.at(name); };
  w.token_embedding_ = get("token_embd.weight");
  for (int l = 0; l < config.n_layers; ++l) {
    LayerWeights lw;
    lw.rms_att = get(layer_name(l, "attn_norm.weight")).f32();
    lw.wq = get(layer_name(l, "attn_q.weight"));
    lw.wk = get(layer_name(l, "attn_k.weight"));
    lw.wv = get(layer_name(l, "attn_v.weight"));
    lw.wo = get(layer_name(l, "attn_output.weight"));
    if (config.qkv_bias) {
      lw.bq = get(layer_name(l, "attn_q.bias")).f32();
      lw.bk = get(layer_name(l, "attn_k.bias")).f32();
      lw.bv = get(layer_name(l, "attn_v.bias")).f32();
    }
    lw.rms_ffn = get(layer_name(l, "ffn_norm.weight")).f32();
    lw.w1 = get(layer_name(l, "ffn_gate.weight"));
    lw.w2 = get(layer_name(l, "ffn_down.weight"));
    lw.w3 = get(layer_name(l, "ffn_up.weight"));
    w.layers_.push_back(lw);
  }
  w.rms_final_ = get("output_norm.weight").f32();
  w.classifier_ = config.shared_classifier ? w.token_embedding_ : get("output.weight");
  return w;
}

NamedTensors llama2c_tensor_views(const ModelConfig& config, const float* base) {
  const Layout l = llama2c_layout(config);
  const int64_t d = config.dim, h = config.hidden_dim, q = config.q_dim(), kv = config.kv_dim();
  NamedTensors t;
  t["token_embd.weight"] = f32_view(base + l.embedding, config.vocab_size, d);
  for (int i = 0; i < config.n_layers; ++i) {
    t[layer_name(i, "attn_norm.weight")] = f32_view(base + l.rms_att + i * d, 1, d);
    t[layer_name(i, "attn_q.weight")] = f32_view(base + l.wq + i * q * d, q, d);
    t[layer_name(i, "attn_k.weight")] = f32_view(base + l.wk + i * kv * d, kv, d);
    t[layer_name(i, "attn_v.weight")] = f32_view(base + l.wv + i * kv * d, kv, d);
    t[layer_name(i, "attn_output.weight")] = f32_view(base + l.wo + i * d * q, d, q);
    t[layer_name(i, "ffn_norm.weight")] = f32_view(base + l.rms_ffn + i * d, 1, d);
    t[layer_name(i, "ffn_gate.weight")] = f32_view(base + l.w1 + i * h * d, h, d);
    t[layer_name(i, "ffn_down.weight")] = f32_view(base + l.w2 + i * d * h, d, h);
    t[layer_name(i, "ffn_up.weight")] = f32_view(base + l.w3 + i * h * d, h, d);
  }
  t["output_norm.weight"] = f32_view(base + l.rms_final, 1, d);
  if (!config.shared_classifier) t["output.weight"] = f32_view(base + l.classifier, config.vocab_size, d);
  return t;
}

ModelWeights::ModelWeights(const ModelConfig& config, std::vector<float> data) {
  KVP_CHECK(config.validate().ok());
  KVP_CHECK(data.size() == llama2c_layout(config).end, "expected {} floats, got {}", llama2c_layout(config).end, data.size());
  auto owned = std::make_shared<std::vector<float>>(std::move(data));
  Result<ModelWeights> w = from_tensors(config, llama2c_tensor_views(config, owned->data()), {owned}, "");
  KVP_CHECK(w.ok(), "{}", w.error().message());
  *this = std::move(w).value();
}

int64_t ModelWeights::weight_bytes() const {
  int64_t total = 0;
  for (const auto& [name, t] : tensors_) total += static_cast<int64_t>(t.bytes());
  return total;
}

std::string ModelWeights::type_summary() const {
  std::map<std::string, int> counts;
  for (const auto& [name, t] : tensors_) ++counts[std::string(weight_type_name(t.type))];
  std::string out;
  for (const auto& [type, n] : counts) out += fmt::format("{}{} ({})", out.empty() ? "" : ", ", type, n);
  return out;
}

ModelWeights ModelWeights::repeat_layer(ModelWeights one_layer, int n_layers) {
  KVP_CHECK(one_layer.config_.n_layers == 1 && n_layers >= 1, "repeat_layer takes a one-layer model");
  ModelWeights w = std::move(one_layer);
  w.config_.n_layers = n_layers;
  w.layers_.assign(n_layers, w.layers_[0]);
  return w;
}

std::vector<TensorSpan> llama2c_tensor_spans(const ModelConfig& config) {
  const Layout l = llama2c_layout(config);
  const size_t d = config.dim, h = config.hidden_dim, q = config.q_dim(), kv = config.kv_dim();
  const size_t L = config.n_layers;
  std::vector<TensorSpan> t = {
      {"token_embedding", l.embedding, size_t(config.vocab_size) * d},
      {"rms_att", l.rms_att, L * d},
      {"wq", l.wq, L * q * d},
      {"wk", l.wk, L * kv * d},
      {"wv", l.wv, L * kv * d},
      {"wo", l.wo, L * d * q},
      {"rms_ffn", l.rms_ffn, L * d},
      {"w1", l.w1, L * h * d},
      {"w2", l.w2, L * d * h},
      {"w3", l.w3, L * h * d},
      {"rms_final", l.rms_final, d},
  };
  if (!config.shared_classifier) {
    t.push_back({"classifier", l.classifier, size_t(config.vocab_size) * d});
  }
  return t;
}

int64_t llama2c_float_count(const ModelConfig& config) {
  return static_cast<int64_t>(llama2c_layout(config).end);
}

ModelWeights random_weights(const ModelConfig& config, uint64_t seed) {
  KVP_CHECK(config.validate().ok());
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  if (config.head_size == 0 && !config.qkv_bias) {  // the llama2.c layout, as before
    std::vector<float> data(static_cast<size_t>(llama2c_float_count(config)));
    for (float& x : data) x = normal(rng);
    for (const auto& t : llama2c_tensor_spans(config)) {
      if (t.name.rfind("rms_", 0) == 0) std::fill_n(data.begin() + t.offset, t.count, 1.0f);
    }
    ModelWeights weights(config, std::move(data));
    weights.set_source(fmt::format("random(seed={})", seed));
    return weights;
  }
  NamedTensors tensors;
  std::vector<std::shared_ptr<const void>> storage;
  for (const TensorSpec& spec : model_tensor_specs(config)) {
    auto owned = std::make_shared<std::vector<float>>(static_cast<size_t>(spec.rows * spec.cols));
    for (float& x : *owned) x = spec.name.ends_with("_norm.weight") ? 1.0f : normal(rng);
    tensors[spec.name] = f32_view(owned->data(), spec.rows, spec.cols);
    storage.push_back(owned);
  }
  Result<ModelWeights> w = ModelWeights::from_tensors(config, tensors, std::move(storage),
                                                      fmt::format("random(seed={})", seed));
  KVP_CHECK(w.ok(), "{}", w.error().message());
  return std::move(w).value();
}

ModelWeights convert_weights(const ModelWeights& weights, WeightType type) {
  NamedTensors tensors;
  std::vector<std::shared_ptr<const void>> storage;
  for (const auto& [name, t] : weights.tensors()) {
    if (is_vector_name(name)) {  // copied, so the result does not depend on `weights`
      auto owned = std::make_shared<std::vector<float>>(t.f32(), t.f32() + t.rows * t.cols);
      tensors[name] = f32_view(owned->data(), t.rows, t.cols);
      storage.push_back(owned);
      continue;
    }
    if (t.type == type) {
      auto owned = std::make_shared<std::vector<std::byte>>(t.data, t.data + t.bytes());
      tensors[name] = WeightTensor{.type = type, .data = owned->data(), .rows = t.rows, .cols = t.cols};
      storage.push_back(owned);
      continue;
    }
    // q8_0 takes whole blocks; a matrix whose rows are not (stories260K's ffn_down, 172 wide)
    // falls back to f16, as llama.cpp's quantizer does.
    const WeightType target = row_layout_ok(type, t.cols) ? type : WeightType::kF16;
    const std::vector<float> values = dequantize(t);
    auto owned = std::make_shared<std::vector<std::byte>>(quantize(values, t.rows, t.cols, target));
    tensors[name] = WeightTensor{.type = target, .data = owned->data(), .rows = t.rows, .cols = t.cols};
    storage.push_back(owned);
  }
  Result<ModelWeights> w = ModelWeights::from_tensors(weights.config(), tensors, std::move(storage),
                                                      weights.source());
  KVP_CHECK(w.ok(), "{}", w.error().message());
  return std::move(w).value();
}

Status check_finite(const ModelWeights& weights) {
  for (const auto& [name, t] : weights.tensors()) {
    const int64_t bad = first_non_finite(t);
    if (bad >= 0) {
      return make_error("{}: tensor {}: element {} is not finite (NaN or Inf); expected finite weights "
                        "(--no-check-weights skips this scan)", weights.source(), name, bad);
    }
  }
  return ok_status();
}

}  // namespace kvp
