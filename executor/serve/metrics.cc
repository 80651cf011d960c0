#include "executor/serve/metrics.h"

#include <fmt/format.h>

#include <algorithm>

namespace kvp::serve {

Histogram::Histogram(std::vector<double> bounds) : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {}

void Histogram::observe(double value) {
  const size_t i = std::lower_bound(bounds_.begin(), bounds_.end(), value) - bounds_.begin();  // le: value <= bound
  ++counts_[i];
  sum_ += value;
  ++count_;
}

void Histogram::render(const std::string& name, std::string* out) const {
  uint64_t cumulative = 0;
  for (size_t i = 0; i < bounds_.size(); ++i) {
    cumulative += counts_[i];
    *out += fmt::format("{}_bucket{{le=\"{}\"}} {}\n", name, bounds_[i], cumulative);
  }
  *out += fmt::format("{}_bucket{{le=\"+Inf\"}} {}\n{}_sum {}\n{}_count {}\n", name, count_, name, sum_, name, count_);
}

namespace {

std::vector<double> latency_bounds(double smallest, int n) {
  std::vector<double> b;
  for (int i = 0; i < n; ++i) b.push_back(smallest * double(1 << i));  // doubling
  return b;
}

}  // namespace

Metrics::Metrics()
    : ttft_(latency_bounds(0.001, 15)), itl_(latency_bounds(0.0001, 15)), latency_(latency_bounds(0.005, 14)) {}

void Metrics::request_done(const std::string& finish_reason, double latency_s) {
  std::lock_guard lock(mu_);
  ++finished_[finish_reason];
  latency_.observe(latency_s);
}

void Metrics::request_rejected(const std::string& why) {
  std::lock_guard lock(mu_);
  ++rejected_[why];
}

void Metrics::first_token(double ttft_s) {
  std::lock_guard lock(mu_);
  ttft_.observe(ttft_s);
}

void Metrics::inter_token(double seconds) {
  std::lock_guard lock(mu_);
  itl_.observe(seconds);
}

void Metrics::tokens(int64_t prompt, int64_t generated, int64_t evicted) {
  std::lock_guard lock(mu_);
  prompt_tokens_ += prompt;
  generated_tokens_ += generated;
  evicted_tokens_ += evicted;
}

void Metrics::step(int rows) {
  std::lock_guard lock(mu_);
  ++steps_;
  step_rows_ += rows;
}

std::string Metrics::render(const Gauges& g) const {
  std::lock_guard lock(mu_);
  std::string out;
  auto metric = [&](const char* name, const char* type, const char* help) {
    out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
  };
  metric("kvplan_requests_running", "gauge", "Requests admitted and not finished (prefilling or decoding).");
  out += fmt::format("kvplan_requests_running {}\n", g.running);
  metric("kvplan_requests_waiting", "gauge", "Requests queued for admission.");
  out += fmt::format("kvplan_requests_waiting {}\n", g.waiting);
  metric("kvplan_requests_running_peak", "gauge", "Most requests running at once since the server started.");
  out += fmt::format("kvplan_requests_running_peak {}\n", g.peak_running);
  metric("kvplan_kv_bytes_in_use", "gauge",
         "KV bytes held by running requests (caches, and prompt scratch while prefilling).");
  out += fmt::format("kvplan_kv_bytes_in_use {}\n", g.kv_bytes_in_use);
  metric("kvplan_kv_bytes_in_use_peak", "gauge", "Most KV bytes in use at once since the server started.");
  out += fmt::format("kvplan_kv_bytes_in_use_peak {}\n", g.peak_kv_bytes_in_use);
  metric("kvplan_kv_bytes_limit", "gauge", "The KV pool (--kv-memory).");
  out += fmt::format("kvplan_kv_bytes_limit {}\n", g.kv_memory);
  metric("kvplan_requests_total", "counter", "Finished requests by finish reason.");
  for (const auto& [reason, n] : finished_)
    out += fmt::format("kvplan_requests_total{{finish_reason=\"{}\"}} {}\n", reason, n);
  metric("kvplan_requests_rejected_total", "counter", "Requests refused before admission, by reason.");
  for (const auto& [why, n] : rejected_)
    out += fmt::format("kvplan_requests_rejected_total{{reason=\"{}\"}} {}\n", why, n);
  metric("kvplan_prompt_tokens_total", "counter", "Prompt tokens prefilled.");
  out += fmt::format("kvplan_prompt_tokens_total {}\n", prompt_tokens_);
  metric("kvplan_generation_tokens_total", "counter", "Tokens generated.");
  out += fmt::format("kvplan_generation_tokens_total {}\n", generated_tokens_);
  metric("kvplan_evicted_tokens_total", "counter",
         "Tokens evicted from caches (per layer and KV head), prefill cuts included.");
  out += fmt::format("kvplan_evicted_tokens_total {}\n", evicted_tokens_);
  metric("kvplan_steps_total", "counter", "Forward passes of the batch.");
  out += fmt::format("kvplan_steps_total {}\n", steps_);
  metric("kvplan_step_rows_total", "counter", "Rows (tokens) run through the model, all steps.");
  out += fmt::format("kvplan_step_rows_total {}\n", step_rows_);
  metric("kvplan_time_to_first_token_seconds", "histogram", "From submission to the first generated token.");
  ttft_.render("kvplan_time_to_first_token_seconds", &out);
  metric("kvplan_inter_token_latency_seconds", "histogram", "Between consecutive tokens of a request.");
  itl_.render("kvplan_inter_token_latency_seconds", &out);
  metric("kvplan_request_latency_seconds", "histogram", "From submission to the last token.");
  latency_.render("kvplan_request_latency_seconds", &out);
  return out;
}

}  // namespace kvp::serve
