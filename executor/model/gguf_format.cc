#include "executor/model/gguf_format.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "common/file_util.h"

namespace kvp {
namespace {

// Bounds far beyond any real file; they keep every allocation sized by a checked count.
constexpr uint64_t kMaxStringBytes = 64ull << 20;  // chat templates are a few KB
constexpr uint64_t kMaxKeyBytes = 1 << 16;
constexpr uint64_t kMaxTensorNameBytes = 1 << 10;
constexpr uint32_t kMaxDims = 4;

constexpr uint32_t kGgmlF32 = 0, kGgmlF16 = 1, kGgmlQ4_0 = 2, kGgmlQ4_1 = 3, kGgmlQ8_0 = 8, kGgmlQ4_K = 12, kGgmlQ6_K = 14,
                   kGgmlBF16 = 30;

struct KnownType {
  uint32_t id;
  const char* name;
};
// ggml types kvplan knows by name but does not run (so the error can say which one it met).
constexpr KnownType kUnsupportedTypes[] = {
    {6, "Q5_0"}, {7, "Q5_1"}, {9, "Q8_1"}, {10, "Q2_K"}, {11, "Q3_K"},
    {13, "Q5_K"}, {15, "Q8_K"}, {16, "IQ2_XXS"}, {17, "IQ2_XS"},
    {18, "IQ3_XXS"}, {19, "IQ1_S"}, {20, "IQ4_NL"}, {21, "IQ3_S"}, {22, "IQ2_S"}, {23, "IQ4_XS"},
    {24, "I8"}, {25, "I16"}, {26, "I32"}, {27, "I64"}, {28, "F64"}, {29, "IQ1_M"}, {34, "TQ1_0"}, {35, "TQ2_0"},
};

Result<WeightType> weight_type_of(uint32_t ggml_type) {
  switch (ggml_type) {
    case kGgmlF32: return WeightType::kF32;
    case kGgmlF16: return WeightType::kF16;
    case kGgmlQ8_0: return WeightType::kQ8_0;
    case kGgmlBF16: return WeightType::kBF16;
    case kGgmlQ4_K: return WeightType::kQ4_K;
    case kGgmlQ6_K: return WeightType::kQ6_K;
    case kGgmlQ4_0: return WeightType::kQ4_0;
    case kGgmlQ4_1: return WeightType::kQ4_1;
    default: break;
  }
  for (const KnownType& k : kUnsupportedTypes) {
    if (k.id == ggml_type) {
      return make_error("type {} ({}) is not supported; kvplan runs F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K and Q6_K (requantize "
                        "with llama-quantize --allow-requantize ... Q8_0)", k.name, ggml_type);
    }
  }
  return make_error("type: unknown ggml type {}", ggml_type);
}

uint32_t ggml_type_of(WeightType t) {
  switch (t) {
    case WeightType::kF32: return kGgmlF32;
    case WeightType::kF16: return kGgmlF16;
    case WeightType::kBF16: return kGgmlBF16;
    case WeightType::kQ8_0: return kGgmlQ8_0;
    case WeightType::kQ4_K: return kGgmlQ4_K;
    case WeightType::kQ6_K: return kGgmlQ6_K;
    case WeightType::kQ4_0: return kGgmlQ4_0;
    case WeightType::kQ4_1: return kGgmlQ4_1;
  }
  return kGgmlF32;
}

size_t scalar_bytes(GgufType t) {
  switch (t) {
    case GgufType::kU8:
    case GgufType::kI8:
    case GgufType::kBool: return 1;
    case GgufType::kU16:
    case GgufType::kI16: return 2;
    case GgufType::kU32:
    case GgufType::kI32:
    case GgufType::kF32: return 4;
    case GgufType::kU64:
    case GgufType::kI64:
    case GgufType::kF64: return 8;
    default: return 0;
  }
}

// A bounds-checked reader over the mapped file; every error names the file and what was read.
struct Cursor {
  const std::byte* data;
  size_t size;
  size_t at = 0;
  const std::string& path;

