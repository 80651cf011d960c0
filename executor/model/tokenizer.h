// The llama2.c tokenizer: a SentencePiece-style BPE vocabulary with byte fallback.
//
// File format (tok512.bin, tokenizer.bin): int32 max_token_length, then vocab_size records of
// (float32 score, int32 byte length, bytes). The vocabulary size comes from the model.
// Token 0 is <unk>, 1 is BOS, 2 is EOS; ids 3..258 are the byte pieces "<0x00>".."<0xFF>".
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "common/status.h"

namespace kvp {

inline constexpr int32_t kBosToken = 1;
inline constexpr int32_t kEosToken = 2;

class Tokenizer {
 public:
  // Loads `path` for a model of `vocab_size` tokens. The file must hold exactly that many
  // records; errors name the file and the record.
  static Result<Tokenizer> load(const std::string& path, int vocab_size);

  int vocab_size() const { return static_cast<int>(pieces_.size()); }
  const std::string& piece(int32_t token) const { return pieces_[token]; }

  // BOS, then for non-empty text the dummy-prefix piece " ", then one piece per UTF-8 character
  // (byte pieces where a character has none), then merges of the adjacent pair whose
  // concatenation has the highest score, leftmost first, until none applies.
  std::vector<int32_t> encode(std::string_view text, bool add_bos = true) const;

  // The bytes `token` prints after `prev_token`: a byte piece yields its byte, the token after
  // BOS drops one leading space, and BOS/EOS yield nothing.
  std::string decode(int32_t prev_token, int32_t token) const;

  // The text of a whole sequence: decode() over consecutive pairs.
  std::string decode(const std::vector<int32_t>& tokens) const;

 private:
  int32_t lookup(std::string_view piece) const;

  std::vector<std::string> pieces_;
  std::vector<float> scores_;
  std::unordered_map<std::string, int32_t> piece_to_id_;
  int32_t space_token_ = -1;
  int byte_token_base_ = 3;
};

}  // namespace kvp
