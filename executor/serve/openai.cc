#include "executor/serve/openai.h"

#include <fmt/format.h>

#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>

namespace kvp::serve {

using nlohmann::json;

std::string error_body(const ApiError& e) {
  json err = {{"message", e.message}, {"type", e.type}};
  err["param"] = e.param.empty() ? json(nullptr) : json(e.param);
  err["code"] = e.code.empty() ? json(nullptr) : json(e.code);
  return json{{"error", err}}.dump(-1, ' ', false, json::error_handler_t::replace);
}

namespace {

ApiError bad(std::string param, std::string message) {
  return ApiError{.status = 400, .message = std::move(message), .param = std::move(param)};
}

std::string type_name(const json& v) { return v.is_number_integer() ? "an integer" : std::string(v.type_name()); }

// Reads the fields of one request object; the first error wins.
class Reader {
 public:
  explicit Reader(const json& j) : j_(j) {}
  std::optional<ApiError> error;

  bool has(const char* key) const { return j_.contains(key) && !j_.at(key).is_null(); }

  double number(const char* key, double lo, double hi, bool integer) {
    const json& v = j_.at(key);
    if (!v.is_number() || (integer && !v.is_number_integer())) {
      fail(key, fmt::format("'{}' must be {}, found {}", key, integer ? "an integer" : "a number", type_name(v)));
      return lo;
    }
    const double x = v.get<double>();
    if (!(x >= lo && x <= hi)) fail(key, fmt::format("'{}' must be in [{}, {}], found {}", key, lo, hi, v.dump()));
    return x;
  }
  bool boolean(const char* key) {
    const json& v = j_.at(key);
    if (!v.is_boolean()) fail(key, fmt::format("'{}' must be a boolean, found {}", key, type_name(v)));
    return v.is_boolean() && v.get<bool>();
  }
  std::string string(const char* key) {
    const json& v = j_.at(key);
    if (!v.is_string()) fail(key, fmt::format("'{}' must be a string, found {}", key, type_name(v)));
    return v.is_string() ? v.get<std::string>() : std::string();
  }
  void fail(const std::string& param, std::string message) {
    if (!error) error = bad(param, std::move(message));
  }

