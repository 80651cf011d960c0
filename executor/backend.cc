#include "executor/backend.h"

#include <cmath>

namespace kvp {

int act_width(const ModelConfig& c, Act act) {
  switch (act) {
    case Act::kX:
    case Act::kXb: return c.dim;
    case Act::kQ:
    case Act::kAttn: return c.q_dim();
    case Act::kK:
    case Act::kV: return c.kv_dim();
    case Act::kHb:
    case Act::kHb2: return c.hidden_dim;
    case Act::kLogits: return c.vocab_size;
  }
  KVP_CHECK(false, "unknown Act {}", static_cast<int>(act));
}

WeightShape weight_shape(const ModelConfig& c, Weight w) {
  switch (w) {
    case Weight::kRmsAtt:
    case Weight::kRmsFfn:
    case Weight::kRmsFinal: return {c.dim, 1};
    case Weight::kWq: return {c.q_dim(), c.dim};
    case Weight::kWk:
    case Weight::kWv: return {c.kv_dim(), c.dim};
    case Weight::kWo: return {c.dim, c.q_dim()};
    case Weight::kW1:
    case Weight::kW3: return {c.hidden_dim, c.dim};
    case Weight::kW2: return {c.dim, c.hidden_dim};
    case Weight::kClassifier: return {c.vocab_size, c.dim};
  }
  KVP_CHECK(false, "unknown Weight {}", static_cast<int>(w));
}

bool is_norm(Weight w) { return w == Weight::kRmsAtt || w == Weight::kRmsFfn || w == Weight::kRmsFinal; }

const float* norm_weight(const ModelWeights& weights, Weight w, int layer_idx) {
  switch (w) {
    case Weight::kRmsFinal: return weights.rms_final();
    case Weight::kRmsAtt: return weights.layer(layer_idx).rms_att;
    case Weight::kRmsFfn: return weights.layer(layer_idx).rms_ffn;
    default: break;
  }
  KVP_CHECK(false, "Weight {} is not a norm", static_cast<int>(w));
}

const WeightTensor& matrix_weight(const ModelWeights& weights, Weight w, int layer_idx) {
  if (w == Weight::kClassifier) return weights.classifier();
  const LayerWeights& l = weights.layer(layer_idx);
  switch (w) {
    case Weight::kWq: return l.wq;
    case Weight::kWk: return l.wk;
    case Weight::kWv: return l.wv;
    case Weight::kWo: return l.wo;
    case Weight::kW1: return l.w1;
    case Weight::kW2: return l.w2;
    case Weight::kW3: return l.w3;
    default: break;
  }
  KVP_CHECK(false, "Weight {} is not a matrix", static_cast<int>(w));
}

const float* matrix_bias(const ModelWeights& weights, Weight w, int layer_idx) {
  if (w != Weight::kWq && w != Weight::kWk && w != Weight::kWv) return nullptr;
  const LayerWeights& l = weights.layer(layer_idx);
  return w == Weight::kWq ? l.bq : w == Weight::kWk ? l.bk : l.bv;
}

StepRows select_step_rows(const StepRows& rows, std::span<const int32_t> row_idx,
                          const std::function<void(int32_t from, int32_t to)>& move_row) {
  StepRows kept;
  for (size_t i = 0; i < row_idx.size(); ++i) {
    const int32_t r = row_idx[i];
    KVP_CHECK(r >= static_cast<int32_t>(i) && r < static_cast<int32_t>(rows.size()), "rows must be increasing");
    if (r != static_cast<int32_t>(i)) move_row(r, static_cast<int32_t>(i));
    kept.add(rows.tokens[r], rows.positions[r], rows.seq_idx[r], rows.prompt_len[r]);
  }
  return kept;
}

void rope_tables(const ModelConfig& config, std::vector<float>* cos_table, std::vector<float>* sin_table) {
  const int half = config.head_dim() / 2;
  cos_table->resize(static_cast<size_t>(config.seq_len) * half);
  sin_table->resize(cos_table->size());
  for (int pos = 0; pos < config.seq_len; ++pos) {
    for (int i = 0; i < half; ++i) {
      float freq = 1.0f / std::pow(config.rope_theta, static_cast<float>(2 * i) / config.head_dim());
      if (!config.rope_freq_divisors.empty()) freq /= config.rope_freq_divisors[i];
      const float angle = static_cast<float>(pos) * freq;
      (*cos_table)[static_cast<size_t>(pos) * half + i] = std::cos(angle);
      (*sin_table)[static_cast<size_t>(pos) * half + i] = std::sin(angle);
    }
  }
}

void Backend::pick_tokens(const SamplerOptions& options, std::span<const float> uniforms, std::span<int32_t> out) {
  const size_t vocab = static_cast<size_t>(config().vocab_size);
  KVP_CHECK(uniforms.size() == size_t(n_rows()) && out.size() == size_t(n_rows()));
  thread_local std::vector<float> logits;
  logits.resize(out.size() * vocab);
  read(Act::kLogits, logits);
  for (size_t r = 0; r < out.size(); ++r) {
    out[r] = pick_token(std::span<const float>(logits.data() + r * vocab, vocab), options, uniforms[r]);
  }
}

void Backend::reset_pool(int n_sequences, int64_t /*pool_bytes*/, KvDtype dtype, std::shared_ptr<const Policy> policy) {
  const ModelConfig& c = config();
  KvBudgets empty = KvBudgets::uniform(c.n_layers, c.n_kv_heads, c.head_dim(), 0, dtype);
  if (policy) empty.aux_floats_per_slot = policy->aux_floats_per_slot();
  reset_sequences(std::vector<KvBudgets>(static_cast<size_t>(n_sequences), empty), std::move(policy));
}

void Backend::open_sequence(int, const KvBudgets&, std::shared_ptr<const Policy>) {
  KVP_CHECK(false, "the {} backend does not open single sequences", name());
}

void Backend::close_sequence(int) { KVP_CHECK(false, "the {} backend does not close single sequences", name()); }

}  // namespace kvp
