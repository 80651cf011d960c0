// Tokenizers of the LLaMA family, from whatever file carries them: a llama2.c tokenizer.bin, GGUF
// metadata (tokenizer.ggml.*), or a Hugging Face tokenizer.json. Two algorithms:
//
// - SentencePiece-style (GGUF `llama`, llama2.c): spaces become the space marker ("▁", or " " in
//   llama2.c files), a dummy prefix marker is prepended (add_space_prefix), the text is split into
//   UTF-8 characters, and adjacent symbols are merged, best pair first (leftmost on ties), where
//   "best" is the highest vocabulary score of the merged piece or, for a tokenizer.json with
//   merges, the lowest merge rank; a character with no piece becomes its bytes' <0xXX> pieces.
// - Byte-level BPE (GGUF `gpt2`, tokenizer.json with a ByteLevel pre-tokenizer): the text is split
//   by the pre-tokenizer's regular expressions (PCRE2, Unicode properties; matches and the gaps
//   between them are both words), each word's bytes are mapped to GPT-2's printable characters,
//   and pairs are merged lowest rank first; with ignore_merges (Llama 3) a word that is itself a
//   piece is taken whole.
// Both first split out user-defined pieces (as llama.cpp and tokenizers do, even without special
// token parsing), longest first.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "common/status.h"

namespace kvp {

// The llama2.c tokenizer's fixed ids (tok512.bin and tokenizer.bin).
inline constexpr int32_t kBosToken = 1;
inline constexpr int32_t kEosToken = 2;

enum class TokenizerKind { kSentencePiece, kBytePair };
// Token types as GGUF numbers them (tokenizer.ggml.token_type; frozen).
enum class TokenType : uint8_t { kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5, kByte = 6 };

// Everything a tokenizer is made from; readers fill it, Tokenizer::create checks it.
struct Vocabulary {
  TokenizerKind kind = TokenizerKind::kSentencePiece;
  std::vector<std::string> pieces;
  std::vector<float> scores;        // SentencePiece scores (may be empty when merges are given)
  std::vector<TokenType> types;     // empty: all normal
  std::vector<std::string> merges;  // "left right", best first (byte-level BPE; optional for SPM)
  std::string pre = "default";      // pre-tokenizer name (byte-level BPE), for messages and inspect
  std::vector<std::string> pre_regexes;  // applied in order; each splits the words of the last
  int32_t bos = -1;
  int32_t eos = -1;
  int32_t eot = -1;                 // end of turn, where the vocabulary has one
  std::vector<int32_t> extra_end_tokens;  // more ids that end generation (generation_config.json)
  bool add_bos = true;
  bool add_space_prefix = true;     // SentencePiece only
  bool ignore_merges = false;       // byte-level BPE only (Llama 3)
  std::string chat_template;        // the model's Jinja chat template text (GGUF tokenizer.chat_template), or empty
  std::string space_marker = "\xE2\x96\x81";  // "▁"; llama2.c vocabularies use " "
};

// The pre-tokenizer expressions a GGUF `tokenizer.ggml.pre` name stands for (default/gpt-2,
// llama-bpe/llama3, qwen2, deepseek-llm, smollm/starcoder/refact/command-r); an error for any other
// name.
Result<std::vector<std::string>> pre_tokenizer_regexes(std::string_view pre);

class Tokenizer {
 public:
  // Checks `vocab` (ids in range, merges naming pieces, regexes that compile) and builds the
  // lookup tables. Errors name `source` and the field.
  static Result<Tokenizer> create(Vocabulary vocab, const std::string& source);
  // Loads a llama2.c tokenizer file for a model of `vocab_size` tokens. The file must hold
  // exactly that many records; errors name the file and the record.
  static Result<Tokenizer> load(const std::string& path, int vocab_size);

  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  int vocab_size() const { return static_cast<int>(vocab_.pieces.size()); }
  const std::string& piece(int32_t token) const { return vocab_.pieces[token]; }
  const Vocabulary& vocabulary() const { return vocab_; }
  std::string_view kind_name() const;  // "sentencepiece" or "byte-level BPE"
  int32_t bos() const { return vocab_.bos; }
  int32_t eos() const { return vocab_.eos; }
  // Whether generating `token` ends a sequence: EOS, end of turn, or a listed end token.
  bool is_end_token(int32_t token) const;

  // The tokens of `text`, BOS first when `add_bos` and the vocabulary adds one. Special pieces in
  // the text are not parsed (user-defined pieces are, as the reference implementations do).
  std::vector<int32_t> encode(std::string_view text, bool add_bos = true) const;

  // The bytes `token` prints after `prev_token` (-1 at the start): byte pieces yield their byte,
  // control tokens nothing, a SentencePiece marker a space (dropped at the start of the text when
  // the vocabulary adds a space prefix), byte-level characters their bytes.
  std::string decode(int32_t prev_token, int32_t token) const;

  // The text of a whole sequence: decode() over consecutive pairs.
  std::string decode(const std::vector<int32_t>& tokens) const;

  // The id of the piece spelled exactly `piece` (special pieces included), or -1.
  int32_t find_piece(std::string_view piece) const { return lookup(piece); }

 private:
  struct Regex;
  Tokenizer() = default;
  int32_t lookup(std::string_view piece) const;
  void encode_sentencepiece(std::string_view text, std::vector<int32_t>* out) const;
  void encode_bpe_word(std::string_view word, std::vector<int32_t>* out) const;
  void encode_fragment(std::string_view text, bool at_start, std::vector<int32_t>* out) const;
  int merge_rank(std::string_view left, std::string_view right) const;

  Vocabulary vocab_;
  std::unordered_map<std::string, int32_t> piece_to_id_;
  std::unordered_map<std::string, int> merge_rank_;  // "left\0right" -> rank
  int32_t byte_pieces_[256];                        // <0xXX> piece of each byte, or -1
  std::vector<int32_t> user_defined_;               // longest first
  std::vector<std::unique_ptr<Regex>> regexes_;
};

}  // namespace kvp
