#include "executor/recorder.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <span>

#include "common/sha256.h"
#include "executor/cpu/cpu_backend.h"
#include "executor/generator.h"
#include "traces/trace.h"
#include "traces/trace_writer.h"

namespace kvp {
namespace {

// Collects, for one sequence over its chunks, the recorded layers' q (at the recorded query
// positions), k, v and residual norm.
class RecordingObserver final : public ForwardObserver {
 public:
  RecordingObserver(const ModelConfig& c, const std::vector<int>& layers, std::vector<int32_t> query_rows, int n_queries)
      : config_(c), query_rows_(std::move(query_rows)), slot_(c.n_layers, -1) {
    const size_t T = query_rows_.size(), Tq = static_cast<size_t>(n_queries);
    for (int l : layers) {
      slot_[l] = static_cast<int>(layers_.size());
      TraceLayer& t = layers_.emplace_back();
      t.q.resize(Tq * c.q_dim());
      t.k.resize(T * c.kv_dim());
      t.v.resize(T * c.kv_dim());
      t.resid_norm.resize(T);
    }
  }
  // The next forward pass runs positions [first, first + n).
  void set_chunk(int first, int n) {
    first_ = first;
    n_ = n;
    x_.resize(size_t(n) * config_.dim);
    rows_.resize(size_t(n) * std::max(config_.q_dim(), config_.kv_dim()));
  }

  void before_layer(int layer_idx, const Backend& b) override {
    if (slot_[layer_idx] < 0) return;
    b.read(Act::kX, x_);
    TraceLayer& layer = layers_[slot_[layer_idx]];
    for (int t = 0; t < n_; ++t) {
      double ss = 0;
      for (int i = 0; i < config_.dim; ++i) ss += double(x_[size_t(t) * config_.dim + i]) * x_[size_t(t) * config_.dim + i];
      layer.resid_norm[first_ + t] = static_cast<float>(std::sqrt(ss));
    }
  }
  void after_qkv(int layer_idx, const Backend& b) override {
    if (slot_[layer_idx] < 0) return;
    TraceLayer& layer = layers_[slot_[layer_idx]];
    const size_t kv = config_.kv_dim(), qd = config_.q_dim();
    b.read(Act::kK, std::span(layer.k).subspan(first_ * kv, n_ * kv));
    b.read(Act::kV, std::span(layer.v).subspan(first_ * kv, n_ * kv));
    const std::span<float> q(rows_.data(), n_ * qd);
    b.read(Act::kQ, q);
    for (int t = 0; t < n_; ++t) {
      const int32_t r = query_rows_[first_ + t];
      if (r >= 0) std::copy_n(q.data() + t * qd, qd, layer.q.data() + r * qd);
    }
  }
  const TraceLayer& layer(int l) const { return layers_[slot_[l]]; }

 private:
  const ModelConfig& config_;
  std::vector<int32_t> query_rows_;  // per position: its row in q, or -1
  std::vector<int> slot_;            // per model layer: its index in layers_, or -1
  std::vector<TraceLayer> layers_;
  int first_ = 0, n_ = 0;
  std::vector<float> x_, rows_;
};

// log p(tokens[t + 1] | tokens[..t]) from logits [T - 1, vocab], in double for stability.
std::vector<float> next_token_logprobs(const std::vector<float>& logits, std::span<const int32_t> tokens,
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
  if (options.query_stride < 1) {
    return make_error("--query-stride: expected at least 1, found {}", options.query_stride);
  }
  if (options.chunk < 1) return make_error("--chunk: expected at least 1, found {}", options.chunk);
  std::vector<int> layers = options.layers;
  if (layers.empty()) {
    for (int l = 0; l < c.n_layers; ++l) layers.push_back(l);
  }
  for (size_t i = 0; i < layers.size(); ++i) {
    if (layers[i] < 0 || layers[i] >= c.n_layers || (i > 0 && layers[i] <= layers[i - 1])) {
      return make_error("--layers: expected increasing layer indices in 0..{}, found {}", c.n_layers - 1,
                        layers[i]);
    }
  }
  KVP_ASSIGN_OR_RETURN(std::string fingerprint, model_fingerprint(model));
  KVP_ASSIGN_OR_RETURN(TraceWriter writer, TraceWriter::create(options.out_dir, options.overwrite));

  SafetensorsWriter projections;
  for (int l : layers) {
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
    const int prompt_len = std::min(options.prompt_len, T - 1);
    const int n_queries = recorded_query_count(T, prompt_len, options.query_stride);
    backend.reset_sequences({full_cache_budgets(c, T)});
    RecordingObserver observer(c, layers, recorded_query_rows(T, prompt_len, options.query_stride), n_queries);
    std::vector<float> logprob;
    logprob.reserve(T - 1);
    // Teacher-forced in chunks through the full cache: a chunk's rows attend every earlier
    // position, exactly as one pass over the whole sequence would.
    for (int first = 0; first < T; first += options.chunk) {
      const int n = std::min(options.chunk, T - first);
      StepRows rows;
      std::vector<int32_t> logit_rows;
      for (int t = first; t < first + n; ++t) {
        rows.add(tokens[t], t, 0);
        if (t + 1 < T) logit_rows.push_back(t - first);
      }
      observer.set_chunk(first, n);
      decoder.forward(rows, logit_rows, &logits, &observer);
      const std::vector<float> chunk_logprob = next_token_logprobs(
          logits, std::span(tokens).subspan(first, std::min(n + 1, T - first)), c.vocab_size);
      logprob.insert(logprob.end(), chunk_logprob.begin(), chunk_logprob.end());
    }

    SafetensorsWriter file;
    file.add_i32("tokens", {T}, tokens);
    file.add_f32("ref_logprob", {T - 1}, logprob);
    for (int l : layers) {
      const TraceLayer& layer = observer.layer(l);
      file.add_float_as(trace_tensor_name(l, "q"), options.qkv_dtype, {n_queries, c.n_heads, c.head_dim()}, layer.q);
      file.add_float_as(trace_tensor_name(l, "k"), options.qkv_dtype, {T, c.n_kv_heads, c.head_dim()}, layer.k);
      file.add_float_as(trace_tensor_name(l, "v"), options.qkv_dtype, {T, c.n_kv_heads, c.head_dim()}, layer.v);
      file.add_f32(trace_tensor_name(l, "resid_norm"), {T}, layer.resid_norm);
    }
    KVP_RETURN_IF_ERROR(writer.add_sequence(file, prompt_len, T));
    ++stats.n_sequences;
    stats.n_tokens += T;
    const int64_t q_dtype = dtype_bytes(options.qkv_dtype);
    stats.bytes += int64_t{T} * 4 + int64_t{T - 1} * 4 +
                   int64_t(layers.size()) * (int64_t{T} * (4 + 2 * c.kv_dim() * q_dtype) +
                                             int64_t{n_queries} * c.q_dim() * q_dtype);
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
  manifest.layers = layers;
  manifest.query_stride = options.query_stride;
  manifest.tool_version = options.tool_version;
  manifest.corpus = corpus.source;
  KVP_RETURN_IF_ERROR(writer.finish(std::move(manifest)));
  stats.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return stats;
}

}  // namespace kvp
