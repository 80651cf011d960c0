// Progress of long work on stderr: a line rewritten in place on a terminal, and at most one line
// every few seconds otherwise (logs, CI). Silent when disabled.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace kvp {

class Progress {
 public:
  Progress(std::string label, int64_t total, bool enabled = true);
  // Silent: work that failed reports its error, not a final progress line.
  ~Progress() = default;

  // Reports `done` of total units; `detail` is appended (e.g. bytes written).
  void update(int64_t done, const std::string& detail = "");
  // Prints the final line (once), for work that completed.
  void finish(int64_t done, const std::string& detail = "");

 private:
  void print(int64_t done, const std::string& detail, bool final);

  std::string label_;
  int64_t total_;
  bool enabled_;
  bool tty_;
  bool finished_ = false;
  int64_t last_done_ = 0;
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_print_;
};

}  // namespace kvp
