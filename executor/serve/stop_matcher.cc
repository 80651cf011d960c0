#include "executor/serve/stop_matcher.h"

#include <algorithm>

namespace kvp::serve {

StopMatcher::StopMatcher(std::vector<std::string> stops) : stops_(std::move(stops)) {
  std::erase_if(stops_, [](const std::string& s) { return s.empty(); });
}

size_t complete_utf8_prefix(std::string_view s) {
  const size_t n = s.size();
  // The last lead byte among the final four bytes, and the length its character needs.
  for (size_t back = 1; back <= 4 && back <= n; ++back) {
    const auto c = static_cast<unsigned char>(s[n - back]);
    if ((c & 0xC0) == 0x80) continue;  // a continuation byte
    const size_t len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 1;
    return back < len ? n - back : n;  // unfinished: cut before its lead byte
  }
  return n;  // continuation bytes only: not UTF-8 that more bytes could finish
}

std::string StopMatcher::emit(size_t n) {
  std::string out = pending_.substr(0, n);
  pending_.erase(0, n);
  text_ += out;
  return out;
}

std::string StopMatcher::feed(std::string_view piece) {
  if (stopped_) return {};
  pending_ += piece;
  size_t first = std::string::npos;
  for (const std::string& s : stops_) first = std::min(first, pending_.find(s));
  if (first != std::string::npos) {
    stopped_ = true;
    std::string out = emit(first);
    pending_.clear();
    return out;
  }
  // Hold back the longest tail of pending_ that begins some stop string.
  size_t hold = 0;
  for (const std::string& s : stops_) {
    for (size_t n = std::min(s.size() - 1, pending_.size()); n > hold; --n) {
      if (std::string_view(pending_).substr(pending_.size() - n) == std::string_view(s).substr(0, n)) {
        hold = n;
        break;
      }
    }
  }
  const size_t safe = complete_utf8_prefix(std::string_view(pending_).substr(0, pending_.size() - hold));
  return emit(safe);
}

std::string StopMatcher::flush() {
  if (stopped_) return {};
  return emit(pending_.size());
}

}  // namespace kvp::serve
