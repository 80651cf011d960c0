// How a policy scores a cached token (planner/policy), as the kernels apply it: the score a token
// enters with and whether the attention it receives is added to it. Kept free of CUDA headers so
// host code may name the rules.
#pragma once

namespace kvp::math {

// kScoreZero: full; kScorePosition: window (the oldest goes first); kScoreAttention: h2o
// (accumulated attention); kScoreValueAttention: vatp (accumulated attention times the value's L1
// norm).
enum ScoreRule : int { kScoreZero = 0, kScorePosition = 1, kScoreAttention = 2, kScoreValueAttention = 3 };

}  // namespace kvp::math
