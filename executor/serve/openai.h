// The OpenAI-style request bodies kvplan serve accepts, parsed and checked before anything runs,
// and its error objects. Parsing is separate from the network so that it can be fuzzed
// (tests/fuzz/serve_request_fuzz.cc) and tested on strings.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

namespace kvp::serve {

// An error answered to a client: {"error": {"message", "type", "param", "code"}} with `status`.
struct ApiError {
  int status = 400;
  std::string message;
  std::string param;  // the request field at fault, or empty
  std::string type = "invalid_request_error";
  std::string code;  // e.g. "context_length_exceeded", or empty
};
std::string error_body(const ApiError& e);

struct ChatMessage {
  std::string role;  // system, user, assistant
  std::string content;
};

// POST /v1/completions and /v1/chat/completions, as given.
struct CompletionParams {
  std::optional<std::string> model;
  std::optional<std::string> prompt_text;             // completions: "prompt" as text
  std::optional<std::vector<int32_t>> prompt_tokens;  // or as token ids
  std::vector<ChatMessage> messages;                  // chat completions
  int max_tokens = 16;
  float temperature = 1.0f;
  float top_p = 1.0f;
  std::optional<uint64_t> seed;
  std::vector<std::string> stop;
  bool ignore_eos = false;  // vLLM's extension: generate max_tokens whatever the end tokens
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  // "kvplan": {"plan": name} or {"keep": ratio}: the request's own budgets.
  std::optional<std::string> plan;
  std::optional<double> keep;
};

// Parses a request body; `chat` for /v1/chat/completions (messages instead of prompt). Unknown
// fields are ignored, as OpenAI's clients send many; known ones of the wrong type or range are
// errors naming the field.
std::variant<CompletionParams, ApiError> parse_completion(std::string_view body, bool chat);

}  // namespace kvp::serve
