// Streams a completion's text while watching for stop strings (OpenAI's `stop`): text that may be
// the start of a stop string, or an unfinished UTF-8 character, is held back until the next piece
// settles it, so a client never sees text that a later stop string takes back.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace kvp::serve {

class StopMatcher {
 public:
  explicit StopMatcher(std::vector<std::string> stops);

  // Adds a generated piece; returns the text now safe to emit (possibly empty). Once a stop string
  // appears, the text before it is returned, stopped() is true, and later pieces are ignored.
  std::string feed(std::string_view piece);
  // The end of generation without a stop: whatever is held back.
  std::string flush();
  bool stopped() const { return stopped_; }
  // Everything emitted so far.
  const std::string& text() const { return text_; }

 private:
  std::string emit(size_t n);
  std::vector<std::string> stops_;
  std::string pending_;
  std::string text_;
  bool stopped_ = false;
};

// Bytes of `s` up to the end of its last complete UTF-8 character (a trailing lead byte and its
// continuation bytes that do not finish a character are left out).
size_t complete_utf8_prefix(std::string_view s);

}  // namespace kvp::serve
