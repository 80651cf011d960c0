// The tokenizer: the model README's encoding, round trips over awkward text, the merge rule on a
// hand-made vocabulary, and refusal of malformed files.
#include "executor/model/tokenizer.h"

#include <gtest/gtest.h>

#include <cstring>

#include "tests/support/test_support.h"

namespace kvp {
namespace {

const Tokenizer& tok() { return test::default_model().tokenizer; }

TEST(Tokenizer, EncodesThePromptOfTheModelReadme) {
  EXPECT_EQ(tok().encode("Once upon a time"), (std::vector<int32_t>{1, 403, 407, 261, 378}));
}

TEST(Tokenizer, EmptyTextIsBosAlone) {
  EXPECT_EQ(tok().encode(""), std::vector<int32_t>{kBosToken});
  EXPECT_EQ(tok().decode(tok().encode("")), "");
  EXPECT_TRUE(tok().encode("", /*add_bos=*/false).empty());
}

class TokenizerRoundTrip : public ::testing::TestWithParam<std::string> {};

TEST_P(TokenizerRoundTrip, DecodeOfEncodeGivesTheTextBack) {
  const std::string& text = GetParam();
  const std::vector<int32_t> tokens = tok().encode(text);
  ASSERT_FALSE(tokens.empty());
  EXPECT_EQ(tokens[0], kBosToken);
  for (int32_t t : tokens) EXPECT_TRUE(t >= 0 && t < tok().vocab_size());
  EXPECT_EQ(tok().decode(tokens), text);
}

INSTANTIATE_TEST_SUITE_P(
    AwkwardText, TokenizerRoundTrip,
    ::testing::Values("Once upon a time", "  two leading spaces", "trailing space ", " ",
                      "line\nbreaks\n\nand\ttabs", "caf\xC3\xA9 na\xC3\xAFve \xE2\x80\x94 dash",
                      "\xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E",        // 日本語: no pieces
                      "smile \xF0\x9F\x99\x82!",                      // 🙂, four bytes
                      std::string("nul\0byte", 8), "\x01\x02\x7F",  // control bytes
                      "\x80 lone continuation", "cut \xE6\x97",     // invalid UTF-8
                      "Lily's mom said, \"Lily, let's go to the park.\""));

TEST(Tokenizer, CharactersWithoutAPieceUseByteTokens) {
  // 🙂 is F0 9F 99 82; the vocabulary has no piece for it, so four byte tokens (id = byte + 3).
  const std::vector<int32_t> tokens = tok().encode("\xF0\x9F\x99\x82", /*add_bos=*/false);
  ASSERT_GE(tokens.size(), 4u);
  const std::vector<int32_t> tail(tokens.end() - 4, tokens.end());
  EXPECT_EQ(tail, (std::vector<int32_t>{0xF0 + 3, 0x9F + 3, 0x99 + 3, 0x82 + 3}));
}

TEST(Tokenizer, DecodeDropsOneLeadingSpaceOnlyAfterBos) {
  const int32_t once = 403;  // " Once"
  EXPECT_EQ(tok().piece(once), " Once");
  EXPECT_EQ(tok().decode(kBosToken, once), "Once");
  EXPECT_EQ(tok().decode(261, once), " Once");
  EXPECT_EQ(tok().decode(261, kEosToken), "");
  EXPECT_EQ(tok().decode(261, 'A' + 3), "A");  // byte piece <0x41>
}

// A vocabulary written by hand: specials, the 256 byte pieces, then these with chosen scores.
std::string make_tokenizer_file(const std::vector<std::pair<std::string, float>>& extra,
                                int32_t max_len = 16) {
  std::string bytes(4, '\0');
  std::memcpy(bytes.data(), &max_len, 4);
  auto add = [&](const std::string& piece, float score) {
    const int32_t len = static_cast<int32_t>(piece.size());
    bytes.append(reinterpret_cast<const char*>(&score), 4);
    bytes.append(reinterpret_cast<const char*>(&len), 4);
    bytes += piece;
  };
  add("<unk>", 0);
  add("\n<s>\n", 0);
  add("\n</s>\n", 0);
  for (int b = 0; b < 256; ++b) add(fmt::format("<0x{:02X}>", b), 0);
  for (const auto& [piece, score] : extra) add(piece, score);
  return bytes;
}

Tokenizer load_hand_made(const std::vector<std::pair<std::string, float>>& extra) {
  const std::string path = test::make_temp_dir("tok") + "/tok.bin";
  test::write_bytes(path, make_tokenizer_file(extra));
  auto t = Tokenizer::load(path, 259 + static_cast<int>(extra.size()));
  EXPECT_TRUE(t.ok()) << (t.ok() ? "" : t.error().message());
  return std::move(t).value();
}

TEST(Tokenizer, MergesTheHighestScoringPairFirst) {
  // ids: " "=259, "a"=260, "b"=261, " a"=262, "ab"=263.
  // " ab": pairs (" ","a") -> " a" and ("a","b") -> "ab"; the higher score wins, and the
  // loser can no longer form.
  const Tokenizer ab_wins = load_hand_made({{" ", 0}, {"a", 0}, {"b", 0}, {" a", 1}, {"ab", 2}});
  EXPECT_EQ(ab_wins.encode("ab"), (std::vector<int32_t>{1, 259, 263}));
  const Tokenizer space_a_wins =
      load_hand_made({{" ", 0}, {"a", 0}, {"b", 0}, {" a", 3}, {"ab", 2}});
  EXPECT_EQ(space_a_wins.encode("ab"), (std::vector<int32_t>{1, 262, 261}));
}

TEST(Tokenizer, EqualScoresMergeTheLeftmostPair) {
  // "aaa" -> " " a a a; pairs "aa" at 1 and 2 tie: the leftmost merges: " " "aa" "a".
  const Tokenizer t = load_hand_made({{" ", 0}, {"a", 0}, {"aa", 1}});
  EXPECT_EQ(t.encode("aaa"), (std::vector<int32_t>{1, 259, 261, 260}));
}

struct BadTokenizer {
  std::string name;
  std::function<std::string()> bytes;
  int vocab_size;
  std::string expect_in_message;
  friend void PrintTo(const BadTokenizer& x, std::ostream* os) { *os << x.name; }
};

std::vector<BadTokenizer> bad_tokenizers() {
  const std::string good = make_tokenizer_file({{" ", 0}});
  return {
      {"empty", [] { return std::string(); }, 260, "max_token_length"},
      {"truncated", [=] { return good.substr(0, good.size() - 3); }, 260, "piece 259"},
      {"too_few_pieces", [=] { return good; }, 300, "piece 260"},
      {"extra_bytes", [=] { return good + "xyz"; }, 260, "follow the 260 pieces"},
      {"absurd_max_length", [] { return make_tokenizer_file({}, -5); }, 259, "max_token_length"},
      {"negative_piece_length",
       [=] {
         std::string b = good;
         const int32_t bad = -4;
         std::memcpy(b.data() + 4 + 4, &bad, 4);  // length field of piece 0
         return b;
       },
       260, "piece 0 length"},
      {"nan_score",
       [=] {
         std::string b = good;
         const float nan = std::numeric_limits<float>::quiet_NaN();
         std::memcpy(b.data() + 4, &nan, 4);
         return b;
       },
       260, "piece 0 score"},
  };
}

class MalformedTokenizer : public ::testing::TestWithParam<BadTokenizer> {};

TEST_P(MalformedTokenizer, IsRefusedWithAnErrorNamingFileAndField) {
  const std::string path = test::make_temp_dir("badtok") + "/tok.bin";
  test::write_bytes(path, GetParam().bytes());
  auto t = Tokenizer::load(path, GetParam().vocab_size);
  ASSERT_FALSE(t.ok());
  EXPECT_NE(t.error().message().find(path), std::string::npos) << t.error().message();
  EXPECT_NE(t.error().message().find(GetParam().expect_in_message), std::string::npos)
      << t.error().message();
}

INSTANTIATE_TEST_SUITE_P(Corruptions, MalformedTokenizer, ::testing::ValuesIn(bad_tokenizers()),
                         [](const auto& info) { return info.param.name; });

TEST(Tokenizer, MissingFileAndDirectoryAreErrors) {
  const std::string dir = test::make_temp_dir("tokmissing");
  auto missing = Tokenizer::load(dir + "/none.bin", 512);
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.error().message().find("cannot open"), std::string::npos);
  auto directory = Tokenizer::load(dir, 512);
  ASSERT_FALSE(directory.ok());
  EXPECT_NE(directory.error().message().find("is a directory"), std::string::npos);
}

}  // namespace
}  // namespace kvp
