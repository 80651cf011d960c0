#include "executor/model/tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <queue>

#include "common/file_util.h"

namespace kvp {
namespace {

// Upper bound on one piece's length in bytes; real vocabularies stay far below it.
constexpr int32_t kMaxPieceBytes = 1 << 16;

bool parse_byte_piece(std::string_view piece, unsigned char* byte) {
  // "<0xHH>", as SentencePiece writes byte-fallback pieces.
  if (piece.size() != 6 || piece.substr(0, 3) != "<0x" || piece[5] != '>') return false;
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

// Bytes in the UTF-8 character that starts with `lead` (1 for a stray continuation byte).
size_t utf8_len(unsigned char lead) {
  static constexpr uint8_t kLen[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
  return kLen[lead >> 4];
}

void append_utf8(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

// GPT-2's byte-to-character map: printable Latin-1 bytes stand for themselves, the other 68 take
// the code points from U+0100 on, in byte order.
struct ByteMap {
  std::string encoded[256];                        // UTF-8 of each byte's character
  std::unordered_map<uint32_t, uint8_t> decoded;   // character -> byte
  ByteMap() {
    uint32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
      const uint32_t cp = printable ? static_cast<uint32_t>(b) : next++;
      append_utf8(cp, &encoded[b]);
      decoded[cp] = static_cast<uint8_t>(b);
    }
  }
};
const ByteMap& byte_map() {
  static const ByteMap m;
  return m;
}

// Decodes one UTF-8 character at s[i] (valid or not: invalid bytes decode as themselves).
uint32_t decode_utf8(std::string_view s, size_t i, size_t* len) {
  const unsigned char c = static_cast<unsigned char>(s[i]);
  size_t n = std::min(utf8_len(c), s.size() - i);
  uint32_t cp = n == 1 ? c : n == 2 ? c & 0x1F : n == 3 ? c & 0x0F : c & 0x07;
  for (size_t k = 1; k < n; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
  *len = n;
  return cp;
}

std::string merge_key(std::string_view left, std::string_view right) {
  std::string key;
  key.reserve(left.size() + right.size() + 1);
  key.append(left);
  key.push_back('\0');
  key.append(right);
  return key;
}

// A symbol of the merge loops: a byte range of the text, linked to its neighbours.
struct Symbol {
  int prev;
  int next;
  size_t begin;
  size_t size;
};

struct Bigram {
  int left;
  int right;
  double priority;  // higher merges first
  size_t size;
  bool operator<(const Bigram& o) const {  // for a max-heap: lower priority, then later left
    return priority < o.priority || (priority == o.priority && left > o.left);
  }
};

// The pair-merge loop both algorithms share. `priority_of(begin, size_left, size_right)` gives
// the merged pair's priority, or NaN when the pair does not merge.
template <class Priority>
std::vector<Symbol> merge_symbols(std::string_view text, const Priority& priority_of) {
  std::vector<Symbol> sym;
  for (size_t i = 0; i < text.size();) {
    const size_t n = std::min(utf8_len(static_cast<unsigned char>(text[i])), text.size() - i);
    sym.push_back(Symbol{static_cast<int>(sym.size()) - 1, static_cast<int>(sym.size()) + 1, i, n});
    i += n;
  }
  if (sym.empty()) return sym;
  sym.back().next = -1;
  std::priority_queue<Bigram> queue;
  auto try_add = [&](int left, int right) {
    if (left < 0 || right < 0) return;
    const double p = priority_of(sym[left].begin, sym[left].size, sym[right].size);
    if (std::isnan(p)) return;
    queue.push(Bigram{left, right, p, sym[left].size + sym[right].size});
  };
  for (size_t i = 1; i < sym.size(); ++i) try_add(static_cast<int>(i) - 1, static_cast<int>(i));
  while (!queue.empty()) {
    const Bigram b = queue.top();
    queue.pop();
    Symbol& l = sym[b.left];
    Symbol& r = sym[b.right];
    if (l.size == 0 || r.size == 0 || l.size + r.size != b.size || l.next != b.right) continue;  // stale
    l.size += r.size;
    r.size = 0;
    l.next = r.next;
    if (r.next >= 0) sym[r.next].prev = b.left;
    try_add(l.prev, b.left);
    try_add(b.left, l.next);
  }
  std::vector<Symbol> out;
  for (int i = 0; i >= 0; i = sym[i].next) out.push_back(sym[i]);
  return out;
}

constexpr double kNoMerge = std::numeric_limits<double>::quiet_NaN();

}  // namespace

struct Tokenizer::Regex {
  pcre2_code* code = nullptr;
  ~Regex() {
    if (code) pcre2_code_free(code);
  }
};

Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

Result<std::vector<std::string>> pre_tokenizer_regexes(std::string_view pre) {
  // The expressions of each family's tokenizer.json (Llama 3 and Qwen2 with their
  // case-insensitive contractions spelled out, as llama.cpp does).
  if (pre == "default" || pre == "gpt-2" || pre == "gpt2") {
    return std::vector<std::string>{
        R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S))"};
  }
  if (pre == "smollm" || pre == "starcoder" || pre == "refact" || pre == "command-r") {
    // Each digit its own word, then GPT-2's expression over the rest (llama.cpp groups these names).
    return std::vector<std::string>{
        R"(\p{N})", R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S))"};
  }
  if (pre == "llama-bpe" || pre == "llama3" || pre == "llama-v3") {
    return std::vector<std::string>{
        R"((?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)"};
  }
  if (pre == "qwen2") {
    return std::vector<std::string>{
        R"((?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)"};
  }
  if (pre == "deepseek-llm") {
    return std::vector<std::string>{
        // Non-ASCII characters as PCRE \x{...} escapes: the exact code points, safe from any
        // normalisation of the source text.
        "[\r\n]",
        "\\s?[A-Za-z\\x{B5}\\x{C0}-\\x{D6}\\x{D8}-\\x{F6}\\x{F8}-\\x{1BA}\\x{1BC}-\\x{1BF}\\x{1C4}-\\x{293}\\x{295}-\\x{2AF}\\x{370}-\\x{373}\\x{376}\\x{377}\\x{37B}-\\x{37D}\\x{37F}\\x{386}\\x{388}-\\x{38A}\\x{38C}\\x{38E}-\\x{3A1}\\x{3A3}-\\x{3F5}\\x{3F7}-\\x{481}\\x{48A}-\\x{52F}\\x{531}-\\x{556}\\x{10A0}-\\x{10C5}\\x{13A0}-\\x{13F5}\\x{13F8}-\\x{13FD}\\x{1C90}-\\x{1CBA}\\x{1CBD}-\\x{1CBF}\\x{1D00}-\\x{1D2B}\\x{1D6B}-\\x{1D77}\\x{1D79}-\\x{1D9A}\\x{1E00}-\\x{1F15}\\x{1F18}-\\x{1F1D}\\x{1F20}-\\x{1F45}\\x{1F48}-\\x{1F4D}\\x{1F50}-\\x{1F57}\\x{1F59}\\x{1F5B}\\x{1F5D}\\x{1F5F}-\\x{1F7D}\\x{1F80}-\\x{1FB4}\\x{1FB6}-\\x{1FBC}\\x{1FBE}\\x{1FC2}-\\x{1FC4}\\x{1FC6}-\\x{1FCC}\\x{1FD0}-\\x{1FD3}\\x{1FD6}-\\x{1FDB}\\x{1FE0}-\\x{1FEC}\\x{1FF2}-\\x{1FF4}\\x{1FF6}-\\x{1FFC}\\x{2102}\\x{2107}\\x{210A}-\\x{2113}\\x{2115}\\x{2119}-\\x{211D}\\x{2124}\\x{2126}\\x{2128}\\x{212A}-\\x{212D}\\x{212F}-\\x{2134}\\x{2139}\\x{213C}-\\x{213F}\\x{2145}-\\x{2149}\\x{214E}\\x{2183}\\x{2184}\\x{2C00}-\\x{2C7B}\\x{2C7E}-\\x{2CE4}\\x{2CEB}-\\x{2CEE}\\x{2CF2}\\x{2CF3}\\x{A640}-\\x{A66D}\\x{A680}-\\x{A69B}\\x{A722}-\\x{A76F}\\x{A771}-\\x{A787}\\x{A78B}-\\x{A78E}\\x{AB70}-\\x{ABBF}\\x{FB00}-\\x{FB06}\\x{FB13}-\\x{FB17}\\x{FF21}-\\x{FF3A}\\x{FF41}-\\x{FF5A}\\x{10400}-\\x{1044F}\\x{104B0}-\\x{104D3}\\x{104D8}-\\x{104FB}\\x{10C80}-\\x{10CB2}\\x{10CC0}-\\x{10CF2}\\x{118A0}-\\x{118DF}\\x{1E900}-\\x{1E943}]+",
        "\\s?[!-/:-~\\x{FF01}-\\x{FF0F}\\x{FF1A}-\\x{FF5E}\\x{2018}-\\x{201F}\\x{3000}-\\x{3002}]+",
        "\\s+$",
        "[\\x{4E00}-\\x{9FA5}\\x{800}-\\x{4E00}\\x{AC00}-\\x{D7FF}]+",
        "\\p{N}+",
    };
  }
  return make_error("tokenizer.ggml.pre: pre-tokenizer '{}' is not supported (default, gpt-2, llama-bpe, "
                    "qwen2, deepseek-llm, smollm, starcoder, refact, command-r)", pre);
}

Result<Tokenizer> Tokenizer::create(Vocabulary vocab, const std::string& source) {
  const size_t n = vocab.pieces.size();
  if (n == 0) return make_error("{}: tokenizer: the vocabulary is empty", source);
  if (!vocab.scores.empty() && vocab.scores.size() != n) {
    return make_error("{}: tokenizer scores: expected {} (one per piece), found {}", source, n, vocab.scores.size());
  }
  if (!vocab.types.empty() && vocab.types.size() != n) {
    return make_error("{}: tokenizer token types: expected {} (one per piece), found {}", source, n, vocab.types.size());
  }
  if (vocab.types.empty()) vocab.types.assign(n, TokenType::kNormal);
  for (size_t i = 0; i < n; ++i) {
    if (vocab.pieces[i].size() > static_cast<size_t>(kMaxPieceBytes)) {
      return make_error("{}: tokenizer piece {}: {} bytes, expected at most {}", source, i, vocab.pieces[i].size(),
                        kMaxPieceBytes);
    }
    if (!vocab.scores.empty() && !std::isfinite(vocab.scores[i])) {
      return make_error("{}: tokenizer score {}: expected a finite number, found {}", source, i, vocab.scores[i]);
    }
    const auto t = static_cast<int>(vocab.types[i]);
    if (t < 1 || t > 6) return make_error("{}: tokenizer token type {}: expected 1..6, found {}", source, i, t);
  }
  for (auto [field, id] : {std::pair{"bos", vocab.bos}, {"eos", vocab.eos}, {"eot", vocab.eot}}) {
    if (id < -1 || id >= static_cast<int32_t>(n)) {
      return make_error("{}: tokenizer {} token id: expected -1..{}, found {}", source, field, n - 1, id);
    }
  }
  for (int32_t id : vocab.extra_end_tokens) {
    if (id < 0 || id >= static_cast<int32_t>(n)) {
      return make_error("{}: end token id: expected 0..{}, found {}", source, n - 1, id);
    }
  }
  if (vocab.add_bos && vocab.bos < 0) return make_error("{}: tokenizer: adds BOS but names no BOS token", source);
  if (vocab.kind == TokenizerKind::kSentencePiece && vocab.scores.empty() && vocab.merges.empty()) {
    return make_error("{}: tokenizer: a SentencePiece vocabulary needs scores or merges", source);
  }
  if (vocab.kind == TokenizerKind::kBytePair && vocab.merges.empty()) {
    return make_error("{}: tokenizer merges: a byte-level BPE vocabulary needs merges", source);
  }

  Tokenizer t;
  t.piece_to_id_.reserve(n);
  for (size_t i = 0; i < n; ++i) t.piece_to_id_.try_emplace(vocab.pieces[i], static_cast<int32_t>(i));
  for (size_t r = 0; r < vocab.merges.size(); ++r) {
    const std::string& m = vocab.merges[r];
    const size_t space = m.find(' ', 1);
    if (space == std::string::npos || space + 1 >= m.size()) {
      return make_error("{}: tokenizer merge {}: expected 'left right', found '{}'", source, r, m);
    }
    t.merge_rank_.try_emplace(merge_key(std::string_view(m).substr(0, space), std::string_view(m).substr(space + 1)),
                              static_cast<int>(r));
  }
  std::fill(std::begin(t.byte_pieces_), std::end(t.byte_pieces_), -1);
  for (size_t i = 0; i < n; ++i) {
    unsigned char b;
    if (parse_byte_piece(vocab.pieces[i], &b) && t.byte_pieces_[b] < 0) t.byte_pieces_[b] = static_cast<int32_t>(i);
    if (vocab.types[i] == TokenType::kUserDefined && !vocab.pieces[i].empty()) t.user_defined_.push_back(static_cast<int32_t>(i));
  }
  std::stable_sort(t.user_defined_.begin(), t.user_defined_.end(), [&](int32_t a, int32_t b) {
    return vocab.pieces[a].size() > vocab.pieces[b].size();
  });
  for (const std::string& expr : vocab.pre_regexes) {
    auto re = std::make_unique<Regex>();
    int error = 0;
    PCRE2_SIZE offset = 0;
    re->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(expr.data()), expr.size(), PCRE2_UTF | PCRE2_UCP, &error,
                             &offset, nullptr);
    if (!re->code) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(error, message, sizeof(message));
      return make_error("{}: pre-tokenizer regex at offset {}: {} (in '{}')", source, offset,
                        reinterpret_cast<const char*>(message), expr);
    }
    pcre2_jit_compile(re->code, PCRE2_JIT_COMPLETE);  // optional: falls back to the interpreter
    t.regexes_.push_back(std::move(re));
  }
  t.vocab_ = std::move(vocab);
  return t;
}

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
    return make_error("{}: max_token_length: expected 4 bytes, found a {}-byte file", path, bytes.size());
  }
  if (max_token_length < 1 || max_token_length > kMaxPieceBytes) {
    return make_error("{}: max_token_length: expected 1..{}, found {}", path, kMaxPieceBytes, max_token_length);
  }
  if (vocab_size < 3 + 256) {
    return make_error("{}: vocab_size: expected at least 259 tokens (3 special, 256 bytes), the "
                      "model has {}", path, vocab_size);
  }
  Vocabulary v;
  v.pieces.reserve(vocab_size);
  v.scores.reserve(vocab_size);
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
      return make_error("{}: piece {} length: expected 0..{} (max_token_length), found {}", path, i,
                        max_token_length, length);
    }
    if (bytes.size() - at < static_cast<size_t>(length)) {
      return make_error("{}: piece {}: length {} runs past the end of the file", path, i, length);
    }
    v.pieces.emplace_back(reinterpret_cast<const char*>(bytes.data() + at), length);
    v.scores.push_back(score);
    at += length;
  }
  if (at != bytes.size()) {
    return make_error("{}: {} bytes follow the {} pieces the model's vocab_size calls for; is this "
                      "the tokenizer of another model?", path, bytes.size() - at, vocab_size);
  }
  constexpr int kByteBase = 3;
  for (int b = 0; b < 256; ++b) {
    unsigned char byte;
    if (!parse_byte_piece(v.pieces[kByteBase + b], &byte) || byte != b) {
      return make_error("{}: piece {}: expected the byte piece <0x{:02X}>, found '{}'", path, kByteBase + b, b,
                        v.pieces[kByteBase + b]);
    }
  }
  v.types.assign(vocab_size, TokenType::kNormal);
  v.types[0] = TokenType::kUnknown;
  v.types[kBosToken] = v.types[kEosToken] = TokenType::kControl;
  for (int b = 0; b < 256; ++b) v.types[kByteBase + b] = TokenType::kByte;
  v.bos = kBosToken;
  v.eos = kEosToken;
  v.space_marker = " ";  // llama2.c's export writes SentencePiece's marker as a plain space
  return create(std::move(v), path);
}

