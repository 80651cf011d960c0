#include "executor/model/tokenizer.h"

#include <cmath>
#include <cstring>

#include "common/file_util.h"

namespace kvp {
namespace {

// Upper bound on one piece's length in bytes; real vocabularies stay far below it.
constexpr int32_t kMaxPieceBytes = 1 << 16;

bool parse_byte_piece(const std::string& piece, unsigned char* byte) {
  // "<0xHH>", as SentencePiece writes byte-fallback pieces.
  if (piece.size() != 6 || piece.compare(0, 3, "<0x") != 0 || piece[5] != '>') return false;
  auto hex = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  const int hi = hex(piece[3]), lo = hex(piece[4]);
  if (hi < 0 || lo < 0) return false;
  *byte = static_cast<unsigned char>(hi * 16 + lo);
  return true;
}

}  // namespace

Result<Tokenizer> Tokenizer::load(const std::string& path, int vocab_size) {
  KVP_ASSIGN_OR_RETURN(auto bytes, read_file_bytes(path));
  size_t at = 0;
  auto read_i32 = [&](int32_t* out) {
    if (bytes.size() - at < 4) return false;
    std::memcpy(out, bytes.data() + at, 4);
    at += 4;
    return true;
  };
  int32_t max_token_length = 0;
  if (!read_i32(&max_token_length)) {
    return make_error("{}: max_token_length: expected 4 bytes, found a {}-byte file", path,
                      bytes.size());
  }
  if (max_token_length < 1 || max_token_length > kMaxPieceBytes) {
    return make_error("{}: max_token_length: expected 1..{}, found {}", path, kMaxPieceBytes,
                      max_token_length);
  }
  if (vocab_size < 3 + 256) {
    return make_error("{}: vocab_size: expected at least 259 tokens (3 special, 256 bytes), the "
                      "model has {}", path, vocab_size);
  }
  Tokenizer t;
  t.pieces_.reserve(vocab_size);
  t.scores_.reserve(vocab_size);
  for (int i = 0; i < vocab_size; ++i) {
    float score = 0.0f;
    int32_t length = 0;
    if (bytes.size() - at < 8) {
      return make_error("{}: piece {}: file ends after {} bytes, expected {} pieces for the "
                        "model's vocab_size", path, i, bytes.size(), vocab_size);
    }
    std::memcpy(&score, bytes.data() + at, 4);
    at += 4;
    read_i32(&length);
    if (!std::isfinite(score)) {
      return make_error("{}: piece {} score: expected a finite number, found {}", path, i, score);
    }
    if (length < 0 || length > max_token_length) {
      return make_error("{}: piece {} length: expected 0..{} (max_token_length), found {}", path,
                        i, max_token_length, length);
    }
    if (bytes.size() - at < static_cast<size_t>(length)) {
      return make_error("{}: piece {}: length {} runs past the end of the file", path, i, length);
    }
    t.pieces_.emplace_back(reinterpret_cast<const char*>(bytes.data() + at), length);
    t.scores_.push_back(score);
    at += length;
  }
  if (at != bytes.size()) {
    return make_error("{}: {} bytes follow the {} pieces the model's vocab_size calls for; is this "
                      "the tokenizer of another model?", path, bytes.size() - at, vocab_size);
  }
  for (int32_t id = 0; id < vocab_size; ++id) t.piece_to_id_.try_emplace(t.pieces_[id], id);
  for (int b = 0; b < 256; ++b) {
    unsigned char byte;
    if (!parse_byte_piece(t.pieces_[t.byte_token_base_ + b], &byte) || byte != b) {
      return make_error("{}: piece {}: expected the byte piece <0x{:02X}>, found '{}'", path,
                        t.byte_token_base_ + b, b, t.pieces_[t.byte_token_base_ + b]);
    }
  }
  t.space_token_ = t.lookup(" ");
  return t;
}

int32_t Tokenizer::lookup(std::string_view piece) const {
  auto it = piece_to_id_.find(std::string(piece));
  return it == piece_to_id_.end() ? -1 : it->second;
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_bos) const {
  std::vector<int32_t> tokens;
  if (add_bos) tokens.push_back(kBosToken);
  if (text.empty()) return tokens;
  const size_t first = tokens.size();
  if (space_token_ >= 0) tokens.push_back(space_token_);

  // One piece per UTF-8 character: a lead byte and up to three continuation bytes.
  for (size_t i = 0; i < text.size();) {
    size_t n = 1;
    while (i + n < text.size() && n < 4 && (static_cast<unsigned char>(text[i + n]) & 0xC0) == 0x80) {
      ++n;
    }
    const std::string_view ch = text.substr(i, n);
    if (int32_t id = lookup(ch); id >= 0) {
      tokens.push_back(id);
    } else {
      for (char c : ch) tokens.push_back(byte_token_base_ + static_cast<unsigned char>(c));
    }
    i += n;
  }

  // Merge the best-scoring adjacent pair until no pair forms a piece.
  std::string pair;
  for (;;) {
    float best_score = -INFINITY;
    int32_t best_id = -1;
    size_t best_idx = 0;
    for (size_t i = first; i + 1 < tokens.size(); ++i) {
      pair = pieces_[tokens[i]];
      pair += pieces_[tokens[i + 1]];
      const int32_t id = lookup(pair);
      if (id >= 0 && scores_[id] > best_score) {
        best_score = scores_[id];
        best_id = id;
        best_idx = i;
      }
    }
    if (best_id < 0) break;
    tokens[best_idx] = best_id;
    tokens.erase(tokens.begin() + static_cast<std::ptrdiff_t>(best_idx) + 1);
  }
  return tokens;
}

std::string Tokenizer::decode(int32_t prev_token, int32_t token) const {
  if (token == kBosToken || token == kEosToken) return {};
  const std::string& piece = pieces_[token];
  unsigned char byte;
  if (parse_byte_piece(piece, &byte)) return std::string(1, static_cast<char>(byte));
  if (prev_token == kBosToken && !piece.empty() && piece[0] == ' ') return piece.substr(1);
  return piece;
}

std::string Tokenizer::decode(const std::vector<int32_t>& tokens) const {
  std::string text;
  for (size_t i = 0; i < tokens.size(); ++i) {
    text += decode(i == 0 ? -1 : tokens[i - 1], tokens[i]);
  }
  return text;
}

}  // namespace kvp
