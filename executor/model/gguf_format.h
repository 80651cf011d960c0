// GGUF model files (versions 2 and 3, little-endian), as llama.cpp writes them:
//
//   magic "GGUF" | u32 version | u64 n_tensors | u64 n_kv
//   n_kv × (string key | u32 type | value)        string = u64 length, bytes (no terminator)
//   n_tensors × (string name | u32 n_dims | n_dims × u64 ne (innermost first) | u32 ggml type |
//                u64 offset within the data section)
//   padding to general.alignment (default 32) | data section
//
// Value types: 0 u8, 1 i8, 2 u16, 3 i16, 4 u32, 5 i32, 6 f32, 7 bool, 8 string, 9 array (u32 element
// type, u64 count, elements), 10 u64, 11 i64, 12 f64. Everything is validated before use: counts
// and lengths against the bytes left, tensor dims and types, offsets aligned, inside the file and
// not overlapping. Tensor types read: F32 (0), F16 (1), Q4_0 (2), Q4_1 (3), Q8_0 (8), Q4_K (12), Q6_K (14),
// BF16 (30).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/mapped_file.h"
#include "executor/model/model_weights.h"
#include "executor/model/tokenizer.h"

namespace kvp {

enum class GgufType : uint32_t {
  kU8 = 0, kI8 = 1, kU16 = 2, kI16 = 3, kU32 = 4, kI32 = 5, kF32 = 6, kBool = 7,
  kString = 8, kArray = 9, kU64 = 10, kI64 = 11, kF64 = 12,
};

// One metadata value: a scalar, a string, or an array of scalars or strings.
struct GgufValue {
  GgufType type = GgufType::kU8;
  GgufType element_type = GgufType::kU8;  // arrays
  double number = 0.0;                     // every numeric and bool scalar (exact up to 2^53)
  std::string text;                        // kString
  std::vector<double> numbers;             // numeric and bool arrays
  std::vector<std::string> strings;        // string arrays
  bool is_integer() const;
};

struct GgufTensorInfo {
  std::string name;
  std::vector<int64_t> ne;  // innermost first, as stored
  uint32_t ggml_type = 0;
  uint64_t offset = 0;      // within the data section
  uint64_t bytes = 0;
};

class GgufFile {
 public:
  // Maps and validates the file; tensors of types kvplan does not run are refused by name.
  static Result<GgufFile> open(const std::string& path);
  // The same over bytes already in memory (fuzzing, tests).
  static Result<GgufFile> open(std::shared_ptr<const MappedFile> file);

  const std::string& path() const { return file_->path(); }
  uint32_t version() const { return version_; }
  const std::map<std::string, GgufValue>& metadata() const { return metadata_; }
  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  uint64_t alignment() const { return alignment_; }

  const GgufValue* find(const std::string& key) const;
  // Typed getters: an error names the file and key when it is missing or of another type.
  Result<int64_t> get_int(const std::string& key) const;
  Result<double> get_float(const std::string& key) const;
  Result<std::string> get_string(const std::string& key) const;
  Result<bool> get_bool(const std::string& key) const;
  // The same with a default for a missing key (a key of the wrong type is still an error).
  Result<int64_t> get_int(const std::string& key, int64_t fallback) const;
  Result<double> get_float(const std::string& key, double fallback) const;
  Result<bool> get_bool(const std::string& key, bool fallback) const;

  // The tensors as typed views into the mapping, by name. REQUIRES: open() succeeded.
  NamedTensors weight_tensors() const;
  std::shared_ptr<const MappedFile> mapping() const { return file_; }

 private:
  std::shared_ptr<const MappedFile> file_;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  uint64_t data_offset_ = 0;
  std::map<std::string, GgufValue> metadata_;
  std::vector<GgufTensorInfo> tensors_;
};

struct GgufModel {
  ModelWeights weights;
  Tokenizer tokenizer;
};

// Reads a `llama` or `qwen2` model: its shape and RoPE from metadata, the tensors, the tokenizer.
// Architectures, tensor types and features kvplan does not run (sliding-window attention, experts,
// partial or YaRN RoPE) are refused with the key that names them.
Result<GgufModel> load_gguf(const std::string& path, bool check_weights = true);
// The model description only (shape and RoPE), for inspect and capacity.
Result<ModelConfig> read_gguf_config(const GgufFile& file);
// The tokenizer in a GGUF file's metadata (tokenizer-only vocabulary files included).
Result<Tokenizer> gguf_tokenizer(const GgufFile& file);

// Writes `weights` (and `tokenizer`) as a GGUF v3 file, atomically: `llama` or `qwen2` metadata
// from the config, the vocabulary under tokenizer.ggml.*, tensors in their stored types, aligned.
Status save_gguf(const std::string& path, const ModelWeights& weights, const Tokenizer& tokenizer,
                 const std::string& name = "kvplan");

}  // namespace kvp