std::string_view Tokenizer::kind_name() const {
  return vocab_.kind == TokenizerKind::kSentencePiece ? "sentencepiece" : "byte-level BPE";
}

bool Tokenizer::is_end_token(int32_t token) const {
  if (token < 0) return false;
  if (token == vocab_.eos || token == vocab_.eot) return true;
  return std::find(vocab_.extra_end_tokens.begin(), vocab_.extra_end_tokens.end(), token) !=
         vocab_.extra_end_tokens.end();
}

int32_t Tokenizer::lookup(std::string_view piece) const {
  auto it = piece_to_id_.find(std::string(piece));
  return it == piece_to_id_.end() ? -1 : it->second;
}

int Tokenizer::merge_rank(std::string_view left, std::string_view right) const {
  auto it = merge_rank_.find(merge_key(left, right));
  return it == merge_rank_.end() ? -1 : it->second;
}

void Tokenizer::encode_sentencepiece(std::string_view text, std::vector<int32_t>* out) const {
  const bool by_rank = !vocab_.merges.empty();
  const std::vector<Symbol> symbols = merge_symbols(text, [&](size_t begin, size_t nl, size_t nr) {
    if (by_rank) {
      const int rank = merge_rank(text.substr(begin, nl), text.substr(begin + nl, nr));
      return rank < 0 ? kNoMerge : -static_cast<double>(rank);
    }
    const int32_t id = lookup(text.substr(begin, nl + nr));
    return id < 0 ? kNoMerge : static_cast<double>(vocab_.scores[id]);
  });
  for (const Symbol& s : symbols) {
    const std::string_view piece = text.substr(s.begin, s.size);
    if (const int32_t id = lookup(piece); id >= 0) {
      out->push_back(id);
      continue;
    }
    for (char c : piece) {  // byte fallback; <unk> where the vocabulary has no byte pieces
      const int32_t b = byte_pieces_[static_cast<unsigned char>(c)];
      if (b >= 0) {
        out->push_back(b);
      } else if (const int32_t unk = lookup("<unk>"); unk >= 0) {
        out->push_back(unk);
      }
    }
  }
}

