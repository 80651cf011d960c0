// The tokenizers read from GGUF metadata against llama.cpp's own test vectors
// (../shared/models/vocab: every .inp string must give the .out ids, without BOS), and the Llama 2
// vocabulary of llama-2-tiny-random against the prompt tokens llama.cpp gave it.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "executor/model/gguf_format.h"
#include "executor/model/hf_format.h"
#include "executor/model/model_convert.h"
#include "tests/support/test_support.h"

namespace kvp {
namespace {

std::string vocab_dir() { return test::shared_model_dir() + "/vocab"; }

std::vector<std::string> split_inputs(const std::string& text) {
  const std::string sep = "\n__ggml_vocab_test__\n";
  std::vector<std::string> out;
  size_t at = 0;
  for (size_t hit; (hit = text.find(sep, at)) != std::string::npos; at = hit + sep.size()) {
    out.push_back(text.substr(at, hit - at));
  }
  return out;  // the file ends with a separator
}

std::vector<std::vector<int32_t>> read_outputs(const std::string& text) {
  std::vector<std::vector<int32_t>> out;
  std::istringstream lines(text);
  for (std::string line; std::getline(lines, line);) {
    std::istringstream ids(line);
    std::vector<int32_t> row;
    for (int32_t id; ids >> id;) row.push_back(id);
    out.push_back(row);
  }
  return out;
}

class VocabVectors : public ::testing::TestWithParam<std::string> {};

TEST_P(VocabVectors, EveryInputGivesLlamaCppsIds) {
  KVP_REQUIRE_FIXTURE("vocab/" + GetParam());
  const std::string path = vocab_dir() + "/" + GetParam();
  auto file = GgufFile::open(path);
  ASSERT_TRUE(file.ok()) << file.error().message();
  auto tok = gguf_tokenizer(*file);
  ASSERT_TRUE(tok.ok()) << tok.error().message();
  const std::vector<std::string> inputs = split_inputs(test::read_bytes(path + ".inp"));
  const std::vector<std::vector<int32_t>> expected = read_outputs(test::read_bytes(path + ".out"));
  ASSERT_EQ(inputs.size(), expected.size());
  ASSERT_GT(inputs.size(), 40u);
  int mismatches = 0;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const std::vector<int32_t> ids = tok->encode(inputs[i], /*add_bos=*/false);
    if (ids != expected[i]) {
      ++mismatches;
      ADD_FAILURE() << GetParam() << " input " << i << " " << nlohmann::json(inputs[i]).dump() << ": got "
                    << ::testing::PrintToString(ids) << ", expected " << ::testing::PrintToString(expected[i]);
    }
  }
  EXPECT_EQ(mismatches, 0);
}

INSTANTIATE_TEST_SUITE_P(LlamaCpp, VocabVectors,
                         ::testing::Values("ggml-vocab-llama-spm.gguf", "ggml-vocab-phi-3.gguf",
                                           "ggml-vocab-gpt-2.gguf", "ggml-vocab-deepseek-llm.gguf"),
                         [](const auto& info) {
                           std::string n = info.param.substr(11, info.param.size() - 16);
                           for (char& c : n) c = std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
                           return n;
                         });

}  // namespace
}  // namespace kvp

namespace kvp {
namespace {

// The byte-level BPE path of tokenizer.json (as Llama 3 and Qwen2 ship it: a Split regex, then
// ByteLevel) against the same llama.cpp vectors: GPT-2's vocabulary written as tokenizer.json.
TEST(TokenizerJson, ByteLevelBpeGivesLlamaCppsIdsForGpt2) {
  KVP_REQUIRE_FIXTURE("vocab/ggml-vocab-gpt-2.gguf");
  const std::string path = vocab_dir() + "/ggml-vocab-gpt-2.gguf";
  auto file = GgufFile::open(path);
  ASSERT_TRUE(file.ok()) << file.error().message();
  auto gguf = gguf_tokenizer(*file);
  ASSERT_TRUE(gguf.ok()) << gguf.error().message();
  const std::string json = test::make_temp_dir("tokjson") + "/tokenizer.json";
  ASSERT_TRUE(save_tokenizer_json(json, *gguf).ok());
  auto tok = load_tokenizer_json(json, gguf->vocab_size());
  ASSERT_TRUE(tok.ok()) << tok.error().message();
  EXPECT_EQ(tok->vocabulary().kind, TokenizerKind::kBytePair);
  const std::vector<std::string> inputs = split_inputs(test::read_bytes(path + ".inp"));
  const std::vector<std::vector<int32_t>> expected = read_outputs(test::read_bytes(path + ".out"));
  for (size_t i = 0; i < inputs.size(); ++i) {
    EXPECT_EQ(tok->encode(inputs[i], false), expected[i]) << nlohmann::json(inputs[i]).dump();
  }
}

}  // namespace
}  // namespace kvp
