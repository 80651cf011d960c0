// `kvplan record`: teacher-forces each corpus sequence through the full-cache executor and writes
// a trace directory (traces/FORMAT.md).
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "executor/corpus.h"
#include "executor/model/model_locator.h"
#include "traces/tensor_dtype.h"

namespace kvp {

struct RecordOptions {
  std::string out_dir;
  int prompt_len = 64;  // positions attended in full before eviction; min(prompt_len, T - 1) per sequence
  TensorDtype qkv_dtype = TensorDtype::kF32;  // F32, F16 or BF16
  std::vector<int> layers;  // the layers to record, increasing; empty: every layer
  int query_stride = 1;     // keep the query of every query_stride-th position (see TraceManifest)
  int chunk = 512;          // positions per forward pass (activations and logits are O(chunk))
  bool overwrite = false;
  std::string tool_version;
  int threads = 1;  // CPU threads for the matrix products
};

struct RecordStats {
  int n_sequences = 0;
  int64_t n_tokens = 0;
  int64_t bytes = 0;  // tensor bytes written (file headers not counted)
  double seconds = 0.0;
};

// The model fingerprint traces and plans carry (fingerprint_files: the weights file's sha256).
Result<std::string> model_fingerprint(const LoadedModel& model);

Result<RecordStats> record_trace(const LoadedModel& model, const Corpus& corpus,
                                 const RecordOptions& options,
                                 const std::function<void(int done, int64_t bytes)>& progress = {});

}  // namespace kvp
