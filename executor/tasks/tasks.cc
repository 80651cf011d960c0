#include "executor/tasks/tasks.h"

#include <algorithm>
#include <climits>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <sstream>

#include "common/file_util.h"
#include "executor/serve/chat_template.h"

namespace kvp {

std::string_view task_metric_name(TaskMetric m) {
  return m == TaskMetric::kMatchAll ? "string_match_all" : "string_match_part";
}

Result<TaskMetric> parse_task_metric(std::string_view name) {
  if (name == "string_match_all") return TaskMetric::kMatchAll;
  if (name == "string_match_part") return TaskMetric::kMatchPart;
  return make_error("expected string_match_all or string_match_part, found '{}'", name);
}

const std::vector<std::string>& task_families() {
  static const std::vector<std::string> f = {"niah_single", "niah_single_uuid", "niah_multikey", "niah_multivalue",
                                             "niah_multiquery", "vt", "cwe", "fwe"};
  return f;
}

namespace {

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

}  // namespace

double score_answer(TaskMetric metric, const std::vector<std::string>& answers, std::string_view prediction) {
  if (answers.empty()) return 0.0;
  const std::string pred = lower(prediction);
  int found = 0;
  for (const std::string& a : answers) found += pred.find(lower(a)) != std::string::npos ? 1 : 0;
  if (metric == TaskMetric::kMatchPart) return found > 0 ? 1.0 : 0.0;
  return static_cast<double>(found) / static_cast<double>(answers.size());
}

// ---- File ----

std::string tasks_text(const TaskFile& file) {
  const TaskFileHeader& h = file.header;
  nlohmann::ordered_json header = {{"format", "kvplan-tasks"}, {"version", 1},           {"model_fingerprint", h.model_fingerprint},
                                   {"length", h.length},       {"n", h.n},              {"seed", h.seed},
                                   {"haystack", h.haystack},   {"chat_template", h.chat_template},
                                   {"families", h.families}};
  std::string out = header.dump() + "\n";
  for (const TaskInstance& t : file.instances) {
    nlohmann::ordered_json needles = nlohmann::ordered_json::array();
    for (const TaskNeedle& n : t.needles) needles.push_back({{"text", n.text}, {"begin", n.begin}, {"end", n.end}});
    nlohmann::ordered_json j = {{"id", t.id},
                                {"family", t.family},
                                {"length", t.length},
                                {"tokens", t.tokens},
                                {"context_end", t.context_end},
                                {"context", t.context},
                                {"question", t.question},
                                {"answers", t.answers},
                                {"reference", t.reference},
                                {"metric", task_metric_name(t.metric)},
                                {"needles", needles},
                                {"max_answer_tokens", t.max_answer_tokens}};
    out += j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  }
  return out;
}

Status save_tasks(const std::string& path, const TaskFile& file) { return write_file_atomic(path, tasks_text(file)); }

namespace {

// A field of a JSON object, checked for presence, type and (integers) range; errors name the field.
bool fits_int32(const nlohmann::json& v) {
  if (v.is_number_unsigned()) return v.get<uint64_t>() <= uint64_t{INT32_MAX};
  return v.is_number_integer() && v.get<int64_t>() >= INT32_MIN && v.get<int64_t>() <= INT32_MAX;
}

template <typename T>
Result<T> field(const nlohmann::json& j, const std::string& name) {
  if (!j.is_object() || !j.contains(name)) return make_error("field '{}' is missing", name);
  const nlohmann::json& v = j.at(name);
  bool ok = false;
  if constexpr (std::is_same_v<T, std::string>) {
    ok = v.is_string();
  } else if constexpr (std::is_same_v<T, uint64_t>) {
    ok = v.is_number_unsigned();
  } else if constexpr (std::is_integral_v<T>) {
    ok = fits_int32(v);
  } else if constexpr (std::is_same_v<T, std::vector<int32_t>>) {
    ok = v.is_array() && std::all_of(v.begin(), v.end(), [](const nlohmann::json& e) { return fits_int32(e); });
  } else {
    static_assert(std::is_same_v<T, std::vector<std::string>>);
    ok = v.is_array() && std::all_of(v.begin(), v.end(), [](const nlohmann::json& e) { return e.is_string(); });
  }
  if (!ok) {
    return make_error("field '{}': expected {}, found {}", name,
                      std::is_same_v<T, std::string> ? "a string"
                      : std::is_integral_v<T>        ? "an integer"
                      : std::is_same_v<T, std::vector<int32_t>> ? "an array of integers"
                                                               : "an array of strings",
                      v.dump().substr(0, 40));
  }
  return v.get<T>();
}

Result<TaskInstance> parse_instance(const nlohmann::json& j, const ModelConfig& config) {
  if (!j.is_object()) return make_error("expected an object");
  TaskInstance t;
  KVP_ASSIGN_OR_RETURN(t.id, field<std::string>(j, "id"));
  KVP_ASSIGN_OR_RETURN(t.family, field<std::string>(j, "family"));
  KVP_ASSIGN_OR_RETURN(t.length, field<int>(j, "length"));
  KVP_ASSIGN_OR_RETURN(t.tokens, field<std::vector<int32_t>>(j, "tokens"));
  KVP_ASSIGN_OR_RETURN(t.context_end, field<int32_t>(j, "context_end"));
  KVP_ASSIGN_OR_RETURN(t.context, field<std::string>(j, "context"));
  KVP_ASSIGN_OR_RETURN(t.question, field<std::string>(j, "question"));
  KVP_ASSIGN_OR_RETURN(t.answers, field<std::vector<std::string>>(j, "answers"));
  KVP_ASSIGN_OR_RETURN(t.reference, field<std::vector<int32_t>>(j, "reference"));
  KVP_ASSIGN_OR_RETURN(std::string metric, field<std::string>(j, "metric"));
  const Result<TaskMetric> parsed = parse_task_metric(metric);
  if (!parsed.ok()) return parsed.error().with_context("field 'metric'");
  t.metric = *parsed;
  KVP_ASSIGN_OR_RETURN(t.max_answer_tokens, field<int>(j, "max_answer_tokens"));
  if (!j.contains("needles") || !j["needles"].is_array()) return make_error("field 'needles': expected an array");
  const int n = static_cast<int>(t.tokens.size());
  if (n == 0) return make_error("field 'tokens': empty");
  if (t.answers.empty()) return make_error("field 'answers': empty");
  if (t.context_end <= 0 || t.context_end > n) {
    return make_error("field 'context_end': {} is outside the prompt's {} tokens", t.context_end, n);
  }
  for (size_t i = 0; i < t.tokens.size(); ++i) {
    if (t.tokens[i] < 0 || t.tokens[i] >= config.vocab_size) {
      return make_error("field 'tokens': tokens[{}] = {} is outside the vocabulary of {}", i, t.tokens[i], config.vocab_size);
    }
  }
  for (size_t i = 0; i < t.reference.size(); ++i) {
    if (t.reference[i] < 0 || t.reference[i] >= config.vocab_size) {
      return make_error("field 'reference': reference[{}] = {} is outside the vocabulary of {}", i, t.reference[i],
                        config.vocab_size);
    }
  }
  if (t.max_answer_tokens < 1) return make_error("field 'max_answer_tokens': {} is below 1", t.max_answer_tokens);
  const int64_t need = int64_t{n} + std::max<int64_t>(t.max_answer_tokens, static_cast<int64_t>(t.reference.size()));
  if (need > config.seq_len) {
    return make_error("field 'tokens': {} prompt tokens and up to {} answer tokens exceed the model's {} positions", n,
                      need - n, config.seq_len);
  }
  for (size_t i = 0; i < j["needles"].size(); ++i) {
    const nlohmann::json& nj = j["needles"][i];
    TaskNeedle needle;
    auto text = field<std::string>(nj, "text");
    auto begin = field<int32_t>(nj, "begin");
    auto end = field<int32_t>(nj, "end");
    for (const Status& s : {text.status(), begin.status(), end.status()}) {
      if (!s.ok()) return s.error().with_context(fmt::format("needles[{}]", i));
    }
    needle = TaskNeedle{.text = *text, .begin = *begin, .end = *end};
    if (needle.begin < 0 || needle.begin >= needle.end || needle.end > t.context_end) {
      return make_error("needles[{}]: tokens [{}, {}) lie outside the context [0, {})", i, needle.begin, needle.end,
                        t.context_end);
    }
    t.needles.push_back(std::move(needle));
  }
  return t;
}

}  // namespace

Result<TaskFile> load_tasks(const std::string& path, const ModelConfig& config, const std::string& model_fingerprint) {
  KVP_ASSIGN_OR_RETURN(const std::string text, read_file_text(path));
  return parse_tasks(text, path, config, model_fingerprint);
}

Result<TaskFile> parse_tasks(const std::string& text, const std::string& path, const ModelConfig& config,
                             const std::string& model_fingerprint) {
  std::istringstream in(text);
  std::string line;
  TaskFile file;
  if (!std::getline(in, line)) return make_error("{}: empty; expected a kvplan-tasks header line", path);
  const nlohmann::json h = nlohmann::json::parse(line, nullptr, false);
  if (h.is_discarded() || !h.is_object() || !h.contains("format") || !h["format"].is_string() || h.value("format", std::string()) != "kvplan-tasks") {
    return make_error("{}: line 1: not a kvplan-tasks header (kvplan tasks writes one)", path);
  }
  auto header_field = [&](auto* out, const char* name) -> Status {
    using T = std::remove_pointer_t<decltype(out)>;
    auto v = field<T>(h, name);
    if (!v.ok()) return v.error().with_context(fmt::format("{}: line 1", path));
    *out = *v;
    return ok_status();
  };
  TaskFileHeader& fh = file.header;
  KVP_RETURN_IF_ERROR(header_field(&fh.model_fingerprint, "model_fingerprint"));
  KVP_RETURN_IF_ERROR(header_field(&fh.length, "length"));
  KVP_RETURN_IF_ERROR(header_field(&fh.n, "n"));
  KVP_RETURN_IF_ERROR(header_field(&fh.seed, "seed"));
  KVP_RETURN_IF_ERROR(header_field(&fh.haystack, "haystack"));
  KVP_RETURN_IF_ERROR(header_field(&fh.chat_template, "chat_template"));
  KVP_RETURN_IF_ERROR(header_field(&fh.families, "families"));
  if (!model_fingerprint.empty() && fh.model_fingerprint != model_fingerprint) {
    return make_error("{}: line 1: field 'model_fingerprint': the tasks were made for model {}, not this one ({}); "
                      "their tokens are another vocabulary's",
                      path, fh.model_fingerprint.substr(0, 12), model_fingerprint.substr(0, 12));
  }
  for (int line_no = 2; std::getline(in, line); ++line_no) {
    if (line.empty()) continue;
    const nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded()) return make_error("{}: line {}: not valid JSON", path, line_no);
    auto t = parse_instance(j, config);
    if (!t.ok()) return t.error().with_context(fmt::format("{}: line {}", path, line_no));
    file.instances.push_back(std::move(t).value());
  }
  if (file.instances.empty()) return make_error("{}: no instances after the header", path);
  return file;
}