  size_t left() const { return size - at; }
  Status need(size_t n, const std::string& what) const {
    if (n > left()) {
      return make_error("{}: {}: needs {} bytes at offset {}, the file has {} left (truncated?)", path, what, n, at,
                        left());
    }
    return ok_status();
  }
  template <class T>
  Result<T> read(const std::string& what) {
    KVP_RETURN_IF_ERROR(need(sizeof(T), what));
    T v;
    std::memcpy(&v, data + at, sizeof(T));
    at += sizeof(T);
    return v;
  }
  Result<std::string> string(const std::string& what, uint64_t max_bytes) {
    KVP_ASSIGN_OR_RETURN(uint64_t n, read<uint64_t>(what + " length"));
    if (n > max_bytes) return make_error("{}: {}: length {} exceeds the limit of {}", path, what, n, max_bytes);
    KVP_RETURN_IF_ERROR(need(n, what));
    std::string s(reinterpret_cast<const char*>(data + at), n);
    at += n;
    return s;
  }
  Result<double> scalar(GgufType t, const std::string& what) {
    switch (t) {
      case GgufType::kU8: { KVP_ASSIGN_OR_RETURN(uint8_t v, read<uint8_t>(what)); return double(v); }
      case GgufType::kI8: { KVP_ASSIGN_OR_RETURN(int8_t v, read<int8_t>(what)); return double(v); }
      case GgufType::kU16: { KVP_ASSIGN_OR_RETURN(uint16_t v, read<uint16_t>(what)); return double(v); }
      case GgufType::kI16: { KVP_ASSIGN_OR_RETURN(int16_t v, read<int16_t>(what)); return double(v); }
      case GgufType::kU32: { KVP_ASSIGN_OR_RETURN(uint32_t v, read<uint32_t>(what)); return double(v); }
      case GgufType::kI32: { KVP_ASSIGN_OR_RETURN(int32_t v, read<int32_t>(what)); return double(v); }
      case GgufType::kF32: { KVP_ASSIGN_OR_RETURN(float v, read<float>(what)); return double(v); }
      case GgufType::kU64: { KVP_ASSIGN_OR_RETURN(uint64_t v, read<uint64_t>(what)); return double(v); }
      case GgufType::kI64: { KVP_ASSIGN_OR_RETURN(int64_t v, read<int64_t>(what)); return double(v); }
      case GgufType::kF64: { KVP_ASSIGN_OR_RETURN(double v, read<double>(what)); return v; }
      case GgufType::kBool: {
        KVP_ASSIGN_OR_RETURN(uint8_t v, read<uint8_t>(what));
        if (v > 1) return make_error("{}: {}: a bool must be 0 or 1, found {}", path, what, v);
        return double(v);
      }
      default: return make_error("{}: {}: type {} is not a scalar", path, what, static_cast<uint32_t>(t));
    }
  }
};

Result<GgufType> value_type(uint32_t raw, const std::string& path, const std::string& key) {
  if (raw > static_cast<uint32_t>(GgufType::kF64)) {
    return make_error("{}: metadata {}: unknown value type {} (expected 0..12)", path, key, raw);
  }
  return static_cast<GgufType>(raw);
}

}  // namespace

bool GgufValue::is_integer() const {
  switch (type) {
    case GgufType::kU8: case GgufType::kI8: case GgufType::kU16: case GgufType::kI16:
    case GgufType::kU32: case GgufType::kI32: case GgufType::kU64: case GgufType::kI64: return true;
    default: return false;
  }
}

Result<GgufFile> GgufFile::open(const std::string& path) {
  KVP_ASSIGN_OR_RETURN(std::shared_ptr<const MappedFile> file, MappedFile::open(path));
  return open(std::move(file));
}

Result<GgufFile> GgufFile::open(std::shared_ptr<const MappedFile> file) {
  GgufFile f;
  f.file_ = std::move(file);
  const std::string& path = f.file_->path();
  const auto bytes = f.file_->bytes();
  Cursor c{bytes.data(), bytes.size(), 0, path};
  KVP_RETURN_IF_ERROR(c.need(4, "magic"));
  if (std::memcmp(bytes.data(), "GGUF", 4) != 0) {
    return make_error("{}: magic: expected 'GGUF', found another file type", path);
  }
  c.at = 4;
  KVP_ASSIGN_OR_RETURN(f.version_, c.read<uint32_t>("version"));
  if (f.version_ != 2 && f.version_ != 3) {
    return make_error("{}: version: expected 2 or 3, found {}", path, f.version_);
  }
  KVP_ASSIGN_OR_RETURN(uint64_t n_tensors, c.read<uint64_t>("tensor count"));
  KVP_ASSIGN_OR_RETURN(uint64_t n_kv, c.read<uint64_t>("metadata count"));
  // The smallest key-value pair is 13 bytes and the smallest tensor info 29: counts past what the
  // file can hold are refused before anything is sized by them.
  if (n_kv > c.left() / 13) return make_error("{}: metadata count: {} pairs cannot fit in {} bytes", path, n_kv, c.left());
  if (n_tensors > c.left() / 29) {
    return make_error("{}: tensor count: {} tensors cannot fit in {} bytes", path, n_tensors, c.left());
  }
  for (uint64_t i = 0; i < n_kv; ++i) {
    KVP_ASSIGN_OR_RETURN(std::string key, c.string(fmt::format("metadata key {}", i), kMaxKeyBytes));
    if (f.metadata_.count(key)) return make_error("{}: metadata {}: the key appears twice", path, key);
    KVP_ASSIGN_OR_RETURN(uint32_t raw_type, c.read<uint32_t>("metadata " + key + " type"));
    KVP_ASSIGN_OR_RETURN(GgufType type, value_type(raw_type, path, key));
    GgufValue v;
    v.type = type;
    const std::string what = "metadata " + key;
    if (type == GgufType::kString) {
      KVP_ASSIGN_OR_RETURN(v.text, c.string(what, kMaxStringBytes));
    } else if (type == GgufType::kArray) {
      KVP_ASSIGN_OR_RETURN(uint32_t raw_elem, c.read<uint32_t>(what + " element type"));
      KVP_ASSIGN_OR_RETURN(v.element_type, value_type(raw_elem, path, key));
      if (v.element_type == GgufType::kArray) {
        return make_error("{}: metadata {}: arrays of arrays are not supported", path, key);
      }
      KVP_ASSIGN_OR_RETURN(uint64_t n, c.read<uint64_t>(what + " count"));
      const size_t min_elem = v.element_type == GgufType::kString ? 8 : scalar_bytes(v.element_type);
      if (n > c.left() / min_elem) {
        return make_error("{}: metadata {}: {} elements cannot fit in the {} bytes left", path, key, n, c.left());
      }
      if (v.element_type == GgufType::kString) {
        v.strings.reserve(n);
        for (uint64_t k = 0; k < n; ++k) {
          KVP_ASSIGN_OR_RETURN(std::string s, c.string(fmt::format("{}[{}]", what, k), kMaxStringBytes));
          v.strings.push_back(std::move(s));
        }
      } else {
        v.numbers.reserve(n);
        for (uint64_t k = 0; k < n; ++k) {
          KVP_ASSIGN_OR_RETURN(double x, c.scalar(v.element_type, what));
          v.numbers.push_back(x);
        }
      }
    } else {
      KVP_ASSIGN_OR_RETURN(v.number, c.scalar(type, what));
    }
    f.metadata_.emplace(std::move(key), std::move(v));
  }
  if (const GgufValue* a = f.find("general.alignment")) {
    if (a->type != GgufType::kU32 || a->number == 0 || (static_cast<uint64_t>(a->number) & (static_cast<uint64_t>(a->number) - 1))) {
      return make_error("{}: metadata general.alignment: expected a u32 power of two, found {}", path, a->number);
    }
    f.alignment_ = static_cast<uint64_t>(a->number);
  }
  std::map<std::string, size_t> seen;
  for (uint64_t i = 0; i < n_tensors; ++i) {
    GgufTensorInfo t;
    KVP_ASSIGN_OR_RETURN(t.name, c.string(fmt::format("tensor info {} name", i), kMaxTensorNameBytes));
    const std::string what = "tensor " + t.name;
    if (seen.count(t.name)) return make_error("{}: {}: the name appears twice", path, what);
    seen[t.name] = i;
    KVP_ASSIGN_OR_RETURN(uint32_t n_dims, c.read<uint32_t>(what + " n_dims"));
    if (n_dims < 1 || n_dims > kMaxDims) return make_error("{}: {}: n_dims: expected 1..{}, found {}", path, what, kMaxDims, n_dims);
    uint64_t elements = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      KVP_ASSIGN_OR_RETURN(uint64_t ne, c.read<uint64_t>(what + " dims"));
      if (ne == 0 || ne > (1ull << 40) || elements > (1ull << 50) / ne) {
        return make_error("{}: {}: dims: dimension {} is {}, expected 1..2^40 with at most 2^50 elements", path, what, d, ne);
      }
      t.ne.push_back(static_cast<int64_t>(ne));
      elements *= ne;
    }
    KVP_ASSIGN_OR_RETURN(t.ggml_type, c.read<uint32_t>(what + " type"));
    KVP_ASSIGN_OR_RETURN(t.offset, c.read<uint64_t>(what + " offset"));
    Result<WeightType> wt = weight_type_of(t.ggml_type);
    if (!wt.ok()) return wt.error().with_context(fmt::format("{}: {}", path, what));
    if (!row_layout_ok(*wt, t.ne[0])) {
      return make_error("{}: {}: rows of {} elements are not whole {} blocks", path, what, t.ne[0],
                        weight_type_name(*wt));
    }
    t.bytes = static_cast<uint64_t>(row_bytes(*wt, t.ne[0])) * (elements / static_cast<uint64_t>(t.ne[0]));
    if (t.offset % f.alignment_ != 0) {
      return make_error("{}: {}: offset {} is not a multiple of the alignment {}", path, what, t.offset, f.alignment_);
    }
    f.tensors_.push_back(std::move(t));
  }
  f.data_offset_ = (c.at + f.alignment_ - 1) / f.alignment_ * f.alignment_;
  const uint64_t data_bytes = f.data_offset_ <= bytes.size() ? bytes.size() - f.data_offset_ : 0;
  std::vector<const GgufTensorInfo*> by_offset;
  for (const GgufTensorInfo& t : f.tensors_) {
    if (t.offset > data_bytes || t.bytes > data_bytes - t.offset) {
      return make_error("{}: tensor {}: bytes [{}, {}) of the data section run past its end ({} bytes; truncated?)",
                        path, t.name, t.offset, t.offset + t.bytes, data_bytes);
    }
    by_offset.push_back(&t);
  }
  std::sort(by_offset.begin(), by_offset.end(), [](auto* a, auto* b) { return a->offset < b->offset; });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    const GgufTensorInfo& prev = *by_offset[i - 1];
    if (by_offset[i]->offset < prev.offset + prev.bytes) {
      return make_error("{}: tensor {}: offset {} overlaps tensor {} (bytes [{}, {}))", path, by_offset[i]->name,
                        by_offset[i]->offset, prev.name, prev.offset, prev.offset + prev.bytes);
    }
  }
  return f;
}

