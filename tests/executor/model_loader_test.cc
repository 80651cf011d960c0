// llama2.c checkpoints: the real model loads with the documented shape, a written model reads
// back identically, and every kind of malformed file is refused with an error naming the file
// and the field, never a crash.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>

#include "executor/model/llama2c_format.h"
#include "tests/support/test_support.h"

namespace kvp {
namespace {

using test::default_model;

TEST(Llama2cLoader, LoadsStories260KWithTheDocumentedShape) {
  const ModelConfig& c = default_model().weights.config();
  EXPECT_EQ(c.dim, 64);
  EXPECT_EQ(c.hidden_dim, 172);
  EXPECT_EQ(c.n_layers, 5);
  EXPECT_EQ(c.n_heads, 8);
  EXPECT_EQ(c.n_kv_heads, 4);
  EXPECT_EQ(c.vocab_size, 512);
  EXPECT_EQ(c.seq_len, 512);
  EXPECT_TRUE(c.shared_classifier);
  EXPECT_EQ(default_model().weights.classifier().data, default_model().weights.token_embedding().data);
  // Header plus every float: parameters and the two legacy RoPE tables.
  EXPECT_EQ(kLlama2cHeaderBytes + 4 * (c.parameter_count() + int64_t{c.seq_len} * c.head_dim()),
            1056540);
  EXPECT_EQ(c.parameter_count(), 260032);
}

ModelConfig small_unshared_config() {
  return ModelConfig{.dim = 48, .hidden_dim = 100, .n_layers = 3, .n_heads = 6, .n_kv_heads = 2,
                     .vocab_size = 300, .seq_len = 64, .shared_classifier = false};
}

TEST(Llama2cLoader, UnsharedClassifierRoundTrips) {
  const ModelWeights original = random_weights(small_unshared_config(), 7);
  const std::string path = test::make_temp_dir("unshared") + "/model.bin";
  ASSERT_TRUE(save_llama2c(path, original).ok());
  // The header stores vocab_size negated to flag the separate classifier.
  int32_t header[7];
  std::memcpy(header, test::read_bytes(path).data(), sizeof(header));
  EXPECT_EQ(header[5], -300);

  auto loaded = load_llama2c(path);
  ASSERT_TRUE(loaded.ok()) << loaded.error().message();
  EXPECT_FALSE(loaded->config().shared_classifier);
  ASSERT_EQ(loaded->tensors().size(), original.tensors().size());
  for (const auto& [name, t] : original.tensors()) {
    const WeightTensor& u = loaded->tensors().at(name);
    ASSERT_EQ(u.bytes(), t.bytes()) << name;
    EXPECT_EQ(std::memcmp(u.data, t.data, t.bytes()), 0) << name;
  }
  EXPECT_NE(loaded->classifier().data, loaded->token_embedding().data);
}

// Each case edits the bytes of the real model and names what the error must mention.
struct Corruption {
  std::string name;
  std::function<void(std::string&)> edit;
  std::string expect_in_message;
  friend void PrintTo(const Corruption& x, std::ostream* os) { *os << x.name; }
};

void set_header(std::string& bytes, int field, int32_t value) {
  std::memcpy(bytes.data() + 4 * field, &value, 4);
}

std::vector<Corruption> corruptions() {
  const size_t wq_offset = kLlama2cHeaderBytes + 4 * (512 * 64 + 5 * 64 + 17);
  return {
      {"truncated", [](std::string& b) { b.resize(b.size() - 100); }, "file length"},
      {"shorter_than_header", [](std::string& b) { b.resize(10); }, "header"},
      {"empty", [](std::string& b) { b.clear(); }, "header"},
      {"sizes_disagree", [](std::string& b) { set_header(b, 0, 32); }, "file length"},
      {"negative_dim", [](std::string& b) { set_header(b, 0, -64); }, "dim"},
      {"absurd_layers", [](std::string& b) { set_header(b, 2, 1 << 30); }, "n_layers"},
      {"zero_heads", [](std::string& b) { set_header(b, 3, 0); }, "n_heads"},
      {"heads_not_dividing_dim", [](std::string& b) { set_header(b, 3, 7); }, "n_heads"},
      {"kv_heads_not_dividing_heads", [](std::string& b) { set_header(b, 4, 3); }, "n_kv_heads"},
      {"absurd_vocab", [](std::string& b) { set_header(b, 5, std::numeric_limits<int32_t>::min()); },
       "vocab_size"},
      {"negative_seq_len", [](std::string& b) { set_header(b, 6, -1); }, "seq_len"},
      {"nan_weight",
       [=](std::string& b) {
         const float nan = std::numeric_limits<float>::quiet_NaN();
         std::memcpy(b.data() + wq_offset, &nan, 4);
       },
       "tensor blk.0.attn_q.weight: element 17 is not finite"},
      {"inf_weight",
       [](std::string& b) {
         const float inf = std::numeric_limits<float>::infinity();
         std::memcpy(b.data() + kLlama2cHeaderBytes, &inf, 4);
       },
       "tensor token_embd.weight: element 0 is not finite"},
  };
}

class MalformedModel : public ::testing::TestWithParam<Corruption> {};

TEST_P(MalformedModel, IsRefusedWithAnErrorNamingFileAndField) {
  std::string bytes = test::read_bytes(default_model().files.model_path);
  GetParam().edit(bytes);
  const std::string path = test::make_temp_dir("malformed") + "/model.bin";
  test::write_bytes(path, bytes);
  auto loaded = load_llama2c(path);
  ASSERT_FALSE(loaded.ok());
  const std::string& message = loaded.error().message();
  EXPECT_NE(message.find(path), std::string::npos) << message;
  EXPECT_NE(message.find(GetParam().expect_in_message), std::string::npos) << message;
  EXPECT_EQ(message.find('\n'), std::string::npos) << "one line: " << message;
}

INSTANTIATE_TEST_SUITE_P(Corruptions, MalformedModel, ::testing::ValuesIn(corruptions()),
                         [](const auto& info) { return info.param.name; });

TEST(Llama2cLoader, MissingFileAndDirectoryAreErrors) {
  const std::string dir = test::make_temp_dir("missing");
  auto missing = load_llama2c(dir + "/nope.bin");
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.error().message().find("nope.bin: cannot open"), std::string::npos);
  auto directory = load_llama2c(dir);
  ASSERT_FALSE(directory.ok());
  EXPECT_NE(directory.error().message().find("is a directory"), std::string::npos);
  auto located = locate_model(dir, "");
  ASSERT_FALSE(located.ok());
  EXPECT_NE(located.error().message().find("no model in it"), std::string::npos);
}

TEST(ModelLocator, FindsTheDefaultModelAndItsTokenizerWithoutFlags) {
  auto files = locate_model("", "");
  ASSERT_TRUE(files.ok()) << files.error().message();
  EXPECT_EQ(std::filesystem::path(files->model_path).filename(), "stories260K.bin");
  EXPECT_EQ(std::filesystem::path(files->tokenizer_path).filename(), "tok512.bin");
  auto by_dir = locate_model(std::filesystem::path(files->model_path).parent_path().string(), "");
  ASSERT_TRUE(by_dir.ok());
  EXPECT_EQ(by_dir->model_path, files->model_path);
  auto unknown = locate_model("no-such-model", "");
  ASSERT_FALSE(unknown.ok());
  EXPECT_NE(unknown.error().message().find("KVPLAN_MODEL_DIR"), std::string::npos);
  // The embedded copy, not a fixture folder's: models/ of the source tree comes first.
  EXPECT_EQ(std::filesystem::path(files->model_path).parent_path().parent_path(),
            std::filesystem::path(KVP_SOURCE_DIR) / "models");
}

// A model folder in kvplan's cache (where tools/fetch-model.sh puts the real model) is found by
// name, after every other model directory; without it the name is unknown, and the error lists
// the cache among the places searched.
TEST(ModelLocator, FindsAModelInTheCacheDirectoryByName) {
  const std::string cache = test::make_temp_dir("model-cache");
  const test::ScopedEnv env("KVPLAN_CACHE_DIR", cache);
  auto absent = locate_model("cached-stories", "");
  ASSERT_FALSE(absent.ok());
  EXPECT_NE(absent.error().message().find(cache + "/models"), std::string::npos) << absent.error().message();
  const std::filesystem::path folder = std::filesystem::path(cache) / "models" / "cached-stories";
  std::filesystem::create_directories(folder);
  const ModelFiles& embedded = test::default_model().files;
  std::filesystem::copy_file(embedded.model_path, folder / "model.bin");
  std::filesystem::copy_file(embedded.tokenizer_path, folder / "tok512.bin");
  auto found = locate_model("cached-stories", "");
  ASSERT_TRUE(found.ok()) << found.error().message();
  EXPECT_EQ(found->model_path, (folder / "model.bin").string());
  EXPECT_EQ(found->tokenizer_path, (folder / "tok512.bin").string());
}

}  // namespace
}  // namespace kvp