// ---- Generation ----

namespace {

constexpr std::string_view kFiller =
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.";

const std::vector<std::string_view>& adjectives() {
  static const std::vector<std::string_view> w = {
      "abundant", "agreeable", "ancient", "brave",    "bright",   "calm",    "careful",  "cheerful", "clever",
      "curious",  "daring",    "eager",   "elegant",  "faithful", "fancy",   "gentle",   "gifted",   "glorious",
      "graceful", "happy",     "helpful", "honest",   "humble",   "jolly",   "kind",     "lively",   "lucky",
      "mighty",   "modern",    "nimble",  "noble",    "polite",   "proud",   "quiet",    "rapid",    "rare",
      "silent",   "silver",    "smooth",  "spicy",    "steady",   "swift",   "tender",   "tidy",     "vivid",
      "warm",     "wise",      "witty",   "wooden",   "zealous"};
  return w;
}

const std::vector<std::string_view>& nouns() {
  static const std::vector<std::string_view> w = {
      "anchor",  "apple",   "arrow",   "badger",  "basket", "beacon",  "bicycle", "blanket", "bridge", "butter",
      "candle",  "canyon",  "castle",  "cedar",   "comet",  "copper",  "dolphin", "dragon",  "falcon", "feather",
      "forest",  "garden",  "glacier", "harbor",  "helmet", "island",  "jacket",  "kettle",  "ladder", "lantern",
      "meadow",  "mirror",  "mountain", "needle", "orchid", "otter",   "pepper",  "pillow",  "planet", "pocket",
      "quartz",  "rabbit",  "river",   "saddle",  "shadow", "spider",  "thunder", "tulip",   "violin", "walnut"};
  return w;
}

// Pronounceable made-up words (cwe and fwe): 2-3 consonant-vowel syllables.
std::string pseudo_word(std::mt19937_64& rng) {
  static constexpr std::string_view kC = "bdfgklmnprstvz", kV = "aeiou";
  const int syllables = 2 + static_cast<int>(rng() % 2);
  std::string w;
  for (int s = 0; s < syllables; ++s) {
    w += kC[rng() % kC.size()];
    w += kV[rng() % kV.size()];
  }
  return w;
}

std::string number7(std::mt19937_64& rng) { return std::to_string(1000000 + rng() % 9000000); }

std::string uuid_like(std::mt19937_64& rng) {
  static constexpr std::string_view kHex = "0123456789abcdef";
  std::string s;
  for (int len : {8, 4, 4, 4, 12}) {
    if (!s.empty()) s += '-';
    for (int i = 0; i < len; ++i) s += kHex[rng() % 16];
  }
  return s;
}

std::string key_word(std::mt19937_64& rng) {
  return std::string(adjectives()[rng() % adjectives().size()]) + "-" + std::string(nouns()[rng() % nouns().size()]);
}

// The frame of a user message under template `chat` (a serve::ChatTemplate's name, or "none": BOS
// alone where the vocabulary adds one).
Result<serve::ChatFrame> chat_frame(const Tokenizer& tok, const std::string& chat) {
  if (chat == "none") {
    serve::ChatFrame f;
    if (tok.vocabulary().add_bos && tok.bos() >= 0) f.open.push_back(tok.bos());
    return f;
  }
  const std::optional<serve::ChatTemplate> t = serve::parse_chat_template(chat);
  if (!t) return make_error("chat template '{}' unknown (chatml, llama3, llama2 or none)", chat);
  auto frame = serve::chat_frame(*t, tok);
  if (const auto* e = std::get_if<serve::ApiError>(&frame)) return make_error("{}", e->message);
  return std::get<serve::ChatFrame>(std::move(frame));
}

// An instance under construction: token segments appended in order, needle spans recorded.
class Builder {
 public:
  Builder(const Tokenizer& tok) : tok_(tok) {}
  void ids(const std::vector<int32_t>& v) { tokens.insert(tokens.end(), v.begin(), v.end()); }
  void text(std::string_view s) {
    ids(tok_.encode(s, false));
    if (in_context) context += s;
  }
  void needle(const std::string& sentence, const std::vector<int32_t>& ids_of) {
    needles.push_back(TaskNeedle{.text = sentence, .begin = static_cast<int32_t>(tokens.size()),
                                 .end = static_cast<int32_t>(tokens.size() + ids_of.size())});
    ids(ids_of);
    context += sentence;
  }
  std::vector<int32_t> tokens;
  std::vector<TaskNeedle> needles;
  std::string context;
  bool in_context = true;