const GgufValue* GgufFile::find(const std::string& key) const {
  auto it = metadata_.find(key);
  return it == metadata_.end() ? nullptr : &it->second;
}

Result<int64_t> GgufFile::get_int(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v) return make_error("{}: metadata {}: missing", path(), key);
  if (!v->is_integer()) return make_error("{}: metadata {}: expected an integer, found type {}", path(), key, int(v->type));
  return static_cast<int64_t>(v->number);
}
Result<int64_t> GgufFile::get_int(const std::string& key, int64_t fallback) const {
  return find(key) ? get_int(key) : Result<int64_t>(fallback);
}
Result<double> GgufFile::get_float(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v) return make_error("{}: metadata {}: missing", path(), key);
  if (v->type == GgufType::kString || v->type == GgufType::kArray || v->type == GgufType::kBool) {
    return make_error("{}: metadata {}: expected a number, found type {}", path(), key, int(v->type));
  }
  return v->number;
}
Result<double> GgufFile::get_float(const std::string& key, double fallback) const {
  return find(key) ? get_float(key) : Result<double>(fallback);
}
Result<std::string> GgufFile::get_string(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v) return make_error("{}: metadata {}: missing", path(), key);
  if (v->type != GgufType::kString) return make_error("{}: metadata {}: expected a string, found type {}", path(), key, int(v->type));
  return v->text;
}
Result<bool> GgufFile::get_bool(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v) return make_error("{}: metadata {}: missing", path(), key);
  if (v->type != GgufType::kBool) return make_error("{}: metadata {}: expected a bool, found type {}", path(), key, int(v->type));
  return v->number != 0.0;
}
Result<bool> GgufFile::get_bool(const std::string& key, bool fallback) const {
  return find(key) ? get_bool(key) : Result<bool>(fallback);
}

