// manifest.yaml of a trace directory (format "kvplan-trace", version 1). See FORMAT.md.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"
#include "traces/tensor_dtype.h"

namespace kvp {

inline constexpr const char* kTraceFormatName = "kvplan-trace";
inline constexpr int kTraceFormatVersion = 1;
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
  std::string tool_version;
  std::string corpus;  // the corpus the sequences came from, informational
  TraceFileEntry projections;
  std::vector<TraceSequenceEntry> sequences;

  std::string to_yaml() const;
  // Parses and checks every field; errors read "<path>: <field>: expected ..., found ...".
  static Result<TraceManifest> parse(const std::string& yaml_text, const std::string& path);
};

}  // namespace kvp
