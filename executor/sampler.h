// Choosing the next token from logits: greedy (temperature 0) or seeded temperature/top-p.
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <vector>

#include "common/status.h"

namespace kvp {

struct SamplerOptions {
  float temperature = 0.0f;  // 0: greedy (argmax, lowest id on ties)
  float top_p = 1.0f;        // nucleus: sample among the most likely tokens holding this mass
  uint64_t seed = 0;

  // Errors name the flag: temperature in [0, 100], top_p in (0, 1].
  Status validate() const;
};

class Sampler {
 public:
  // Sequence `stream` of a batch draws from its own generator seeded with seed + stream, so a
  // batch member sampled with seed S equals a single run sampled with seed S + stream.
  Sampler(const SamplerOptions& options, uint64_t stream);

  int32_t sample(std::span<const float> logits);

 private:
  float uniform();  // [0, 1)

  SamplerOptions options_;
  std::mt19937_64 rng_;
  std::vector<float> probs_;
  std::vector<int32_t> order_;
};

int32_t argmax(std::span<const float> values);

}  // namespace kvp