NamedTensors GgufFile::weight_tensors() const {
  NamedTensors out;
  const std::byte* base = file_->bytes().data() + data_offset_;
  for (const GgufTensorInfo& t : tensors_) {
    int64_t rows = 1;
    for (size_t d = 1; d < t.ne.size(); ++d) rows *= t.ne[d];
    out[t.name] = WeightTensor{.type = weight_type_of(t.ggml_type).value(), .data = base + t.offset, .rows = rows, .cols = t.ne[0]};
  }
  return out;
}

Result<ModelConfig> read_gguf_config(const GgufFile& f) {
  KVP_ASSIGN_OR_RETURN(std::string arch, f.get_string("general.architecture"));
  if (arch != "llama" && arch != "qwen2") {
    return make_error("{}: metadata general.architecture: '{}' is not supported (llama, qwen2)", f.path(), arch);
  }
  const std::string p = arch + ".";
  for (const char* key : {"attention.sliding_window"}) {
    if (f.find(p + key)) return make_error("{}: metadata {}{}: sliding-window attention is not supported", f.path(), p, key);
  }
  KVP_ASSIGN_OR_RETURN(int64_t experts, f.get_int(p + "expert_count", 0));
  if (experts > 0) return make_error("{}: metadata {}expert_count: mixture of experts ({} experts) is not supported", f.path(), p, experts);
  ModelConfig c;
  c.architecture = arch;
  auto int_field = [&](const std::string& key, int* out, std::optional<int64_t> fallback) -> Status {
    Result<int64_t> v = fallback ? f.get_int(p + key, *fallback) : f.get_int(p + key);
    if (!v.ok()) return v.error();
    if (*v < 0 || *v > (1 << 30)) return make_error("{}: metadata {}{}: expected 0..2^30, found {}", f.path(), p, key, *v);
    *out = static_cast<int>(*v);
    return ok_status();
  };
  KVP_RETURN_IF_ERROR(int_field("embedding_length", &c.dim, std::nullopt));
  KVP_RETURN_IF_ERROR(int_field("feed_forward_length", &c.hidden_dim, std::nullopt));
  KVP_RETURN_IF_ERROR(int_field("block_count", &c.n_layers, std::nullopt));
  KVP_RETURN_IF_ERROR(int_field("attention.head_count", &c.n_heads, std::nullopt));
  KVP_RETURN_IF_ERROR(int_field("attention.head_count_kv", &c.n_kv_heads, c.n_heads));
  KVP_RETURN_IF_ERROR(int_field("context_length", &c.seq_len, std::nullopt));
  int key_length = 0, value_length = 0;
  KVP_RETURN_IF_ERROR(int_field("attention.key_length", &key_length, 0));
  KVP_RETURN_IF_ERROR(int_field("attention.value_length", &value_length, key_length));
  if (key_length != value_length) {
    return make_error("{}: metadata {}attention.value_length: {} differs from key_length {}; not supported", f.path(), p,
                      value_length, key_length);
  }
  if (key_length > 0 && c.n_heads > 0 && key_length * c.n_heads != c.dim) c.head_size = key_length;
  KVP_ASSIGN_OR_RETURN(double eps, f.get_float(p + "attention.layer_norm_rms_epsilon", 1e-5));
  KVP_ASSIGN_OR_RETURN(double theta, f.get_float(p + "rope.freq_base", 10000.0));
  c.norm_eps = static_cast<float>(eps);
  c.rope_theta = static_cast<float>(theta);
  c.rope_style = arch == "qwen2" ? RopeStyle::kHalf : RopeStyle::kInterleaved;

  const NamedTensors tensors = f.weight_tensors();
  auto embd = tensors.find("token_embd.weight");
  if (embd == tensors.end()) return make_error("{}: tensor token_embd.weight: missing", f.path());
  if (embd->second.rows > (1 << 22)) return make_error("{}: tensor token_embd.weight: {} rows, expected a vocabulary of at most 2^22", f.path(), embd->second.rows);
  c.vocab_size = static_cast<int>(embd->second.rows);
  c.shared_classifier = !tensors.count("output.weight");
  c.qkv_bias = tensors.count("blk.0.attn_q.bias") > 0;
  if (Status s = c.validate(); !s.ok()) return s.error().with_context(f.path() + ": metadata");
  KVP_ASSIGN_OR_RETURN(int64_t rope_dims, f.get_int(p + "rope.dimension_count", c.head_dim()));
  if (rope_dims != c.head_dim()) {
    return make_error("{}: metadata {}rope.dimension_count: partial RoPE ({} of {} dimensions) is not supported", f.path(),
                      p, rope_dims, c.head_dim());
  }
  if (const GgufValue* scaling = f.find(p + "rope.scaling.type")) {
    if (scaling->type != GgufType::kString) return make_error("{}: metadata {}rope.scaling.type: expected a string", f.path(), p);
    if (scaling->text == "linear") {
      KVP_ASSIGN_OR_RETURN(double factor, f.get_float(p + "rope.scaling.factor"));
      if (!(factor > 0.0) || !std::isfinite(factor)) {
        return make_error("{}: metadata {}rope.scaling.factor: expected a positive factor, found {}", f.path(), p, factor);
      }
      c.rope_freq_divisors.assign(c.head_dim() / 2, static_cast<float>(factor));
    } else if (scaling->text != "none") {
      return make_error("{}: metadata {}rope.scaling.type: '{}' RoPE scaling is not supported (none, linear, "
                        "Llama 3's rope_freqs)", f.path(), p, scaling->text);
    }
  }
  if (auto freqs = tensors.find("rope_freqs.weight"); freqs != tensors.end()) {
    const WeightTensor& t = freqs->second;
    if (t.type != WeightType::kF32 || t.rows * t.cols != c.head_dim() / 2) {
      return make_error("{}: tensor rope_freqs.weight: expected f32 [{}], found {} with {} elements", f.path(),
                        c.head_dim() / 2, weight_type_name(t.type), t.rows * t.cols);
    }
    c.rope_freq_divisors = dequantize(t);
  }
  if (Status s = c.validate(); !s.ok()) return s.error().with_context(f.path());
  return c;
}

