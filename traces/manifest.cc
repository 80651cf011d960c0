#include "traces/manifest.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <set>

#include "common/yaml_fields.h"

namespace kvp {
namespace {

constexpr int kMaxDim = 1 << 22;

}  // namespace

int recorded_query_count(int length, int prompt_len, int query_stride) {
  int n = 0;
  for (int t = 0; t < length; ++t) n += query_recorded(t, prompt_len, query_stride);
  return n;
}

std::vector<int32_t> recorded_query_rows(int length, int prompt_len, int query_stride) {
  std::vector<int32_t> rows(static_cast<size_t>(length), -1);
  int32_t next = 0;
  for (int t = 0; t < length; ++t) {
    if (query_recorded(t, prompt_len, query_stride)) rows[t] = next++;
  }
  return rows;
}

bool TraceManifest::has_layer(int layer_idx) const {
  return std::binary_search(layers.begin(), layers.end(), layer_idx);
}

std::string TraceManifest::to_yaml() const {
  YAML::Emitter out;
  out << YAML::BeginMap;
  out << YAML::Key << "format" << YAML::Value << kTraceFormatName;
  out << YAML::Key << "version" << YAML::Value << kTraceFormatVersion;
  out << YAML::Key << "model" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "fingerprint" << YAML::Value << model.fingerprint;
  out << YAML::Key << "source" << YAML::Value << model.source;
  for (const auto& [k, v] : {std::pair{"dim", model.dim}, {"hidden_dim", model.hidden_dim},
                             {"n_layers", model.n_layers}, {"n_heads", model.n_heads},
                             {"n_kv_heads", model.n_kv_heads}, {"head_dim", model.head_dim},
                             {"vocab_size", model.vocab_size}, {"seq_len", model.seq_len}}) {
    out << YAML::Key << k << YAML::Value << v;
  }
  out << YAML::EndMap;
  out << YAML::Key << "recorder" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "backend" << YAML::Value << recorder_backend;
  out << YAML::Key << "qkv_dtype" << YAML::Value << std::string(dtype_name(qkv_dtype));
  out << YAML::Key << "layers" << YAML::Value << YAML::Flow << layers;
  out << YAML::Key << "query_stride" << YAML::Value << query_stride;
  out << YAML::Key << "tool" << YAML::Value << tool_version;
  out << YAML::Key << "corpus" << YAML::Value << corpus;
  out << YAML::EndMap;
  out << YAML::Key << "projections" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "file" << YAML::Value << projections.file;
  out << YAML::Key << "sha256" << YAML::Value << projections.sha256;
  out << YAML::EndMap;
  out << YAML::Key << "sequences" << YAML::Value << YAML::BeginSeq;
  for (const TraceSequenceEntry& s : sequences) {
    out << YAML::BeginMap;
    out << YAML::Key << "file" << YAML::Value << s.file;
    out << YAML::Key << "prompt_len" << YAML::Value << s.prompt_len;
    out << YAML::Key << "length" << YAML::Value << s.length;
    out << YAML::Key << "sha256" << YAML::Value << s.sha256;
    out << YAML::EndMap;
  }
  out << YAML::EndSeq << YAML::EndMap;
  return std::string(out.c_str()) + "\n";
}

Result<TraceManifest> TraceManifest::parse(const std::string& yaml_text, const std::string& path) {
  KVP_ASSIGN_OR_RETURN(YAML::Node root, parse_yaml_map(yaml_text, path));
  const YamlFields top(root, path, "");
  KVP_RETURN_IF_ERROR(top.only({"format", "version", "model", "recorder", "projections", "sequences"}));
  KVP_ASSIGN_OR_RETURN(std::string format, top.str("format"));
  if (format != kTraceFormatName) {
    return make_error("{}: format: expected {}, found '{}'", path, kTraceFormatName, format);
  }
  KVP_ASSIGN_OR_RETURN(int version, top.integer("version", 0, 1 << 20));
  if (version != 1 && version != kTraceFormatVersion) {
    return make_error("{}: version: this kvplan reads versions 1 and {}, found {}", path,
                      kTraceFormatVersion, version);
  }
  TraceManifest m;
  KVP_ASSIGN_OR_RETURN(YAML::Node model, top.child("model"));
  const YamlFields mf(model, path, "model.");
  KVP_RETURN_IF_ERROR(mf.only({"fingerprint", "source", "dim", "hidden_dim", "n_layers", "n_heads",
                               "n_kv_heads", "head_dim", "vocab_size", "seq_len"}));
  KVP_ASSIGN_OR_RETURN(m.model.fingerprint, mf.sha256("fingerprint"));
  KVP_ASSIGN_OR_RETURN(m.model.source, mf.str("source"));
  KVP_ASSIGN_OR_RETURN(m.model.dim, mf.integer("dim", 1, kMaxDim));
  KVP_ASSIGN_OR_RETURN(m.model.hidden_dim, mf.integer("hidden_dim", 1, kMaxDim));
  KVP_ASSIGN_OR_RETURN(m.model.n_layers, mf.integer("n_layers", 1, 4096));
  KVP_ASSIGN_OR_RETURN(m.model.n_heads, mf.integer("n_heads", 1, 4096));
  KVP_ASSIGN_OR_RETURN(m.model.n_kv_heads, mf.integer("n_kv_heads", 1, m.model.n_heads));
  KVP_ASSIGN_OR_RETURN(m.model.head_dim, mf.integer("head_dim", 1, kMaxDim));
  KVP_ASSIGN_OR_RETURN(m.model.vocab_size, mf.integer("vocab_size", 1, kMaxDim));
  KVP_ASSIGN_OR_RETURN(m.model.seq_len, mf.integer("seq_len", 1, kMaxDim));
  if (m.model.n_heads % m.model.n_kv_heads != 0) {
    return make_error("{}: model.n_kv_heads: expected a divisor of n_heads {}, found {}", path,
                      m.model.n_heads, m.model.n_kv_heads);
  }

  KVP_ASSIGN_OR_RETURN(YAML::Node recorder, top.child("recorder"));
  const YamlFields rf(recorder, path, "recorder.");
  if (version == 1) {
    KVP_RETURN_IF_ERROR(rf.only({"backend", "qkv_dtype", "tool", "corpus"}));
  } else {
    KVP_RETURN_IF_ERROR(rf.only({"backend", "qkv_dtype", "layers", "query_stride", "tool", "corpus"}));
  }
  KVP_ASSIGN_OR_RETURN(m.recorder_backend, rf.str("backend"));
  KVP_ASSIGN_OR_RETURN(std::string dtype, rf.str("qkv_dtype"));
  auto parsed_dtype = parse_dtype(dtype);
  if (!parsed_dtype.ok() || *parsed_dtype == TensorDtype::kI32 ||
      (version == 1 && *parsed_dtype == TensorDtype::kBF16)) {
    return make_error("{}: recorder.qkv_dtype: expected F32, F16{}, found '{}'", path,
                      version == 1 ? " (version 1)" : " or BF16", dtype);
  }
  m.qkv_dtype = *parsed_dtype;
  if (version == 1) {  // every layer, every query
    for (int l = 0; l < m.model.n_layers; ++l) m.layers.push_back(l);
  } else {
    KVP_ASSIGN_OR_RETURN(YAML::Node layers, rf.child("layers"));
    if (!layers.IsSequence() || layers.size() == 0) {
      return make_error("{}: recorder.layers: expected a non-empty list of layer indices", path);
    }
    for (size_t i = 0; i < layers.size(); ++i) {
      int l = -1;
      if (!YAML::convert<int>::decode(layers[i], l) || l < 0 || l >= m.model.n_layers ||
          (!m.layers.empty() && l <= m.layers.back())) {
        return make_error("{}: recorder.layers[{}]: expected increasing layer indices in 0..{}, found '{}'", path,
                          i, m.model.n_layers - 1, layers[i].IsScalar() ? layers[i].Scalar() : "a non-scalar");
      }
      m.layers.push_back(l);
    }
    KVP_ASSIGN_OR_RETURN(m.query_stride, rf.integer("query_stride", 1, 1 << 20));
  }
  KVP_ASSIGN_OR_RETURN(m.tool_version, rf.str("tool"));
  KVP_ASSIGN_OR_RETURN(m.corpus, rf.str("corpus"));

  KVP_ASSIGN_OR_RETURN(YAML::Node projections, top.child("projections"));
  const YamlFields pf(projections, path, "projections.");
  KVP_RETURN_IF_ERROR(pf.only({"file", "sha256"}));
  KVP_ASSIGN_OR_RETURN(m.projections.file, pf.file_name("file"));
  KVP_ASSIGN_OR_RETURN(m.projections.sha256, pf.sha256("sha256"));

  KVP_ASSIGN_OR_RETURN(YAML::Node sequences, top.child("sequences"));
  if (!sequences.IsSequence() || sequences.size() == 0) {
    return make_error("{}: sequences: expected a non-empty list", path);
  }
  std::set<std::string> files = {m.projections.file};
  for (size_t i = 0; i < sequences.size(); ++i) {
    const YAML::Node s = sequences[i];
    if (!s.IsMap()) return make_error("{}: sequences[{}]: expected a map", path, i);
    const YamlFields sf(s, path, fmt::format("sequences[{}].", i));
    KVP_RETURN_IF_ERROR(sf.only({"file", "prompt_len", "length", "sha256"}));
    TraceSequenceEntry e;
    KVP_ASSIGN_OR_RETURN(e.file, sf.file_name("file"));
    KVP_ASSIGN_OR_RETURN(e.length, sf.integer("length", 2, m.model.seq_len));
    KVP_ASSIGN_OR_RETURN(e.prompt_len, sf.integer("prompt_len", 1, e.length));
    KVP_ASSIGN_OR_RETURN(e.sha256, sf.sha256("sha256"));
    if (!files.insert(e.file).second) {
      return make_error("{}: sequences[{}].file: '{}' is named twice", path, i, e.file);
    }
    m.sequences.push_back(std::move(e));
  }
  return m;
}

}  // namespace kvp