 private:
  const json& j_;
};

}  // namespace

std::variant<CompletionParams, ApiError> parse_completion(std::string_view body, bool chat) {
  json j;
  try {
    j = json::parse(body);
  } catch (const json::exception& e) {
    // Malformed JSON and ill-formed UTF-8 inside strings (parse_error 101), numbers out of range
    // (out_of_range 406, e.g. 1e999).
    return ApiError{.status = 400, .message = fmt::format("the body is not valid JSON (or not UTF-8): {}", e.what())};
  }
  if (!j.is_object()) return bad("", fmt::format("the body must be a JSON object, found {}", type_name(j)));
  CompletionParams p;
  Reader r(j);
  if (r.has("model")) p.model = r.string("model");
  if (chat) {
    if (!r.has("messages")) return bad("messages", "'messages' is required");
    const json& m = j.at("messages");
    if (!m.is_array() || m.empty()) return bad("messages", "'messages' must be a non-empty array of {role, content}");
    for (size_t i = 0; i < m.size(); ++i) {
      const std::string where = fmt::format("messages[{}]", i);
      if (!m[i].is_object() || !m[i].contains("role") || !m[i]["role"].is_string() || !m[i].contains("content") ||
          !m[i]["content"].is_string()) {
        return bad(where, fmt::format("'{}' must be an object with string 'role' and 'content'", where));
      }
      ChatMessage msg{m[i]["role"].get<std::string>(), m[i]["content"].get<std::string>()};
      if (msg.role != "system" && msg.role != "user" && msg.role != "assistant") {
        return bad(where + ".role",
                   fmt::format("'{}.role' must be system, user or assistant, found '{}'", where, msg.role));
      }
      p.messages.push_back(std::move(msg));
    }
  } else {
    if (!r.has("prompt")) return bad("prompt", "'prompt' is required (text, or an array of token ids)");
    const json& v = j.at("prompt");
    if (v.is_string()) {
      p.prompt_text = v.get<std::string>();
    } else if (v.is_array() && v.size() == 1 && v[0].is_string()) {
      p.prompt_text = v[0].get<std::string>();
    } else if (v.is_array() && !v.empty() && v[0].is_number()) {
      std::vector<int32_t> ids;
      for (const json& t : v) {
        if (!t.is_number_integer() || t.get<int64_t>() < 0 || t.get<int64_t>() > std::numeric_limits<int32_t>::max()) {
          return bad("prompt", fmt::format("'prompt' token ids must be non-negative integers, found {}", t.dump()));
        }
        ids.push_back(static_cast<int32_t>(t.get<int64_t>()));
      }
      p.prompt_tokens = std::move(ids);
    } else {
      return bad("prompt",
                 "'prompt' must be a string, an array of one string, or a non-empty array of token ids "
                 "(one prompt per request)");
    }
  }
  if (r.has("max_tokens")) p.max_tokens = static_cast<int>(r.number("max_tokens", 1, 1 << 20, true));
  if (chat && r.has("max_completion_tokens")) {
    p.max_tokens = static_cast<int>(r.number("max_completion_tokens", 1, 1 << 20, true));
  }
  if (r.has("temperature")) p.temperature = static_cast<float>(r.number("temperature", 0, 2, false));
  if (r.has("top_p")) {
    p.top_p = static_cast<float>(r.number("top_p", 0, 1, false));
    if (!r.error && p.top_p <= 0) r.fail("top_p", "'top_p' must be in (0, 1], found 0");
  }
  if (r.has("seed")) p.seed = static_cast<uint64_t>(r.number("seed", 0, 9007199254740991.0, true));
  if (r.has("n") && r.number("n", 1, 1, true) != 1) r.fail("n", "'n' must be 1");
  if (r.has("stream")) p.stream = r.boolean("stream");
  if (r.has("ignore_eos")) p.ignore_eos = r.boolean("ignore_eos");
  if (r.has("stream_options")) {
    const json& so = j.at("stream_options");
    if (!so.is_object()) {
      r.fail("stream_options", "'stream_options' must be an object");
    } else if (so.contains("include_usage")) {
      if (!so["include_usage"].is_boolean()) {
        r.fail("stream_options.include_usage", "'stream_options.include_usage' must be a boolean");
      } else {
        p.include_usage = so["include_usage"].get<bool>();
      }
    }
  }
  if (r.has("stop")) {
    const json& s = j.at("stop");
    if (s.is_string()) {
      p.stop.push_back(s.get<std::string>());
    } else if (s.is_array() && s.size() <= 4 &&
               std::all_of(s.begin(), s.end(), [](const json& x) { return x.is_string(); })) {
      for (const json& x : s) p.stop.push_back(x.get<std::string>());
    } else {
      r.fail("stop", "'stop' must be a string or an array of at most 4 strings");
    }
  }
  if (r.has("kvplan")) {
    const json& k = j.at("kvplan");
    if (!k.is_object()) {
      r.fail("kvplan", "'kvplan' must be an object: {\"plan\": name} or {\"keep\": ratio}");
    } else {
      Reader kr(k);
      if (kr.has("plan")) p.plan = kr.string("plan");
      if (kr.has("keep")) {
        p.keep = kr.number("keep", 0, 1, false);
        if (!kr.error && *p.keep <= 0) kr.fail("keep", "'keep' must be in (0, 1], found 0");
      }
      if (!kr.error && p.plan && p.keep) kr.fail("keep", "give 'plan' or 'keep', not both");
      if (kr.error) {
        kr.error->param = "kvplan." + kr.error->param;
        kr.error->message.insert(0, "kvplan: ");
        r.error = r.error ? r.error : kr.error;
      }
    }
  }
  if (r.error) return *r.error;
  return p;
}

}  // namespace kvp::serve