Result<Tokenizer> gguf_tokenizer(const GgufFile& f) {
  const GgufValue* model = f.find("tokenizer.ggml.model");
  if (!model) return make_error("{}: metadata tokenizer.ggml.model: missing; the file carries no tokenizer", f.path());
  KVP_ASSIGN_OR_RETURN(std::string kind, f.get_string("tokenizer.ggml.model"));
  Vocabulary v;
  if (kind == "llama") {
    v.kind = TokenizerKind::kSentencePiece;
  } else if (kind == "gpt2") {
    v.kind = TokenizerKind::kBytePair;
  } else {
    return make_error("{}: metadata tokenizer.ggml.model: '{}' is not supported (llama, gpt2)", f.path(), kind);
  }
  const GgufValue* tokens = f.find("tokenizer.ggml.tokens");
  if (!tokens || tokens->type != GgufType::kArray || tokens->element_type != GgufType::kString) {
    return make_error("{}: metadata tokenizer.ggml.tokens: expected an array of strings", f.path());
  }
  v.pieces = tokens->strings;
  if (const GgufValue* scores = f.find("tokenizer.ggml.scores")) {
    if (scores->type != GgufType::kArray || scores->element_type != GgufType::kF32) {
      return make_error("{}: metadata tokenizer.ggml.scores: expected an array of f32", f.path());
    }
    v.scores.assign(scores->numbers.begin(), scores->numbers.end());
  }
  if (const GgufValue* types = f.find("tokenizer.ggml.token_type")) {
    if (types->type != GgufType::kArray || (types->element_type != GgufType::kI32 && types->element_type != GgufType::kU32)) {
      return make_error("{}: metadata tokenizer.ggml.token_type: expected an array of i32", f.path());
    }
    for (size_t i = 0; i < types->numbers.size(); ++i) {
      const double t = types->numbers[i];
      if (t < 1 || t > 6) return make_error("{}: metadata tokenizer.ggml.token_type[{}]: expected 1..6, found {}", f.path(), i, t);
      v.types.push_back(static_cast<TokenType>(static_cast<int>(t)));
    }
  }
  if (const GgufValue* merges = f.find("tokenizer.ggml.merges")) {
    if (merges->type != GgufType::kArray || merges->element_type != GgufType::kString) {
      return make_error("{}: metadata tokenizer.ggml.merges: expected an array of strings", f.path());
    }
    if (v.kind == TokenizerKind::kBytePair) v.merges = merges->strings;
  }
  auto id = [&](const char* key, int32_t fallback) -> Result<int32_t> {
    KVP_ASSIGN_OR_RETURN(int64_t x, f.get_int(key, fallback));
    if (x == 0xFFFFFFFFll || x < 0) return -1;  // llama.cpp writes "none" as u32 -1
    if (x >= static_cast<int64_t>(v.pieces.size())) {
      return make_error("{}: metadata {}: token id {} is outside the {}-piece vocabulary", f.path(), key, x, v.pieces.size());
    }
    return static_cast<int32_t>(x);
  };
  KVP_ASSIGN_OR_RETURN(v.bos, id("tokenizer.ggml.bos_token_id", v.kind == TokenizerKind::kSentencePiece ? 1 : -1));
  KVP_ASSIGN_OR_RETURN(v.eos, id("tokenizer.ggml.eos_token_id", v.kind == TokenizerKind::kSentencePiece ? 2 : -1));
  KVP_ASSIGN_OR_RETURN(v.eot, id("tokenizer.ggml.eot_token_id", -1));
  if (v.kind == TokenizerKind::kBytePair) {
    const GgufValue* pre = f.find("tokenizer.ggml.pre");
    v.pre = pre && pre->type == GgufType::kString ? pre->text : "default";
    Result<std::vector<std::string>> regexes = pre_tokenizer_regexes(v.pre);
    if (!regexes.ok()) return regexes.error().with_context(f.path() + ": metadata");
    v.pre_regexes = std::move(regexes).value();
    const bool llama3 = v.pre == "llama-bpe" || v.pre == "llama3" || v.pre == "llama-v3";
    v.ignore_merges = llama3;
    v.add_space_prefix = false;
    KVP_ASSIGN_OR_RETURN(v.add_bos, f.get_bool("tokenizer.ggml.add_bos_token", llama3));
  } else {
    KVP_ASSIGN_OR_RETURN(v.add_bos, f.get_bool("tokenizer.ggml.add_bos_token", true));
    KVP_ASSIGN_OR_RETURN(v.add_space_prefix, f.get_bool("tokenizer.ggml.add_space_prefix", true));
  }
  if (v.add_bos && v.bos < 0) v.add_bos = false;
  if (const GgufValue* t = f.find("tokenizer.chat_template"); t && t->type == GgufType::kString) v.chat_template = t->text;
  return Tokenizer::create(std::move(v), f.path());
}

