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

// The rule, given the draw `uniform` in [0, 1): argmax (the lowest id on ties) when temperature
// is 0; else p = softmax(logits / temperature), walked in decreasing p (the lower id first on
// ties) and cut where the walk's mass first reaches top_p when top_p < 1, or walked in id order
// when top_p is 1; the token is where the walk's cumulative mass passes uniform × the walk's mass.
// The GPU backend's sampling kernel (kernels/decoder_kernels.cuh) follows the same rule.
int32_t pick_token(std::span<const float> logits, const SamplerOptions& options, float uniform);

class Sampler {
 public:
  // Sequence `stream` of a batch draws from its own generator seeded with seed + stream, so a
  // batch member sampled with seed S equals a single run sampled with seed S + stream.
  Sampler(const SamplerOptions& options, uint64_t stream);

  // pick_token with the next draw.
  int32_t sample(std::span<const float> logits) { return pick_token(logits, options_, draw()); }
  // The next draw in [0, 1); 0, drawing nothing, when sampling is greedy.
  float draw();

 private:
  SamplerOptions options_;
  std::mt19937_64 rng_;
};

int32_t argmax(std::span<const float> values);

}  // namespace kvp
