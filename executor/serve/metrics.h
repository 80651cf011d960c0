// kvplan serve's counters and latency histograms, written by the scheduler and read by GET
// /metrics (Prometheus text exposition format 0.0.4).
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace kvp::serve {

// A Prometheus histogram: cumulative counts at upper bounds (seconds), their sum and count.
class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds);
  void observe(double value);
  // "name_bucket{le=...} n" lines, then name_sum and name_count.
  void render(const std::string& name, std::string* out) const;

 private:
  std::vector<double> bounds_;
  std::vector<uint64_t> counts_;  // per bound, not cumulative; one more for +Inf
  double sum_ = 0;
  uint64_t count_ = 0;
};

// The gauges /metrics reports beside the counters.
struct Gauges {
  int running = 0;
  int waiting = 0;
  int64_t kv_bytes_in_use = 0;
  int64_t kv_memory = 0;
  int64_t peak_kv_bytes_in_use = 0;
  int peak_running = 0;
};

class Metrics {
 public:
  Metrics();

  void request_done(const std::string& finish_reason, double latency_s);
  void request_rejected(const std::string& why);  // "queue_full", "too_large", "invalid"
  void first_token(double ttft_s);
  void inter_token(double seconds);
  void tokens(int64_t prompt, int64_t generated, int64_t evicted);
  void step(int rows);

  std::string render(const Gauges& gauges) const;

 private:
  mutable std::mutex mu_;
  std::map<std::string, uint64_t> finished_;  // by finish reason
  std::map<std::string, uint64_t> rejected_;  // by reason
  uint64_t prompt_tokens_ = 0, generated_tokens_ = 0, evicted_tokens_ = 0, steps_ = 0, step_rows_ = 0;
  Histogram ttft_, itl_, latency_;
};

}  // namespace kvp::serve