Result<GgufModel> load_gguf(const std::string& path, bool check_weights) {
  KVP_ASSIGN_OR_RETURN(GgufFile f, GgufFile::open(path));
  KVP_ASSIGN_OR_RETURN(ModelConfig config, read_gguf_config(f));
  KVP_ASSIGN_OR_RETURN(Tokenizer tokenizer, gguf_tokenizer(f));
  if (tokenizer.vocab_size() != config.vocab_size) {
    return make_error("{}: metadata tokenizer.ggml.tokens: {} pieces, but token_embd.weight has {} rows", path,
                      tokenizer.vocab_size(), config.vocab_size);
  }
  NamedTensors tensors = f.weight_tensors();
  tensors.erase("rope_freqs.weight");  // read into the config
  KVP_ASSIGN_OR_RETURN(ModelWeights weights, ModelWeights::from_tensors(config, tensors, {f.mapping()}, path));
  if (check_weights) KVP_RETURN_IF_ERROR(check_finite(weights));
  return GgufModel{std::move(weights), std::move(tokenizer)};
}

// ---- writer ----

namespace {

class GgufWriter {
 public:
  void key(const std::string& k, GgufType t) {
    str(k);
    u32(static_cast<uint32_t>(t));
    ++n_kv_;
  }
  void kv_u32(const std::string& k, uint32_t v) { key(k, GgufType::kU32); u32(v); }
  void kv_f32(const std::string& k, float v) { key(k, GgufType::kF32); raw(&v, 4); }
  void kv_bool(const std::string& k, bool v) { key(k, GgufType::kBool); uint8_t b = v; raw(&b, 1); }
  void kv_str(const std::string& k, const std::string& v) { key(k, GgufType::kString); str(v); }
  void kv_strings(const std::string& k, const std::vector<std::string>& v) {
    key(k, GgufType::kArray);
    u32(static_cast<uint32_t>(GgufType::kString));
    u64(v.size());
    for (const std::string& s : v) str(s);
  }
  template <class T>
  void kv_array(const std::string& k, GgufType elem, const std::vector<T>& v) {
    key(k, GgufType::kArray);
    u32(static_cast<uint32_t>(elem));
    u64(v.size());
    raw(v.data(), v.size() * sizeof(T));
  }
  std::string kv;
  uint64_t n_kv_ = 0;