 private:
  const Tokenizer& tok_;
};

// The haystack: units of tokens (a filler paragraph, or a sentence of the corpus) that needles go
// between, with their text.
struct Haystack {
  std::vector<std::vector<int32_t>> units;
  std::vector<std::string> texts;
  size_t next = 0;  // the corpus's next unit (instances take consecutive stretches)
};

Haystack filler_haystack(const Tokenizer& tok) {
  Haystack h;
  h.units.push_back(tok.encode(" " + std::string(kFiller), false));
  h.texts.push_back(" " + std::string(kFiller));
  return h;
}

// The corpus cut into sentences: a unit ends after a token whose text ends a sentence or a line.
Result<Haystack> corpus_haystack(const Tokenizer& tok, const Corpus& corpus) {
  Haystack h;
  for (const auto& seq : corpus.sequences) {
    std::vector<int32_t> unit;
    std::string text;
    int32_t prev = -1;
    for (int32_t t : seq) {
      if (t == tok.bos() || tok.is_end_token(t)) continue;
      const std::string piece = tok.decode(prev, t);
      prev = t;
      unit.push_back(t);
      text += piece;
      if (!piece.empty() && (piece.back() == '.' || piece.back() == '\n' || piece.back() == '!' || piece.back() == '?')) {
        h.units.push_back(std::move(unit));
        h.texts.push_back(std::move(text));
        unit.clear(), text.clear();
      }
    }
  }
  if (h.units.size() < 8) return make_error("--corpus: {} holds too few sentences for a haystack", corpus.source);
  return h;
}

// Fills `b` with haystack units up to `budget` tokens, with `needles` (sentence, tokens) between
// units at the depths `depths` (shares of the haystack, ascending).
void fill_haystack(Builder& b, Haystack& h, int budget, const std::vector<std::pair<std::string, std::vector<int32_t>>>& needles,
                   const std::vector<double>& depths) {
  int needle_tokens = 0;
  for (const auto& n : needles) needle_tokens += static_cast<int>(n.second.size());
  const int hay = std::max(0, budget - needle_tokens);
  // The units that fit, then where each needle goes (after unit k).
  std::vector<size_t> picked;
  int used = 0;
  for (;;) {  // every unit holds a token, so this ends
    const size_t u = h.next % h.units.size();
    if (used + static_cast<int>(h.units[u].size()) > hay) break;
    used += static_cast<int>(h.units[u].size());
    picked.push_back(u);
    ++h.next;
  }
  size_t ni = 0;
  for (size_t k = 0; k <= picked.size(); ++k) {
    while (ni < needles.size() && static_cast<size_t>(depths[ni] * static_cast<double>(picked.size()) + 0.5) <= k) {
      b.needle(needles[ni].first, needles[ni].second);
      ++ni;
    }
    if (k < picked.size()) {
      b.ids(h.units[picked[k]]);
      b.context += h.texts[picked[k]];
    }
  }
}

struct Family {
  std::string intro, question, answer_prefix;
  std::vector<std::string> answers;
  std::vector<std::pair<std::string, std::vector<int32_t>>> needles;  // for niah and vt
  std::vector<double> depths;
  TaskMetric metric = TaskMetric::kMatchAll;
  int max_answer_tokens = 24;
  std::string reference_text;
};

std::vector<double> random_depths(std::mt19937_64& rng, size_t n) {
  std::vector<double> d(n);
  for (double& x : d) x = static_cast<double>(rng() % 1001) / 1000.0;
  std::sort(d.begin(), d.end());
  return d;
}

std::string joined(const std::vector<std::string>& v, std::string_view sep) {
  std::string out;
  for (size_t i = 0; i < v.size(); ++i) out += (i ? std::string(sep) : "") + v[i];
  return out;
}

Family niah(const Tokenizer& tok, std::mt19937_64& rng, const std::string& family) {
  Family f;
  const bool uuid = family == "niah_single_uuid";
  const std::string kind = uuid ? "uuids" : "numbers";
  auto value = [&] { return uuid ? uuid_like(rng) : number7(rng); };
  auto needle = [&](const std::string& key, const std::string& v) {
    const std::string s = " One of the special magic " + kind + " for " + key + " is: " + v + ".";
    return std::pair{s, tok.encode(s, false)};
  };
  f.intro = "Some special magic " + kind + " are hidden within the following text. Make sure to memorize it. I will "
            "quiz you about the " + kind + " afterwards.\n";
  std::vector<std::string> keys;
  while (keys.size() < 4) {
    const std::string k = key_word(rng);
    if (std::find(keys.begin(), keys.end(), k) == keys.end()) keys.push_back(k);
  }
  std::string query = keys[0];
  if (family == "niah_single" || family == "niah_single_uuid") {
    f.answers = {value()};
    f.needles = {needle(keys[0], f.answers[0])};
  } else if (family == "niah_multikey") {
    f.answers = {value()};
    f.needles = {needle(keys[0], f.answers[0])};
    for (int i = 1; i < 4; ++i) f.needles.push_back(needle(keys[i], value()));
    std::shuffle(f.needles.begin(), f.needles.end(), rng);
  } else if (family == "niah_multivalue") {
    for (int i = 0; i < 4; ++i) {
      f.answers.push_back(value());
      f.needles.push_back(needle(keys[0], f.answers.back()));
    }
  } else {  // niah_multiquery
    for (int i = 0; i < 4; ++i) {
      f.answers.push_back(value());
      f.needles.push_back(needle(keys[i], f.answers.back()));
    }
    query = joined({keys[0], keys[1], keys[2]}, ", ") + ", and " + keys[3];
  }
  const bool many = f.answers.size() > 1;
  f.question = "\nWhat " + std::string(many ? "are all" : "is") + " the special magic " + (many ? kind : kind.substr(0, kind.size() - 1)) +
               " for " + query + " mentioned in the provided text?";
  f.answer_prefix = "The special magic " + (many ? kind : kind.substr(0, kind.size() - 1)) + " for " + query +
                    " mentioned in the provided text " + (many ? "are" : "is");
  f.reference_text = " " + joined(f.answers, ", ") + ".";
  f.depths = random_depths(rng, f.needles.size());
  f.max_answer_tokens = uuid ? 40 : many ? 48 : 16;
  return f;
}

Family variable_tracking(const Tokenizer& tok, std::mt19937_64& rng) {
  Family f;
  const std::string value = std::to_string(10000 + rng() % 90000);
  std::vector<std::string> names;
  while (names.size() < 5) {
    std::string n;
    for (int i = 0; i < 5; ++i) n += static_cast<char>('A' + rng() % 26);
    if (std::find(names.begin(), names.end(), n) == names.end()) names.push_back(n);
  }
  for (size_t i = 0; i < names.size(); ++i) {
    const std::string s = " VAR " + names[i] + " = " + (i == 0 ? value : "VAR " + names[i - 1]) + ".";
    f.needles.push_back({s, tok.encode(s, false)});
  }
  f.answers = names;
  f.intro = "Memorize and track the chain(s) of variable assignment hidden in the following text.\n";
  f.question = "\nQuestion: Find all variables that are assigned the value " + value + " in the text above.";
  f.answer_prefix = "Answer: According to the chain(s) of variable assignment in the text above, 5 variables are "
                    "assigned the value " + value + ", they are:";
  f.reference_text = " " + joined(names, ", ") + ".";
  // Evenly spread, in chain order (RULER's depths for one chain).
  for (size_t i = 0; i < names.size(); ++i) f.depths.push_back((static_cast<double>(i) + 0.5) / names.size());
  f.max_answer_tokens = 40;
  return f;
}

}  // namespace

