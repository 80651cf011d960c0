#include "traces/trace.h"

#include <cstring>
#include <filesystem>

#include "common/file_util.h"
#include "common/sha256.h"

namespace kvp {
namespace fs = std::filesystem;
namespace {

std::vector<int64_t> dims(std::initializer_list<int64_t> d) { return d; }

Status check_checksum(const SafetensorsFile& f, const std::string& expected) {
  const std::string actual = f.sha256_releasing();
  if (actual != expected) {
    return make_error("{}: sha256: the manifest says {}, the file has {} (changed or corrupt)",
                      f.path(), expected, actual);
  }
  return ok_status();
}

// The tensors a sequence file must hold, exactly.
Status check_sequence_file(const SafetensorsFile& f, const TraceManifest& m,
                           const TraceSequenceEntry& e) {
  const TraceModelShape& s = m.model;
  const int64_t T = e.length;
  const int64_t Tq = recorded_query_count(e.length, e.prompt_len, m.query_stride);
  size_t expected_count = 2;
  KVP_ASSIGN_OR_RETURN(const TensorInfo* tokens, f.expect("tokens", TensorDtype::kI32, dims({T})));
  KVP_RETURN_IF_ERROR(f.expect("ref_logprob", TensorDtype::kF32, dims({T - 1})));
  for (int l : m.layers) {
    KVP_RETURN_IF_ERROR(f.expect(trace_tensor_name(l, "q"), m.qkv_dtype, dims({Tq, s.n_heads, s.head_dim})));
    KVP_RETURN_IF_ERROR(f.expect(trace_tensor_name(l, "k"), m.qkv_dtype, dims({T, s.n_kv_heads, s.head_dim})));
    KVP_RETURN_IF_ERROR(f.expect(trace_tensor_name(l, "v"), m.qkv_dtype, dims({T, s.n_kv_heads, s.head_dim})));
    KVP_RETURN_IF_ERROR(f.expect(trace_tensor_name(l, "resid_norm"), TensorDtype::kF32, dims({T})));
    expected_count += 4;
  }
  if (f.tensors().size() != expected_count) {
    for (const TensorInfo& t : f.tensors()) {
      if (t.name != "tokens" && t.name != "ref_logprob" && t.name.rfind("layer.", 0) != 0) {
        return make_error("{}: tensor {}: not part of a version-{} trace", f.path(), t.name,
                          kTraceFormatVersion);
      }
    }
    return make_error("{}: holds {} tensors, a trace of {} layers has {} (recorded with another model?)",
                      f.path(), f.tensors().size(), m.layers.size(), expected_count);
  }
  std::vector<int32_t> ids(static_cast<size_t>(T));
  std::memcpy(ids.data(), f.bytes(*tokens).data(), ids.size() * 4);
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= s.vocab_size) {
      return make_error("{}: tensor tokens: element {} is {}, outside the vocabulary of {}", f.path(),
                        i, ids[i], s.vocab_size);
    }
  }
  return ok_status();
}

}  // namespace

std::string trace_tensor_name(int layer_idx, const char* what) {
  return fmt::format("layer.{}.{}", layer_idx, what);
}