  void u32(uint32_t v) { raw(&v, 4); }
  void u64(uint64_t v) { raw(&v, 8); }
  void str(const std::string& s) { u64(s.size()); kv.append(s); }
  void raw(const void* p, size_t n) { kv.append(static_cast<const char*>(p), n); }
};

}  // namespace

Status save_gguf(const std::string& path, const ModelWeights& weights, const Tokenizer& tokenizer,
                 const std::string& name) {
  const ModelConfig& c = weights.config();
  const Vocabulary& voc = tokenizer.vocabulary();
  if (tokenizer.vocab_size() != c.vocab_size) {
    return make_error("{}: the tokenizer has {} pieces, the model {}", path, tokenizer.vocab_size(), c.vocab_size);
  }
  if ((c.architecture == "llama") != (c.rope_style == RopeStyle::kInterleaved)) {
    return make_error("{}: GGUF {} stores RoPE {}; convert the q/k rows first", path, c.architecture,
                      c.architecture == "llama" ? "interleaved" : "rotate-half");
  }
  GgufWriter w;
  const std::string p = c.architecture + ".";
  w.kv_str("general.architecture", c.architecture);
  w.kv_str("general.name", name);
  w.kv_u32("general.alignment", 32);
  w.kv_u32(p + "context_length", c.seq_len);
  w.kv_u32(p + "embedding_length", c.dim);
  w.kv_u32(p + "feed_forward_length", c.hidden_dim);
  w.kv_u32(p + "block_count", c.n_layers);
  w.kv_u32(p + "attention.head_count", c.n_heads);
  w.kv_u32(p + "attention.head_count_kv", c.n_kv_heads);
  if (c.head_size > 0) {
    w.kv_u32(p + "attention.key_length", c.head_size);
    w.kv_u32(p + "attention.value_length", c.head_size);
  }
  w.kv_u32(p + "rope.dimension_count", c.head_dim());
  w.kv_f32(p + "rope.freq_base", c.rope_theta);
  w.kv_f32(p + "attention.layer_norm_rms_epsilon", c.norm_eps);
  const bool spm = voc.kind == TokenizerKind::kSentencePiece;
  w.kv_str("tokenizer.ggml.model", spm ? "llama" : "gpt2");
  if (!spm) w.kv_str("tokenizer.ggml.pre", voc.pre);
  // llama2.c vocabularies mark spaces with ' '; GGUF's SentencePiece pieces use "▁".
  std::vector<std::string> pieces = voc.pieces;
  if (spm && voc.space_marker != "\xE2\x96\x81") {
    for (std::string& s : pieces) {
      std::string out;
      for (size_t i = 0; i < s.size();) {
        if (s.compare(i, voc.space_marker.size(), voc.space_marker) == 0) {
          out += "\xE2\x96\x81";
          i += voc.space_marker.size();
        } else {
          out.push_back(s[i++]);
        }
      }
      s = std::move(out);
    }
  }
  w.kv_strings("tokenizer.ggml.tokens", pieces);
  if (!voc.scores.empty()) w.kv_array("tokenizer.ggml.scores", GgufType::kF32, voc.scores);
  std::vector<int32_t> types;
  for (TokenType t : voc.types) types.push_back(static_cast<int32_t>(t));
  w.kv_array("tokenizer.ggml.token_type", GgufType::kI32, types);
  if (!voc.merges.empty()) w.kv_strings("tokenizer.ggml.merges", voc.merges);
  if (voc.bos >= 0) w.kv_u32("tokenizer.ggml.bos_token_id", voc.bos);
  if (voc.eos >= 0) w.kv_u32("tokenizer.ggml.eos_token_id", voc.eos);
  if (voc.eot >= 0) w.kv_u32("tokenizer.ggml.eot_token_id", voc.eot);
  w.kv_bool("tokenizer.ggml.add_bos_token", voc.add_bos);
  if (spm) w.kv_bool("tokenizer.ggml.add_space_prefix", voc.add_space_prefix);
  if (!voc.chat_template.empty()) w.kv_str("tokenizer.chat_template", voc.chat_template);

  // Tensor infos, then the data, each tensor at a multiple of 32.
  std::string infos;
  uint64_t offset = 0;
  std::vector<std::pair<const WeightTensor*, uint64_t>> layout;
  auto put = [&](const void* p, size_t n) { infos.append(static_cast<const char*>(p), n); };
  uint64_t n_tensors = 0;
  for (const auto& [tname, t] : weights.tensors()) {
    if (tname == "output.weight" && c.shared_classifier) continue;
    const uint64_t len = tname.size();
    put(&len, 8);
    infos.append(tname);
    const uint32_t n_dims = t.rows == 1 ? 1 : 2;
    put(&n_dims, 4);
    const uint64_t ne0 = static_cast<uint64_t>(t.cols), ne1 = static_cast<uint64_t>(t.rows);
    put(&ne0, 8);
    if (n_dims == 2) put(&ne1, 8);
    const uint32_t type = ggml_type_of(t.type);
    put(&type, 4);
    put(&offset, 8);
    layout.emplace_back(&t, offset);
    offset += (t.bytes() + 31) / 32 * 32;
    ++n_tensors;
  }
  if (!c.rope_freq_divisors.empty()) {
    return make_error("{}: writing RoPE frequency factors to GGUF is not supported", path);
  }
  return write_file_atomic(path, [&](std::FILE* out) -> Status {
    std::string head = "GGUF";
    const uint32_t version = 3;
    head.append(reinterpret_cast<const char*>(&version), 4);
    head.append(reinterpret_cast<const char*>(&n_tensors), 8);
    head.append(reinterpret_cast<const char*>(&w.n_kv_), 8);
    head += w.kv;
    head += infos;
    head.resize((head.size() + 31) / 32 * 32, '\0');
    KVP_RETURN_IF_ERROR(write_all(out, head.data(), head.size(), path));
    static const char kZeros[32] = {};
    for (const auto& [t, off] : layout) {
      KVP_RETURN_IF_ERROR(write_all(out, t->data, t->bytes(), path));
      const size_t pad = (32 - t->bytes() % 32) % 32;
      KVP_RETURN_IF_ERROR(write_all(out, kZeros, pad, path));
    }
    return ok_status();
  });
}

}  // namespace kvp
