// `kvplan eval`: closed-loop measurement of a cache configuration against the full cache on the
// same tokens (docs/ARCHITECTURE.md). Each sequence's first prompt_len tokens are prefilled (full attention,
// then the cut to budget); the rest is fed one token at a time under the plan (teacher forcing).
#pragma once

#include <functional>
#include <memory>
#include <vector>

#include "executor/backend.h"
#include "executor/corpus.h"
#include "executor/decoder.h"
#include "planner/plan/measured.h"

namespace kvp {

struct EvalOptions {
  int prompt_len = 64;
  int batch = 16;  // sequences per forward pass
};

// What the full cache gives on a corpus, computed once and shared by every configuration.
struct EvalReference {
  int prompt_len = 0;
  std::vector<std::vector<float>> logprobs;    // per sequence [T - P, vocab], log-softmax
  std::vector<std::vector<int32_t>> argmax;    // per sequence [T - P]
  std::vector<std::vector<int32_t>> greedy;    // per sequence: prompt then T - P greedy tokens
};

// A cache configuration: one budgets entry per sequence (all equal) and the policy.
struct EvalConfig {
  KvBudgets budgets;
  std::shared_ptr<const Policy> policy;
  int prefill_chunk = 512;  // prompt rows per forward pass (the kept tokens do not depend on it)
  bool prefill_evict = false;  // --prefill-evict: cut the prompt to budget after every chunk
};

// out = log softmax(logits) over n, the normaliser summed in double.
void log_softmax(const float* logits, int n, float* out);
// KL(p ‖ q) = Σ exp(p) (p − q) of two log-distributions over n, summed in double.
double kl_divergence(const float* log_p, const float* log_q, int n);

// REQUIRES: every sequence longer than prompt_len, at most the model's seq_len.
EvalReference compute_reference(Decoder& decoder, const Corpus& corpus, const EvalOptions& options);

// Fills the metrics of `out` (delta_nll, top-1, KL, greedy agreement, KV bytes, tokens/s,
// n_predicted_tokens); evictions go to `eviction_log` if given. `progress` gets sequences done.
// `by_position`, if given, gets each sequence's ΔNLL per predicted token: [sequence][j], the
// token at position prompt_len + j predicted from the logits at prompt_len − 1 + j (the mean over
// all of them is delta_nll).
void evaluate(Decoder& decoder, const Corpus& corpus, const EvalReference& reference,
              const EvalConfig& config, const EvalOptions& options, Measured* out,
              std::vector<EvictionRecord>* eviction_log = nullptr,
              const std::function<void(int)>& progress = {},
              std::vector<std::vector<float>>* by_position = nullptr);

}  // namespace kvp
