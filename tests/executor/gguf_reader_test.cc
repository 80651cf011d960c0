// The GGUF reader on bad input: each case edits the bytes of the real stories260K.gguf and names
// what the one-line error must mention; next to them, the unedited file loads. No case may crash
// or allocate by an unchecked count.
#include <gtest/gtest.h>

#include <cstring>
#include <functional>

#include "executor/model/gguf_format.h"
#include "executor/model/model_locator.h"
#include "tests/support/test_support.h"

namespace kvp {
namespace {

std::string original() {
  static const std::string bytes = test::read_bytes(test::shared_model_dir() + "/stories260K/stories260K.gguf");
  return bytes;
}

// Offset just after the (length-prefixed) string `s` in the file's header part.
size_t after_string(const std::string& b, const std::string& s) {
  std::string needle(8, '\0');
  const uint64_t n = s.size();
  std::memcpy(needle.data(), &n, 8);
  needle += s;
  const size_t at = b.find(needle);
  EXPECT_NE(at, std::string::npos) << s;
  return at + needle.size();
}
template <class T>
void put(std::string& b, size_t at, T v) {
  std::memcpy(b.data() + at, &v, sizeof(T));
}

struct Edit {
  std::string name;
  std::function<void(std::string&)> edit;
  std::string expect;
  friend void PrintTo(const Edit& e, std::ostream* os) { *os << e.name; }
};

// Tensor info of `name`: after its name come u32 n_dims, n_dims u64 dims, u32 type, u64 offset.
size_t tensor_type_at(const std::string& b, const std::string& name, int n_dims) {
  return after_string(b, name) + 4 + 8 * n_dims;
}

std::vector<Edit> edits() {
  return {
      {"truncated_header", [](std::string& b) { b.resize(10); }, "truncated"},
      {"truncated_in_metadata", [](std::string& b) { b.resize(5000); }, "truncated"},
      {"truncated_in_tensor_data", [](std::string& b) { b.resize(b.size() - 100); }, "run past its end"},
      {"empty_file", [](std::string& b) { b.clear(); }, "magic"},
      {"bad_magic", [](std::string& b) { b[0] = 'X'; }, "magic: expected 'GGUF'"},
      {"version_1", [](std::string& b) { put<uint32_t>(b, 4, 1); }, "version: expected 2 or 3, found 1"},
      {"version_4", [](std::string& b) { put<uint32_t>(b, 4, 4); }, "version: expected 2 or 3, found 4"},
      {"absurd_tensor_count", [](std::string& b) { put<uint64_t>(b, 8, uint64_t{1} << 60); }, "tensor count"},
      {"absurd_metadata_count", [](std::string& b) { put<uint64_t>(b, 16, uint64_t{1} << 62); }, "metadata count"},
      {"absurd_key_length", [](std::string& b) { put<uint64_t>(b, 24, uint64_t{1} << 40); }, "length"},
      {"absurd_array_count",
       [](std::string& b) { put<uint64_t>(b, after_string(b, "tokenizer.ggml.tokens") + 8, uint64_t{1} << 58); },
       "cannot fit"},
      {"unknown_value_type", [](std::string& b) { put<uint32_t>(b, after_string(b, "general.name"), 13); },
       "unknown value type 13"},
      {"unknown_tensor_type",
       [](std::string& b) { put<uint32_t>(b, tensor_type_at(b, "output_norm.weight", 1), 99); },
       "unknown ggml type 99"},
      {"unsupported_q5_k",
       [](std::string& b) { put<uint32_t>(b, tensor_type_at(b, "blk.0.attn_q.weight", 2), 13); },
       "Q5_K"},
      {"q4_k_rows_not_whole_blocks",
       [](std::string& b) { put<uint32_t>(b, tensor_type_at(b, "blk.0.attn_q.weight", 2), 12); },
       "not whole q4_k blocks"},
      {"tensor_past_the_end",
       [](std::string& b) { put<uint64_t>(b, tensor_type_at(b, "output_norm.weight", 1) + 4, uint64_t{1} << 40); },
       "run past its end"},
      {"misaligned_tensor",
       [](std::string& b) {
         const size_t at = tensor_type_at(b, "output_norm.weight", 1) + 4;
         uint64_t off;
         std::memcpy(&off, b.data() + at, 8);
         put<uint64_t>(b, at, off + 4);
       },
       "not a multiple of the alignment"},
      {"overlapping_tensors",
       [](std::string& b) { put<uint64_t>(b, tensor_type_at(b, "output.weight", 2) + 4, 0); }, "overlaps"},
      {"zero_dimension", [](std::string& b) { put<uint64_t>(b, after_string(b, "output_norm.weight") + 4, 0); },
       "dims"},
      {"dims_contradict_metadata",
       [](std::string& b) { put<uint32_t>(b, after_string(b, "llama.feed_forward_length") + 4, 173); },
       "shape: expected"},
      {"unsupported_architecture",
       [](std::string& b) {
         const size_t at = after_string(b, "general.architecture") + 4 + 8;
         std::memcpy(b.data() + at, "mamba", 5);
       },
       "'mamba' is not supported"},
      {"no_tokenizer",
       [](std::string& b) {
         const size_t at = after_string(b, "tokenizer.ggml.model") - 5;
         std::memcpy(b.data() + at, "xxxxx", 5);  // the key becomes tokenizer.ggml.xxxxx
       },
       "carries no tokenizer"},
      {"bool_out_of_range",
       [](std::string& b) {
         // general.name is a string; make it a bool of value 7 by type and first byte.
         const size_t at = after_string(b, "general.name");
         put<uint32_t>(b, at, 7);
         b[at + 4] = 7;
       },
       "bool must be 0 or 1"},
      {"nan_weight",
       [](std::string& b) {
         const uint32_t nan = 0x7fc00000;
         put<uint32_t>(b, b.size() - 4, nan);  // the last element of the last tensor
       },
       "not finite"},
  };
}

class GgufBadInput : public ::testing::TestWithParam<Edit> {};

TEST(GgufReader, TheUneditedFileLoads) {
  KVP_REQUIRE_FIXTURE("stories260K/stories260K.gguf");
  const std::string path = test::make_temp_dir("gguf") + "/ok.gguf";
  test::write_bytes(path, original());
  auto m = load_gguf(path);
  ASSERT_TRUE(m.ok()) << m.error().message();
  EXPECT_EQ(m->weights.config().n_layers, 5);
}

TEST_P(GgufBadInput, OneLineErrorNamingTheFileAndField) {
  KVP_REQUIRE_FIXTURE("stories260K/stories260K.gguf");
  std::string bytes = original();
  GetParam().edit(bytes);
  const std::string path = test::make_temp_dir("gguf") + "/bad.gguf";
  test::write_bytes(path, bytes);
  auto m = load_gguf(path);
  ASSERT_FALSE(m.ok());
  const std::string& msg = m.error().message();
  EXPECT_NE(msg.find(path), std::string::npos) << msg;
  EXPECT_NE(msg.find(GetParam().expect), std::string::npos) << msg;
  EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
}

INSTANTIATE_TEST_SUITE_P(Cases, GgufBadInput, ::testing::ValuesIn(edits()),
                         [](const auto& info) { return info.param.name; });

TEST(GgufReader, NanWeightsLoadWhenTheScanIsSkipped) {
  KVP_REQUIRE_FIXTURE("stories260K/stories260K.gguf");
  std::string bytes = original();
  put<uint32_t>(bytes, bytes.size() - 4, 0x7fc00000);
  const std::string path = test::make_temp_dir("gguf") + "/nan.gguf";
  test::write_bytes(path, bytes);
  EXPECT_FALSE(load_gguf(path, true).ok());
  EXPECT_TRUE(load_gguf(path, false).ok());
}

TEST(GgufReader, VersionTwoIsRead) {
  KVP_REQUIRE_FIXTURE("stories260K/stories260K.gguf");
  std::string bytes = original();
  put<uint32_t>(bytes, 4, 2);
  const std::string path = test::make_temp_dir("gguf") + "/v2.gguf";
  test::write_bytes(path, bytes);
  auto m = load_gguf(path);
  EXPECT_TRUE(m.ok()) << m.error().message();
}

}  // namespace
}  // namespace kvp
