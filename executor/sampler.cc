#include "executor/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "planner/policy/lanes.h"

namespace kvp {

Status SamplerOptions::validate() const {
  if (!(temperature >= 0.0f && temperature <= 100.0f)) {
    return make_error("--temperature: expected 0..100, found {}", temperature);
  }
  if (!(top_p > 0.0f && top_p <= 1.0f)) {
    return make_error("--top-p: expected a value in (0, 1], found {}", top_p);
  }
  return ok_status();
}

// The first index of the largest value, as `if (v[i] > v[best]) best = i` finds it (a NaN never
// wins; a NaN first wins everything), in two vectorised passes: the maximum, then where it is.
int32_t argmax(std::span<const float> values) {
  const size_t n = values.size();
  if (n == 0 || std::isnan(values[0])) return 0;
  lanes::F16 lane_max = lanes::splat(values[0]);
  size_t i = 0;
  for (; i + lanes::kWidth <= n; i += lanes::kWidth) lane_max = lanes::max(lanes::load(values.data() + i), lane_max);
  float m = lanes::reduce_max(lane_max);
  for (; i < n; ++i) m = values[i] > m ? values[i] : m;
  for (i = 0; i < n; ++i) {
    if (values[i] == m) return static_cast<int32_t>(i);
  }
  return 0;
}

Sampler::Sampler(const SamplerOptions& options, uint64_t stream) : options_(options), rng_(options.seed + stream) {}

float Sampler::draw() {
  if (options_.temperature == 0.0f) return 0.0f;
  // The top 24 bits of a 64-bit draw: the same value on every platform (unlike
  // std::uniform_real_distribution, whose algorithm is implementation-defined).
  return static_cast<float>(rng_() >> 40) * 0x1.0p-24f;
}

int32_t pick_token(std::span<const float> logits, const SamplerOptions& options, float uniform) {
  if (options.temperature == 0.0f) return argmax(logits);
  thread_local std::vector<float> probs;
  thread_local std::vector<int32_t> order;
  const size_t n = logits.size();
  probs.resize(n);
  const float max_logit = *std::max_element(logits.begin(), logits.end());
  double sum = 0.0;
  for (size_t i = 0; i < n; ++i) {
    probs[i] = std::exp((logits[i] - max_logit) / options.temperature);
    sum += probs[i];
  }
  for (float& p : probs) p = static_cast<float>(p / sum);

  // Candidates in decreasing probability (lower id first on ties), cut to the top_p nucleus.
  order.resize(n);
  std::iota(order.begin(), order.end(), 0);
  size_t n_kept = n;
  if (options.top_p < 1.0f) {
    std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return probs[a] > probs[b]; });
    float cumulative = 0.0f;
    for (size_t i = 0; i < n; ++i) {
      cumulative += probs[order[i]];
      if (cumulative >= options.top_p) {
        n_kept = i + 1;
        break;
      }
    }
  }
  float kept_mass = 0.0f;
  for (size_t i = 0; i < n_kept; ++i) kept_mass += probs[order[i]];
  const float r = uniform * kept_mass;
  float cumulative = 0.0f;
  for (size_t i = 0; i < n_kept; ++i) {
    cumulative += probs[order[i]];
    if (r < cumulative) return order[i];
  }
  return order[n_kept - 1];  // rounding left r at the very top
}

}  // namespace kvp
