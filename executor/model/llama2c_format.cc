#include "executor/model/llama2c_format.h"

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>

#include "common/file_util.h"
#include "common/mapped_file.h"

namespace kvp {
namespace {

Result<ModelConfig> parse_header(const std::string& path, const int32_t (&h)[7],
                                 int64_t file_bytes) {
  ModelConfig c;
  c.dim = h[0];
  c.hidden_dim = h[1];
  c.n_layers = h[2];
  c.n_heads = h[3];
  c.n_kv_heads = h[4];
  c.shared_classifier = h[5] > 0;
  // A negative vocab_size flags an unshared classifier; INT32_MIN has no magnitude and is refused.
  c.vocab_size = h[5] == INT32_MIN ? 0 : std::abs(h[5]);
  c.seq_len = h[6];
  if (Status s = c.validate(); !s.ok()) {
    return s.error().with_context(fmt::format("{}: header field", path));
  }
  const int64_t expected = kLlama2cHeaderBytes + llama2c_float_count(c) * 4;
  if (file_bytes != expected) {
    return make_error("{}: file length: expected {} bytes for the header's shape ({}), found {}",
                      path, expected, c.describe(), file_bytes);
  }
  return c;
}

}  // namespace

Result<ModelConfig> read_llama2c_config(const std::string& path) {
  KVP_ASSIGN_OR_RETURN(int64_t file_bytes, regular_file_size(path));
  if (file_bytes < kLlama2cHeaderBytes) {
    return make_error("{}: header: expected at least {} bytes, found {}", path,
                      kLlama2cHeaderBytes, file_bytes);
  }
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> f(std::fopen(path.c_str(), "rb"), &std::fclose);
  if (!f) return make_error("{}: cannot open: {}", path, std::strerror(errno));
  int32_t header[7];
  if (std::fread(header, sizeof(header), 1, f.get()) != 1) {
    return make_error("{}: header: read failed", path);
  }
  return parse_header(path, header, file_bytes);
}

Result<ModelWeights> load_llama2c(const std::string& path, bool check_weights) {
  KVP_ASSIGN_OR_RETURN(ModelConfig config, read_llama2c_config(path));
  // Mapped, not read: the floats start 28 bytes into a page-aligned mapping, so they are aligned.
  KVP_ASSIGN_OR_RETURN(std::shared_ptr<const MappedFile> file, MappedFile::open(path));
  if (file->size() != static_cast<size_t>(kLlama2cHeaderBytes + llama2c_float_count(config) * 4)) {
    return make_error("{}: file length changed while loading", path);
  }
  const float* base = reinterpret_cast<const float*>(file->bytes().data() + kLlama2cHeaderBytes);
  KVP_ASSIGN_OR_RETURN(ModelWeights weights,
                       ModelWeights::from_tensors(config, llama2c_tensor_views(config, base), {file}, path));
  if (check_weights) KVP_RETURN_IF_ERROR(check_finite(weights));
  return weights;
}

Status save_llama2c(const std::string& path, const ModelWeights& weights) {
  const ModelConfig& c = weights.config();
  if (c.head_size != 0 || c.qkv_bias || c.rope_style != RopeStyle::kInterleaved || !c.rope_freq_divisors.empty()) {
    return make_error("{}: a llama2.c checkpoint cannot hold this model (head_dim, biases or RoPE settings)", path);
  }
  const int32_t header[7] = {c.dim,        c.hidden_dim,
                             c.n_layers,   c.n_heads,
                             c.n_kv_heads, c.shared_classifier ? c.vocab_size : -c.vocab_size,
                             c.seq_len};
  return write_file_atomic(path, [&](std::FILE* out) -> Status {
    KVP_RETURN_IF_ERROR(write_all(out, header, sizeof(header), path));
    auto put = [&](const WeightTensor& t) -> Status {
      const std::vector<float> v = dequantize(t);
      return write_all(out, v.data(), v.size() * sizeof(float), path);
    };
    const NamedTensors& t = weights.tensors();
    auto per_layer = [&](const char* what) -> Status {
      for (int l = 0; l < c.n_layers; ++l) KVP_RETURN_IF_ERROR(put(t.at(fmt::format("blk.{}.{}", l, what))));
      return ok_status();
    };
    KVP_RETURN_IF_ERROR(put(weights.token_embedding()));
    for (const char* what : {"attn_norm.weight", "attn_q.weight", "attn_k.weight", "attn_v.weight",
                             "attn_output.weight", "ffn_norm.weight", "ffn_gate.weight", "ffn_down.weight",
                             "ffn_up.weight"}) {
      KVP_RETURN_IF_ERROR(per_layer(what));
    }
    KVP_RETURN_IF_ERROR(put(t.at("output_norm.weight")));
    const std::vector<float> legacy_rope(static_cast<size_t>(c.seq_len) * c.head_dim(), 0.0f);  // unused
    KVP_RETURN_IF_ERROR(write_all(out, legacy_rope.data(), legacy_rope.size() * sizeof(float), path));
    if (!c.shared_classifier) KVP_RETURN_IF_ERROR(put(weights.classifier()));
    return ok_status();
  });
}

}  // namespace kvp
