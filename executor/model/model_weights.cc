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

}  // namespace

int64_t llama2c_float_count(const ModelConfig& config) {
  return static_cast<int64_t>(llama2c_layout(config).end);
}

ModelWeights::ModelWeights(const ModelConfig& config, std::vector<float> data)
    : config_(config), data_(std::move(data)) {
  KVP_CHECK(config_.validate().ok());
  const Layout l = llama2c_layout(config_);
  KVP_CHECK(data_.size() == l.end, "expected {} floats, got {}", l.end, data_.size());
  const float* base = data_.data();
  const size_t d = config_.dim, h = config_.hidden_dim, q = config_.q_dim(), kv = config_.kv_dim();
  token_embedding_ = base + l.embedding;
  for (int i = 0; i < config_.n_layers; ++i) {
    layers_.push_back(LayerWeights{
        .rms_att = base + l.rms_att + i * d,
        .wq = base + l.wq + i * q * d,
        .wk = base + l.wk + i * kv * d,
        .wv = base + l.wv + i * kv * d,
        .wo = base + l.wo + i * d * q,
        .rms_ffn = base + l.rms_ffn + i * d,
        .w1 = base + l.w1 + i * h * d,
        .w2 = base + l.w2 + i * d * h,
        .w3 = base + l.w3 + i * h * d,
    });
  }
  rms_final_ = base + l.rms_final;
  classifier_ = base + l.classifier;
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

ModelWeights random_weights(const ModelConfig& config, uint64_t seed) {
  KVP_CHECK(config.validate().ok());
  std::vector<float> data(static_cast<size_t>(llama2c_float_count(config)));
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  for (float& x : data) x = normal(rng);
  for (const auto& t : llama2c_tensor_spans(config)) {
    if (t.name.rfind("rms_", 0) == 0) std::fill_n(data.begin() + t.offset, t.count, 1.0f);
  }
  ModelWeights weights(config, std::move(data));
  weights.set_source(fmt::format("random(seed={})", seed));
  return weights;
}

}  // namespace kvp