void Tokenizer::encode_bpe_word(std::string_view word, std::vector<int32_t>* out) const {
  if (vocab_.ignore_merges) {
    if (const int32_t id = lookup(word); id >= 0) {
      out->push_back(id);
      return;
    }
  }
  const std::vector<Symbol> symbols = merge_symbols(word, [&](size_t begin, size_t nl, size_t nr) {
    const int rank = merge_rank(word.substr(begin, nl), word.substr(begin + nl, nr));
    return rank < 0 ? kNoMerge : -static_cast<double>(rank);
  });
  for (const Symbol& s : symbols) {
    const std::string_view piece = word.substr(s.begin, s.size);
    if (const int32_t id = lookup(piece); id >= 0) {
      out->push_back(id);
      continue;
    }
    for (char c : piece) {
      if (const int32_t id = lookup(std::string_view(&c, 1)); id >= 0) out->push_back(id);
    }
  }
}

void Tokenizer::encode_fragment(std::string_view text, bool prefix_space, std::vector<int32_t>* out) const {
  if (vocab_.kind == TokenizerKind::kSentencePiece) {
    std::string escaped;
    if (prefix_space && vocab_.add_space_prefix) escaped = vocab_.space_marker;
    for (char c : text) {
      if (c == ' ') {
        escaped += vocab_.space_marker;
      } else {
        escaped.push_back(c);
      }
    }
    encode_sentencepiece(escaped, out);
    return;
  }
  // Byte-level BPE: each expression splits the words the previous one left; both its matches and
  // the text between them are words.
  struct Span {
    size_t begin, end;
  };
  std::vector<Span> words = {{0, text.size()}}, next;
  for (const auto& re : regexes_) {
    // Match data per call, so that one tokenizer encodes from many threads.
    std::unique_ptr<pcre2_match_data, void (*)(pcre2_match_data*)> match(
        pcre2_match_data_create_from_pattern(re->code, nullptr), &pcre2_match_data_free);
    next.clear();
    for (const Span& w : words) {
      const PCRE2_SPTR subject = reinterpret_cast<PCRE2_SPTR>(text.data() + w.begin);
      const size_t len = w.end - w.begin;
      size_t at = 0, last = 0;
      while (at <= len) {
        const int rc = pcre2_match(re->code, subject, len, at, 0, match.get(), nullptr);
        if (rc < 0) break;  // no more matches (or text that is not UTF-8: left as one word)
        const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(match.get());
        const size_t s = ov[0], e = ov[1];
        if (e == s) {  // an empty match: step one character on
          at = s + (s < len ? std::min(utf8_len(static_cast<unsigned char>(text[w.begin + s])), len - s) : 1);
          continue;
        }
        if (s > last) next.push_back({w.begin + last, w.begin + s});
        next.push_back({w.begin + s, w.begin + e});
        last = at = e;
      }
      if (last < len) next.push_back({w.begin + last, w.end});
    }
    std::swap(words, next);
  }
  const ByteMap& bm = byte_map();
  std::string mapped;
  for (const Span& w : words) {
    mapped.clear();
    for (size_t i = w.begin; i < w.end; ++i) mapped += bm.encoded[static_cast<unsigned char>(text[i])];
    encode_bpe_word(mapped, out);
  }
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_bos) const {
  std::vector<int32_t> out;
  if (add_bos && vocab_.add_bos && vocab_.bos >= 0) out.push_back(vocab_.bos);
  // Split out user-defined pieces, longest first; the rest are raw fragments.
  struct Fragment {
    std::string_view text;
    int32_t token;  // -1 for raw text
  };
  std::vector<Fragment> fragments;
  if (!text.empty()) fragments.push_back({text, -1});
  for (int32_t id : user_defined_) {
    const std::string& piece = vocab_.pieces[id];
    std::vector<Fragment> split;
    for (const Fragment& f : fragments) {
      if (f.token >= 0) {
        split.push_back(f);
        continue;
      }
      size_t at = 0;
      for (size_t hit; (hit = f.text.find(piece, at)) != std::string_view::npos; at = hit + piece.size()) {
        if (hit > at) split.push_back({f.text.substr(at, hit - at), -1});
        split.push_back({{}, id});
      }
      if (at < f.text.size()) split.push_back({f.text.substr(at), -1});
    }
    fragments = std::move(split);
  }
  bool after_special = true;  // SentencePiece prefixes a space at the start and after a special piece
  for (const Fragment& f : fragments) {
    if (f.token >= 0) {
      out.push_back(f.token);
      after_special = true;
    } else {
      encode_fragment(f.text, after_special, &out);
      after_special = false;
    }
  }
  return out;
}