Result<Trace> Trace::open(const std::string& dir, const OpenOptions& options) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    if (!fs::exists(dir, ec)) return make_error("{}: no such trace directory", dir);
    return make_error("{}: expected a trace directory (with {}), found a file", dir, kTraceManifestName);
  }
  const std::string manifest_path = (fs::path(dir) / kTraceManifestName).string();
  if (!fs::exists(manifest_path, ec)) {
    return make_error("{}: missing: not a trace, or a recording that did not finish", manifest_path);
  }
  KVP_ASSIGN_OR_RETURN(std::string text, read_file_text(manifest_path));
  Trace trace;
  trace.dir_ = dir;
  KVP_ASSIGN_OR_RETURN(trace.manifest_, TraceManifest::parse(text, manifest_path));
  const TraceManifest& m = trace.manifest_;
  if (!options.expected_fingerprint.empty() && m.model.fingerprint != options.expected_fingerprint) {
    return make_error("{}: model.fingerprint: the trace was recorded with the model of sha256 {}, "
                      "not {}{}", manifest_path, m.model.fingerprint, options.expected_fingerprint,
                      options.expected_model_name.empty() ? "" : " (" + options.expected_model_name + ")");
  }

  const std::string proj_path = (fs::path(dir) / m.projections.file).string();
  KVP_ASSIGN_OR_RETURN(SafetensorsFile proj, SafetensorsFile::open(proj_path));
  for (int l : m.layers) {
    KVP_RETURN_IF_ERROR(proj.expect(trace_tensor_name(l, "wo"), TensorDtype::kF32,
                                    dims({m.model.dim, int64_t{m.model.n_heads} * m.model.head_dim})));
  }
  KVP_RETURN_IF_ERROR(check_checksum(proj, m.projections.sha256));
  trace.projections_.push_back(std::move(proj));

  for (const TraceSequenceEntry& e : m.sequences) {
    const std::string path = (fs::path(dir) / e.file).string();
    KVP_ASSIGN_OR_RETURN(SafetensorsFile f, SafetensorsFile::open(path));
    KVP_RETURN_IF_ERROR(check_sequence_file(f, m, e));
    KVP_RETURN_IF_ERROR(check_checksum(f, e.sha256));
    trace.sequences_.push_back(std::move(f));
  }
  return trace;
}

std::vector<int32_t> Trace::tokens(int seq_idx) const {
  const SafetensorsFile& f = sequences_[seq_idx];
  const TensorInfo* t = f.find("tokens");
  std::vector<int32_t> out(static_cast<size_t>(t->element_count()));
  std::memcpy(out.data(), f.bytes(*t).data(), out.size() * 4);
  return out;
}

std::vector<float> Trace::ref_logprob(int seq_idx) const {
  const SafetensorsFile& f = sequences_[seq_idx];
  const TensorInfo* t = f.find("ref_logprob");
  std::vector<float> out(static_cast<size_t>(t->element_count()));
  f.read_floats(*t, out);
  f.release(*t);
  return out;
}

std::vector<int32_t> Trace::query_rows(int seq_idx) const {
  const TraceSequenceEntry& e = manifest_.sequences[seq_idx];
  return recorded_query_rows(e.length, e.prompt_len, manifest_.query_stride);
}

void Trace::read_layer(int seq_idx, int layer_idx, TraceLayer* out) const {
  KVP_CHECK(manifest_.has_layer(layer_idx), "layer {} is not recorded in {}", layer_idx, dir_);
  const SafetensorsFile& f = sequences_[seq_idx];
  auto read = [&](const char* what, std::vector<float>& into) {
    const TensorInfo* t = f.find(trace_tensor_name(layer_idx, what));
    into.resize(static_cast<size_t>(t->element_count()));
    f.read_floats(*t, into);
  };
  read("q", out->q);
  read("k", out->k);
  read("v", out->v);
  read("resid_norm", out->resid_norm);
  // The whole file, not the tensors alone: faults map neighbouring pages too. Pages another
  // reader of the same file is using are read back from the page cache when touched.
  f.release(f.file_bytes());
}

TraceLayer Trace::layer(int seq_idx, int layer_idx) const {
  TraceLayer out;
  read_layer(seq_idx, layer_idx, &out);
  return out;
}

std::vector<float> Trace::wo(int layer_idx) const {
  KVP_CHECK(manifest_.has_layer(layer_idx), "layer {} is not recorded in {}", layer_idx, dir_);
  const SafetensorsFile& f = projections_.front();
  const TensorInfo* t = f.find(trace_tensor_name(layer_idx, "wo"));
  std::vector<float> out(static_cast<size_t>(t->element_count()));
  f.read_floats(*t, out);
  f.release(*t);
  return out;
}

int64_t Trace::sequence_bytes() const {
  int64_t total = 0;
  for (const SafetensorsFile& f : sequences_) total += static_cast<int64_t>(f.file_bytes().size());
  return total;
}

}  // namespace kvp
