// libFuzzer target: kvplan serve's request bodies (/v1/completions and /v1/chat/completions) and
// the streamed-text stop matcher. Seeds: tests/fuzz/seeds/serve_request. Accepted requests must
// hold the ranges the parser promises; the matcher must only ever emit a prefix of what it was fed.
#include <cstddef>
#include <cstdint>
#include <string>
#include <variant>

#include "executor/serve/openai.h"
#include "executor/serve/stop_matcher.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvp::serve;
  const std::string body(reinterpret_cast<const char*>(data), size);
  for (const bool chat : {false, true}) {
    auto parsed = parse_completion(body, chat);
    if (auto* e = std::get_if<ApiError>(&parsed)) {
      if (e->status < 400 || e->status > 499 || e->message.empty()) __builtin_trap();
      (void)error_body(*e);  // must serialise whatever bytes the message quotes
      continue;
    }
    const CompletionParams& p = std::get<CompletionParams>(parsed);
    if (p.max_tokens < 1 || !(p.temperature >= 0 && p.temperature <= 2) || !(p.top_p > 0 && p.top_p <= 1)) {
      __builtin_trap();
    }
    if (chat ? p.messages.empty() : !(p.prompt_text || p.prompt_tokens)) __builtin_trap();
    if (p.stop.size() > 4 || (p.keep && !(*p.keep > 0 && *p.keep <= 1))) __builtin_trap();
    // Stream the prompt text through a matcher of the request's stop strings, byte by byte.
    const std::string text = p.prompt_text.value_or(chat ? p.messages[0].content : std::string());
    StopMatcher m(p.stop);
    std::string out;
    for (char c : text) out += m.feed(std::string(1, c));
    out += m.flush();
    if (text.compare(0, out.size(), out) != 0 || m.text() != out) __builtin_trap();
    if (!m.stopped() && out != text) __builtin_trap();
  }
  return 0;
}
