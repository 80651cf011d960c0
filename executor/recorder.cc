#include "executor/recorder.h"

#include <chrono>
#include <cmath>

#include "common/sha256.h"
#include "executor/cpu/cpu_backend.h"
#include "executor/generator.h"
#include "traces/trace.h"
#include "traces/trace_writer.h"

namespace kvp {
namespace {

// Collects, for one sequence in one pass, every layer's q, k, v and residual norm.
class RecordingObserver final : public ForwardObserver {
 public:
  RecordingObserver(const ModelConfig& c, int n_tokens) : config_(c), n_tokens_(n_tokens) {
    layers_.resize(c.n_layers);
    for (auto& l : layers_) {
      l.q.resize(size_t(n_tokens) * c.q_dim());
      l.k.resize(size_t(n_tokens) * c.kv_dim());
      l.v.resize(size_t(n_tokens) * c.kv_dim());
      l.resid_norm.resize(n_tokens);
    }
    x_.resize(size_t(n_tokens) * c.dim);
  }

  void before_layer(int layer_idx, const Backend& b) override {
    b.read(Act::kX, x_);
    for (int t = 0; t < n_tokens_; ++t) {
      double ss = 0;
      for (int i = 0; i < config_.dim; ++i) ss += double(x_[size_t(t) * config_.dim + i]) * x_[size_t(t) * config_.dim + i];
      layers_[layer_idx].resid_norm[t] = static_cast<float>(std::sqrt(ss));
    }
  }
  void after_qkv(int layer_idx, const Backend& b) override {
    b.read(Act::kQ, layers_[layer_idx].q);
    b.read(Act::kK, layers_[layer_idx].k);
    b.read(Act::kV, layers_[layer_idx].v);
  }
  const TraceLayer& layer(int l) const { return layers_[l]; }

 private:
  const ModelConfig& config_;
  int n_tokens_;
  std::vector<TraceLayer> layers_;
  std::vector<float> x_;
};

// log p(tokens[t + 1] | tokens[..t]) from logits [T - 1, vocab], in double for stability.
std::vector<float> next_token_logprobs(const std::vector<float>& logits, const std::vector<int32_t>& tokens,
                                       int vocab) {
  std::vector<float> out(tokens.size() - 1);
  for (size_t t = 0; t + 1 < tokens.size(); ++t) {
    const float* row = logits.data() + t * size_t(vocab);
    double mx = row[0];
    for (int i = 1; i < vocab; ++i) mx = std::max(mx, double(row[i]));
    double sum = 0;
    for (int i = 0; i < vocab; ++i) sum += std::exp(double(row[i]) - mx);
    out[t] = static_cast<float>(double(row[tokens[t + 1]]) - mx - std::log(sum));
  }
  return out;
}

}  // namespace

Result<std::string> model_fingerprint(const LoadedModel& model) { return fingerprint_files(model.files); }

Result<RecordStats> record_trace(const LoadedModel& model, const Corpus& corpus,
                                 const RecordOptions& options,
                                 const std::function<void(int, int64_t)>& progress) {
  const auto start = std::chrono::steady_clock::now();
  const ModelConfig& c = model.weights.config();
  if (options.prompt_len < 1) {
    return make_error("--prompt-len: expected at least 1, found {}", options.prompt_len);
  }
  KVP_ASSIGN_OR_RETURN(std::string fingerprint, model_fingerprint(model));
  KVP_ASSIGN_OR_RETURN(TraceWriter writer, TraceWriter::create(options.out_dir, options.overwrite));

  SafetensorsWriter projections;
  for (int l = 0; l < c.n_layers; ++l) {
    // The projection as the model computes with it: its stored values, widened exactly.
    projections.add_f32(trace_tensor_name(l, "wo"), {c.dim, c.q_dim()}, dequantize(model.weights.layer(l).wo));
  }
  KVP_RETURN_IF_ERROR(writer.set_projections(projections));

  CpuBackend backend(model.weights, options.threads);
  Decoder decoder(backend);
  RecordStats stats;
  std::vector<float> logits;
  for (const std::vector<int32_t>& tokens : corpus.sequences) {
    const int T = static_cast<int>(tokens.size());
    if (T < 2 || T > c.seq_len) {
      return make_error("{}: sequence {}: {} tokens, expected 2..{} (the model's seq_len)",
                        corpus.source, stats.n_sequences, T, c.seq_len);
    }
    backend.reset_sequences({full_cache_budgets(c, T)});
    StepRows rows;
    std::vector<int32_t> logit_rows;
    for (int t = 0; t < T; ++t) {
      rows.add(tokens[t], t, 0);
      if (t + 1 < T) logit_rows.push_back(t);
    }
    RecordingObserver observer(c, T);
    decoder.forward(rows, logit_rows, &logits, &observer);

    SafetensorsWriter file;
    file.add_i32("tokens", {T}, tokens);
    file.add_f32("ref_logprob", {T - 1}, next_token_logprobs(logits, tokens, c.vocab_size));
    for (int l = 0; l < c.n_layers; ++l) {
      const TraceLayer& layer = observer.layer(l);
      file.add_float_as(trace_tensor_name(l, "q"), options.qkv_dtype, {T, c.n_heads, c.head_dim()}, layer.q);
      file.add_float_as(trace_tensor_name(l, "k"), options.qkv_dtype, {T, c.n_kv_heads, c.head_dim()}, layer.k);
      file.add_float_as(trace_tensor_name(l, "v"), options.qkv_dtype, {T, c.n_kv_heads, c.head_dim()}, layer.v);
      file.add_f32(trace_tensor_name(l, "resid_norm"), {T}, layer.resid_norm);
    }
    KVP_RETURN_IF_ERROR(writer.add_sequence(file, std::min(options.prompt_len, T - 1), T));
    ++stats.n_sequences;
    stats.n_tokens += T;
    stats.bytes += int64_t{T} * (4 + 4 + c.n_layers * (4 + (c.q_dim() + 2 * c.kv_dim()) *
                                                         dtype_bytes(options.qkv_dtype)));
    if (progress) progress(stats.n_sequences, stats.bytes);
  }

  TraceManifest manifest;
  manifest.model = TraceModelShape{.fingerprint = fingerprint,
                                   .source = model.files.model_path,
                                   .dim = c.dim,
                                   .hidden_dim = c.hidden_dim,
                                   .n_layers = c.n_layers,
                                   .n_heads = c.n_heads,
                                   .n_kv_heads = c.n_kv_heads,
                                   .head_dim = c.head_dim(),
                                   .vocab_size = c.vocab_size,
                                   .seq_len = c.seq_len};
  manifest.recorder_backend = std::string(backend.name());
  manifest.qkv_dtype = options.qkv_dtype;
  manifest.tool_version = options.tool_version;
  manifest.corpus = corpus.source;
  KVP_RETURN_IF_ERROR(writer.finish(std::move(manifest)));
  stats.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return stats;
}

}  // namespace kvp
