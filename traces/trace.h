// A recorded trace directory, validated in full when opened (see FORMAT.md): the manifest, the
// model fingerprint, every file's structure, tensor names, dtypes and shapes, and checksums.
// The first inconsistency is reported with the file and the tensor or field.
#pragma once

#include <string>
#include <vector>

#include "traces/manifest.h"
#include "traces/safetensors_file.h"

namespace kvp {

// One layer of one recorded sequence, widened to f32.
struct TraceLayer {
  std::vector<float> q;           // [Tq, n_heads, head_dim], post-RoPE, at the recorded query positions
  std::vector<float> k;           // [T, n_kv_heads, head_dim], post-RoPE
  std::vector<float> v;           // [T, n_kv_heads, head_dim]
  std::vector<float> resid_norm;  // [T] L2 norm of the residual stream entering the layer
};

class Trace {
 public:
  struct OpenOptions {
    // When set, the trace must have been recorded with the model of this fingerprint.
    std::string expected_fingerprint;
    std::string expected_model_name;  // for the message only
  };
  static Result<Trace> open(const std::string& dir, const OpenOptions& options);
  static Result<Trace> open(const std::string& dir) { return open(dir, OpenOptions{}); }

  const std::string& dir() const { return dir_; }
  const TraceManifest& manifest() const { return manifest_; }
  const TraceModelShape& model() const { return manifest_.model; }
  int n_sequences() const { return static_cast<int>(sequences_.size()); }
  int length(int seq_idx) const { return manifest_.sequences[seq_idx].length; }
  int prompt_len(int seq_idx) const { return manifest_.sequences[seq_idx].prompt_len; }
  // The recorded layers (all, unless recorded with a subset) and the query stride.
  const std::vector<int>& layers() const { return manifest_.layers; }
  int query_stride() const { return manifest_.query_stride; }
  // For each position of a sequence, the row of its query in TraceLayer::q, or -1 when not recorded.
  std::vector<int32_t> query_rows(int seq_idx) const;

  std::vector<int32_t> tokens(int seq_idx) const;    // [T]
  std::vector<float> ref_logprob(int seq_idx) const; // [T - 1]
  // REQUIRES: layer_idx is a recorded layer.
  TraceLayer layer(int seq_idx, int layer_idx) const;
  // The same into `out`'s buffers (reused), dropping the file pages it read from memory again, so
  // a reader streaming over the sequences holds only what it copied out.
  void read_layer(int seq_idx, int layer_idx, TraceLayer* out) const;
  std::vector<float> wo(int layer_idx) const;        // [dim, n_heads * head_dim]; a recorded layer

  // Total bytes of the sequence files.
  int64_t sequence_bytes() const;

 private:
  std::string dir_;
  TraceManifest manifest_;
  std::vector<SafetensorsFile> sequences_;
  std::vector<SafetensorsFile> projections_;  // one file
};

// Tensor names inside a sequence file (frozen).
std::string trace_tensor_name(int layer_idx, const char* what);  // "layer.3.q"

}  // namespace kvp
