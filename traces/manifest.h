// manifest.yaml of a trace directory (format "kvplan-trace", version 2; version 1 still read). See
// FORMAT.md.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"
#include "traces/tensor_dtype.h"

namespace kvp {

inline constexpr const char* kTraceFormatName = "kvplan-trace";
inline constexpr int kTraceFormatVersion = 2;
inline constexpr const char* kTraceManifestName = "manifest.yaml";
inline constexpr const char* kTraceProjectionsName = "projections.safetensors";

// The shape of the model a trace was recorded with.
struct TraceModelShape {
  std::string fingerprint;  // sha256 (hex) of the weights file
  std::string source;       // where the weights came from, informational
  int dim = 0;
  int hidden_dim = 0;
  int n_layers = 0;
  int n_heads = 0;
  int n_kv_heads = 0;
  int head_dim = 0;
  int vocab_size = 0;
  int seq_len = 0;
};

struct TraceFileEntry {
  std::string file;    // relative to the trace directory
  std::string sha256;  // of the whole file
};

// Whether the query at position `pos` of a sequence with a prompt of `prompt_len` is recorded.
inline bool query_recorded(int pos, int prompt_len, int query_stride) {
  const int d = pos - (prompt_len - 1);
  return (d % query_stride + query_stride) % query_stride == 0;
}
// How many of positions 0..length-1 have a recorded query.
int recorded_query_count(int length, int prompt_len, int query_stride);
// For each of positions 0..length-1, the row of its query among the recorded ones, or -1.
std::vector<int32_t> recorded_query_rows(int length, int prompt_len, int query_stride);

struct TraceSequenceEntry {
  std::string file;
  std::string sha256;
  int prompt_len = 0;  // positions attended in full before eviction starts
  int length = 0;      // T: tokens in the sequence
};

struct TraceManifest {
  TraceModelShape model;
  std::string recorder_backend;  // "cpu" or "cuda"
  TensorDtype qkv_dtype = TensorDtype::kF32;
  // The layers recorded, increasing (every layer unless `record --layers` chose a subset).
  std::vector<int> layers;
  // Queries kept at the positions t of a sequence with (t - prompt_len + 1) mod query_stride == 0;
  // keys and values are kept at every position.
  int query_stride = 1;
  std::string tool_version;
  std::string corpus;  // the corpus the sequences came from, informational
  TraceFileEntry projections;
  std::vector<TraceSequenceEntry> sequences;

  bool has_layer(int layer_idx) const;
  std::string to_yaml() const;
  // Parses and checks every field; errors read "<path>: <field>: expected ..., found ...".
  static Result<TraceManifest> parse(const std::string& yaml_text, const std::string& path);
};

}  // namespace kvp
