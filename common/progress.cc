#include "common/progress.h"

#include <unistd.h>

#include <cstdio>

namespace kvp {

Progress::Progress(std::string label, int64_t total, bool enabled)
    : label_(std::move(label)),
      total_(total),
      enabled_(enabled),
      tty_(::isatty(STDERR_FILENO) != 0),
      start_(std::chrono::steady_clock::now()),
      last_print_(start_) {}

void Progress::update(int64_t done, const std::string& detail) {
  last_done_ = done;
  if (!enabled_) return;
  const auto now = std::chrono::steady_clock::now();
  const auto every = tty_ ? std::chrono::milliseconds(200) : std::chrono::milliseconds(3000);
  if (now - last_print_ < every) return;
  last_print_ = now;
  print(done, detail, false);
}

void Progress::finish(int64_t done, const std::string& detail) {
  if (finished_) return;
  finished_ = true;
  last_done_ = done;
  if (enabled_) print(done, detail, true);
}

void Progress::print(int64_t done, const std::string& detail, bool final) {
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const double pct = total_ > 0 ? 100.0 * static_cast<double>(done) / static_cast<double>(total_) : 100.0;
  std::fprintf(stderr, "%s%s: %lld/%lld (%.0f%%) %.1f s%s%s%s", tty_ ? "\r" : "", label_.c_str(),
               static_cast<long long>(done), static_cast<long long>(total_), pct, s,
               detail.empty() ? "" : ", ", detail.c_str(), (final || !tty_) ? "\n" : "\x1b[K");
  std::fflush(stderr);
}

}  // namespace kvp
