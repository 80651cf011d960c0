#include "executor/corpus.h"

#include <nlohmann/json.hpp>

#include <sstream>

#include "common/file_util.h"
#include "executor/generator.h"

namespace kvp {

Corpus sample_corpus(Decoder& decoder, const SampleCorpusOptions& options,
                     const std::function<void(int done)>& progress) {
  KVP_CHECK(options.n_sequences >= 1 && options.length >= 2 &&
            options.length <= decoder.config().seq_len && options.batch >= 1);
  Corpus corpus;
  corpus.source = "sampled";
  corpus.sampled = true;
  for (int first = 0; first < options.n_sequences; first += options.batch) {
    const int n = std::min(options.batch, options.n_sequences - first);
    GenerateOptions g{.steps = options.length - 1, .sampler = options.sampler, .stop_at_eos = false};
    g.sampler.seed = options.sampler.seed + static_cast<uint64_t>(first);
    const std::vector<std::vector<int32_t>> prompts(n, std::vector<int32_t>{options.start_token});
    const std::vector<KvBudgets> budgets(n, full_cache_budgets(decoder.config(), g.steps));
    GenerateResult r = generate(decoder, prompts, budgets, g);
    for (auto& seq : r.tokens) corpus.sequences.push_back(std::move(seq));
    if (progress) progress(first + n);
  }
  return corpus;
}

Status save_corpus(const std::string& path, const Corpus& corpus, const Tokenizer& tokenizer,
                   const CorpusFileInfo& info) {
  std::string out;
  nlohmann::ordered_json header = {
      {"format", "kvplan-corpus"},
      {"version", 1},
      {"model_fingerprint", info.model_fingerprint},
      {"n_sequences", corpus.sequences.size()},
      {"length", info.options.length},
      {"seed", info.options.sampler.seed},
      // Floats as the user typed them (0.95, not 0.949999988).
      {"temperature", std::stod(fmt::format("{}", info.options.sampler.temperature))},
      {"top_p", std::stod(fmt::format("{}", info.options.sampler.top_p))},
  };
  out += header.dump() + "\n";
  for (const auto& seq : corpus.sequences) {
    nlohmann::ordered_json line = {{"tokens", seq}, {"text", tokenizer.decode(seq)}};
    // Text decoded from sampled tokens may hold bytes that are not valid UTF-8.
    out += line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  }
  return write_file_atomic(path, out);
}

namespace {

Result<Corpus> parse_corpus_file(const std::string& path, const std::string& text,
                                 const Tokenizer& tokenizer, int max_len) {
  Corpus corpus;
  corpus.source = path;
  corpus.sampled = true;
  std::istringstream in(text);
  std::string line;
  std::getline(in, line);  // header, already recognised
  for (int line_no = 2; std::getline(in, line); ++line_no) {
    if (line.empty()) continue;
    const nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.is_object() || !j.contains("tokens") || !j["tokens"].is_array()) {
      return make_error("{}: line {}: expected an object with a \"tokens\" list", path, line_no);
    }
    std::vector<int32_t> seq;
    for (const auto& t : j["tokens"]) {
      if (!t.is_number_integer() || t.get<int64_t>() < 0 || t.get<int64_t>() >= tokenizer.vocab_size()) {
        return make_error("{}: line {}: tokens: expected ids in 0..{}, found {}", path, line_no,
                          tokenizer.vocab_size() - 1, t.dump());
      }
      seq.push_back(t.get<int32_t>());
    }
    if (seq.size() < 2 || static_cast<int>(seq.size()) > max_len) {
      return make_error("{}: line {}: tokens: expected 2..{} ids (the model's seq_len), found {}",
                        path, line_no, max_len, seq.size());
    }
    corpus.sequences.push_back(std::move(seq));
  }
  if (corpus.sequences.empty()) return make_error("{}: holds no sequences", path);
  return corpus;
}

Corpus split_plain_text(const std::string& path, const std::string& text, const Tokenizer& tokenizer,
                        int max_len) {
  Corpus corpus;
  corpus.source = path;
  std::vector<std::string> docs(1);
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    const bool separator = line.find_first_not_of(" \t\r") == std::string::npos || line == "<|endoftext|>";
    if (separator) {
      if (!docs.back().empty()) docs.emplace_back();
      continue;
    }
    if (!docs.back().empty()) docs.back() += "\n";
    docs.back() += line;
  }
  for (const std::string& doc : docs) {
    if (doc.empty()) continue;
    const std::vector<int32_t> ids = tokenizer.encode(doc);
    for (size_t at = 0; at < ids.size(); at += static_cast<size_t>(max_len)) {
      const size_t n = std::min(ids.size() - at, static_cast<size_t>(max_len));
      if (n >= 2) corpus.sequences.emplace_back(ids.begin() + at, ids.begin() + at + n);
    }
  }
  return corpus;
}

}  // namespace

Result<Corpus> load_corpus(const std::string& path, const Tokenizer& tokenizer, int max_len) {
  KVP_ASSIGN_OR_RETURN(std::string text, read_file_text(path));
  const std::string first_line = text.substr(0, text.find('\n'));
  const nlohmann::json header = nlohmann::json::parse(first_line, nullptr, false);
  if (!header.is_discarded() && header.is_object() && header.value("format", "") == "kvplan-corpus") {
    if (header.value("version", 0) != 1) {
      return make_error("{}: version: this kvplan reads corpus version 1, found {}", path,
                        header.value("version", 0));
    }
    return parse_corpus_file(path, text, tokenizer, max_len);
  }
  Corpus corpus = split_plain_text(path, text, tokenizer, max_len);
  if (corpus.sequences.empty()) {
    return make_error("{}: no text to make sequences of (at least 2 tokens each)", path);
  }
  return corpus;
}

}  // namespace kvp