Result<std::vector<TaskInstance>> generate_tasks(const Tokenizer& tok, const std::string& chat, const TaskGenOptions& options) {
  std::vector<std::string> families = options.families.empty() ? task_families() : options.families;
  for (const std::string& f : families) {
    if (std::find(task_families().begin(), task_families().end(), f) == task_families().end()) {
      return make_error("--families: unknown family '{}' (known: {})", f, joined(task_families(), ", "));
    }
  }
  KVP_ASSIGN_OR_RETURN(const serve::ChatFrame frame, chat_frame(tok, chat));
  Haystack hay;
  if (options.haystack == "filler") {
    hay = filler_haystack(tok);
  } else if (options.haystack == "corpus") {
    if (!options.corpus) return make_error("--haystack corpus needs --corpus (a kvplan corpus file of the model's text)");
    KVP_ASSIGN_OR_RETURN(hay, corpus_haystack(tok, *options.corpus));
  } else {
    return make_error("--haystack: expected filler or corpus, found '{}'", options.haystack);
  }
  Haystack filler = filler_haystack(tok);  // vt's, whatever --haystack says (one unit: `next` changes nothing)
  std::vector<TaskInstance> out;
  for (const std::string& family : families) {
    for (int i = 0; i < options.n; ++i) {
      // Each family's instance i from its own stream: the same whichever families are chosen.
      std::seed_seq seq{options.seed, static_cast<uint64_t>(std::hash<std::string>{}(family)), static_cast<uint64_t>(i)};
      std::mt19937_64 rng(seq);
      TaskInstance t;
      t.id = fmt::format("{}-{}-{}", family, options.length, i);
      t.family = family;
      t.length = options.length;
      Builder b(tok);
      b.ids(frame.open);
      Family f;
      std::vector<int32_t> body;  // cwe and fwe: the word list, built here
      if (family.starts_with("niah")) {
        f = niah(tok, rng, family);
      } else if (family == "vt") {
        f = variable_tracking(tok, rng);
      } else {
        f.metric = TaskMetric::kMatchAll;
        f.max_answer_tokens = family == "cwe" ? 64 : 32;
      }
      // What the question part costs, so the context can take the rest.
      Builder q(tok);
      const bool cwe = family == "cwe", fwe = family == "fwe";
      if (cwe) {
        f.intro = "Below is a numbered list of words. In these words, some appear more often than others. Memorize "
                  "the ones that appear most often.\n";
        f.question = "\nQuestion: What are the 10 most common words in the above list?";
        f.answer_prefix = "Answer: The top 10 words that appear most often in the list are:";
      } else if (fwe) {
        f.intro = "Read the following coded text and track the frequency of each coded word. Find the three most "
                  "frequently appeared coded words.\n";
        f.question = "\nQuestion: Do not provide any explanation. Please ignore the dots '....'. What are the three "
                     "most frequently appeared words in the above coded text?";
        f.answer_prefix = "Answer: According to the coded text above, the three most frequently appeared words are:";
      }
      q.text(f.question);
      q.ids(frame.close);
      q.text(f.answer_prefix);
      b.text(f.intro);
      const int budget = options.length - static_cast<int>(b.tokens.size() + q.tokens.size()) - 1;
      int needle_tokens = 0;
      for (const auto& nd : f.needles) needle_tokens += static_cast<int>(nd.second.size());
      if (budget < 64 + needle_tokens) {
        return make_error("--length: {} tokens leave no room for a {} context after its question and template", options.length,
                          family);
      }
      if (cwe || fwe) {
        // cwe: 10 words 30 times each among words seen 3 times; fwe: words drawn from Zipf(2) over
        // 512 coded words, the three most frequent the answer. Items until the budget is met.
        std::vector<std::string> common, rare;
        std::set<std::string> seen;
        auto fresh = [&] {
          for (;;) {
            std::string w = pseudo_word(rng);
            if (seen.insert(w).second) return w;
          }
        };
        std::vector<std::string> words;
        std::map<std::string, int> counts;
        if (cwe) {
          // RULER's frequencies (10 words 30 times, the rest 3 times) where the list has room for
          // them; a shorter list repeats the common words less (at least 6 times), so that the
          // list that fits still holds every common word more often than any other.
          for (int k = 0; k < 10; ++k) common.push_back(fresh());
          const int per_item = static_cast<int>(tok.encode(" 100. " + common[0], false).size());
          const int items = budget / std::max(1, per_item);
          const int freq = std::clamp((items - 30) / 20, 6, 30);
          for (int k = 0; k < std::max(0, (items - 10 * freq) / 3); ++k) rare.push_back(fresh());
          for (int r = 0; r < freq; ++r) words.insert(words.end(), common.begin(), common.end());
          for (const std::string& w : rare) {
            for (int r = 0; r < 3; ++r) words.push_back(w);
          }
          std::shuffle(words.begin(), words.end(), rng);
        } else {
          std::vector<std::string> vocab;
          for (int k = 0; k < 512; ++k) vocab.push_back(fresh());
          std::vector<double> weights(vocab.size());
          for (size_t k = 0; k < vocab.size(); ++k) weights[k] = 1.0 / ((k + 1.0) * (k + 1.0));
          std::discrete_distribution<size_t> zipf(weights.begin(), weights.end());
          for (int k = 0; k < options.length; ++k) words.push_back(vocab[zipf(rng)]);
        }
        // Add items while they fit; the common words' spans are the "needles".
        int used = 0;
        std::vector<std::pair<std::string, std::vector<int32_t>>> items;
        for (size_t k = 0; k < words.size(); ++k) {
          const std::string item = cwe ? fmt::format(" {}. {}", k + 1, words[k]) : " " + words[k];
          std::vector<int32_t> ids = tok.encode(item, false);
          if (used + static_cast<int>(ids.size()) > budget) break;
          used += static_cast<int>(ids.size());
          items.emplace_back(item, std::move(ids));
          ++counts[words[k]];
        }
        if (cwe) {
          f.answers = common;
        } else {
          std::vector<std::pair<int, std::string>> ranked;
          for (const auto& [w, c] : counts) ranked.emplace_back(-c, w);
          std::sort(ranked.begin(), ranked.end());
          for (size_t k = 0; k < 3 && k < ranked.size(); ++k) f.answers.push_back(ranked[k].second);
        }
        for (size_t k = 0; k < items.size(); ++k) {
          const std::string word = cwe ? items[k].first.substr(items[k].first.find(". ") + 2) : items[k].first.substr(1);
          if (std::find(f.answers.begin(), f.answers.end(), word) != f.answers.end()) {
            b.needle(items[k].first, items[k].second);
          } else {
            b.ids(items[k].second);
            b.context += items[k].first;
          }
        }
        f.reference_text = " " + joined(f.answers, ", ") + ".";
      } else {
        // RULER's needle and vt haystacks; vt takes the filler noise.
        fill_haystack(b, family == "vt" ? filler : hay, budget, f.needles, f.depths);
      }
      t.context_end = static_cast<int32_t>(b.tokens.size());
      t.context = b.context;
      b.in_context = false;
      b.text(f.question);
      b.ids(frame.close);
      b.text(f.answer_prefix);
      t.tokens = std::move(b.tokens);
      t.needles = std::move(b.needles);
      t.question = f.question;
      t.answers = f.answers;
      t.metric = f.metric;
      t.max_answer_tokens = f.max_answer_tokens;
      t.reference = tok.encode(f.reference_text, false);
      if (chat == "chatml") t.reference.push_back(tok.find_piece("<|im_end|>"));
      if (chat == "llama3") t.reference.push_back(tok.find_piece("<|eot_id|>"));
      KVP_CHECK(static_cast<int>(t.tokens.size()) <= options.length, "{}: {} tokens past --length {}", t.id,
                t.tokens.size(), options.length);
      out.push_back(std::move(t));
    }
  }
  return out;
}

}  // namespace kvp