std::string Tokenizer::decode(int32_t prev_token, int32_t token) const {
  if (token < 0 || token >= vocab_size()) return {};
  const TokenType type = vocab_.types[token];
  if (type == TokenType::kControl) return {};
  const std::string& piece = vocab_.pieces[token];
  if (type == TokenType::kUserDefined) return piece;
  if (vocab_.kind == TokenizerKind::kSentencePiece) {
    unsigned char byte;
    if (parse_byte_piece(piece, &byte)) return std::string(1, static_cast<char>(byte));
    std::string text;
    const std::string& marker = vocab_.space_marker;
    for (size_t i = 0; i < piece.size();) {
      if (piece.compare(i, marker.size(), marker) == 0) {
        text.push_back(' ');
        i += marker.size();
      } else {
        text.push_back(piece[i++]);
      }
    }
    if (prev_token >= 0 && prev_token == vocab_.bos && vocab_.add_space_prefix && !text.empty() && text[0] == ' ') {
      text.erase(0, 1);
    }
    return text;
  }
  const ByteMap& bm = byte_map();
  std::string text;
  for (size_t i = 0; i < piece.size();) {
    size_t len;
    const uint32_t cp = decode_utf8(piece, i, &len);
    auto it = bm.decoded.find(cp);
    if (it != bm.decoded.end()) {
      text.push_back(static_cast<char>(it->second));
    } else {
      text.append(piece, i, len);
    }
    i += len;
  }
  return text;
}

std::string Tokenizer::decode(const std::vector<int32_t>& tokens) const {
  std::string text;
  for (size_t i = 0; i < tokens.size(); ++i) text += decode(i == 0 ? -1 : tokens[i - 1], tokens[i]);
  return text;
}

}  // namespace kvp
