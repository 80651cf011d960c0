#include "executor/corpus.h"

#include <gtest/gtest.h>

#include "executor/cpu/cpu_backend.h"
#include "tests/support/test_support.h"

namespace kvp {
namespace {

using test::default_model;

Corpus sample(int n, int length, uint64_t seed, int batch) {
  CpuBackend backend(default_model().weights);
  Decoder decoder(backend);
  return sample_corpus(decoder, {.n_sequences = n, .length = length,
                                 .sampler = {.temperature = 1.0f, .top_p = 0.95f, .seed = seed},
                                 .batch = batch});
}

TEST(Corpus, SamplingIsSeededAndIndependentOfBatching) {
  const Corpus a = sample(5, 40, 7, 16);
  ASSERT_EQ(a.sequences.size(), 5u);
  for (const auto& s : a.sequences) {
    EXPECT_EQ(s.size(), 40u);
    EXPECT_EQ(s[0], kBosToken);
  }
  EXPECT_EQ(a.sequences, sample(5, 40, 7, 2).sequences);
  EXPECT_NE(a.sequences, sample(5, 40, 8, 16).sequences);
  EXPECT_NE(a.sequences[0], a.sequences[1]);
}

TEST(Corpus, FileRoundTripsAndPlainTextIsSplitIntoDocuments) {
  const Corpus a = sample(3, 30, 1, 16);
  const std::string dir = test::make_temp_dir("corpusfile");
  ASSERT_TRUE(save_corpus(dir + "/c.jsonl", a, default_model().tokenizer,
                          {.model_fingerprint = "x", .options = {.length = 30}}).ok());
  auto back = load_corpus(dir + "/c.jsonl", default_model().tokenizer, 512);
  ASSERT_TRUE(back.ok()) << back.error().message();
  EXPECT_EQ(back->sequences, a.sequences);

  test::write_bytes(dir + "/t.txt", "First story.\nIt goes on.\n\n\n<|endoftext|>\nSecond one.\n");
  auto text = load_corpus(dir + "/t.txt", default_model().tokenizer, 512);
  ASSERT_TRUE(text.ok());
  ASSERT_EQ(text->sequences.size(), 2u);
  EXPECT_EQ(text->sequences[0], default_model().tokenizer.encode("First story.\nIt goes on."));
  EXPECT_EQ(text->sequences[1], default_model().tokenizer.encode("Second one."));

  // A long document is cut into windows of at most max_len tokens.
  auto windows = load_corpus(dir + "/t.txt", default_model().tokenizer, 4);
  ASSERT_TRUE(windows.ok());
  for (const auto& s : windows->sequences) EXPECT_LE(s.size(), 4u);
}

TEST(Corpus, BadCorpusFilesAreErrorsNamingTheLine) {
  const std::string dir = test::make_temp_dir("badcorpus");
  const std::string header = R"({"format":"kvplan-corpus","version":1})";
  test::write_bytes(dir + "/a.jsonl", header + "\n{\"tokens\":[1,2,9999]}\n");
  auto a = load_corpus(dir + "/a.jsonl", default_model().tokenizer, 512);
  ASSERT_FALSE(a.ok());
  EXPECT_NE(a.error().message().find("a.jsonl: line 2: tokens"), std::string::npos) << a.error().message();
  test::write_bytes(dir + "/b.jsonl", header + "\n{\"tokens\":[1,2]}\nnot json\n");
  auto b = load_corpus(dir + "/b.jsonl", default_model().tokenizer, 512);
  ASSERT_FALSE(b.ok());
  EXPECT_NE(b.error().message().find("line 3"), std::string::npos);
  test::write_bytes(dir + "/c.jsonl", R"({"format":"kvplan-corpus","version":7})" "\n");
  EXPECT_FALSE(load_corpus(dir + "/c.jsonl", default_model().tokenizer, 512).ok());
  test::write_bytes(dir + "/empty.txt", "\n\n");
  EXPECT_FALSE(load_corpus(dir + "/empty.txt", default_model().tokenizer, 512).ok());
}

}  // namespace
}  // namespace kvp
