// Generation for a batch of sequences: all prompts in one prefill pass, then one row per
// unfinished sequence per step.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "executor/decoder.h"
#include "executor/model/tokenizer.h"
#include "executor/sampler.h"

namespace kvp {

struct GenerateOptions {
  // Positions run through the model, prompt included, as llama2.c counts --steps: each yields a
  // token, so a sequence ends with steps + 1 tokens, the last never fed. 1..seq_len.
  int steps = 256;
  SamplerOptions sampler;
  bool stop_at_eos = true;  // stop a sequence when it samples one of stop_tokens (not kept)
  std::vector<int32_t> stop_tokens = {kBosToken, kEosToken};  // the tokenizer's end tokens for other models
  std::shared_ptr<const Policy> policy;  // eviction policy of the caches (null: keep all)
  // Prompts run in chunks of this many rows per sequence (the step's activations are O(chunk),
  // attention's working memory O(chunk × prompt)). >= 1.
  int prefill_chunk = 512;
  // --prefill-evict: cut each prompt to budget after every chunk (PrefillMode).
  bool prefill_evict = false;
};

struct GenerateResult {
  std::vector<std::vector<int32_t>> tokens;  // per sequence: prompt, then generated tokens
  int64_t generated_tokens = 0;
  int64_t prompt_tokens = 0;
  double prefill_s = 0.0;
  double decode_s = 0.0;
};

// Called with (sequence index, token) for every generated token as it is chosen.
using TokenCallback = std::function<void(int seq_idx, int32_t token)>;

// REQUIRES: every prompt non-empty and no longer than options.steps; steps within the model's
// seq_len. Caches must have room for `steps` tokens (or a policy that evicts). The backend's sequences are reset to `budgets` (one per prompt).
GenerateResult generate(Decoder& decoder, const std::vector<std::vector<int32_t>>& prompts,
                        const std::vector<KvBudgets>& budgets, const GenerateOptions& options,
                        const TokenCallback& on_token = {});

// Prefills `prompts[s]` into the backend's fresh sequence s: chunk c of every prompt that long in
// one forward pass. After each pass,
// `on_last(seqs)` gets the sequences whose prompt ended in it, in order: their last rows' logits
// are then the backend's current rows. Returns the prompt rows run.
int64_t prefill_prompts(Decoder& decoder, const std::vector<std::span<const int32_t>>& prompts, int chunk,
                        const std::function<void(const std::vector<int32_t>& seqs)>& on_last);

// The tokens that end a generated sequence: every end token of the tokenizer (EOS, end of turn,
// generation_config's extra ones) and BOS, as kvplan run and kvplan serve stop.
std::vector<int32_t> generation_stop_tokens(const Tokenizer& tokenizer);

// Budgets that hold every position of a sequence up to `n_positions` (the full cache).
KvBudgets full_cache_budgets(const ModelConfig& config, int n_positions);

}  // namespace kvp
