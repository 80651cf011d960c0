#include "executor/generator.h"

#include <algorithm>

#include <chrono>

#include "executor/model/tokenizer.h"

namespace kvp {
namespace {

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

int64_t prefill_prompts(Decoder& decoder, const std::vector<std::span<const int32_t>>& prompts, int chunk,
                        const std::function<void(const std::vector<int32_t>& seqs)>& on_last) {
  KVP_CHECK(chunk >= 1);
  size_t longest = 0;
  for (const auto& p : prompts) longest = std::max(longest, p.size());
  const size_t step = static_cast<size_t>(chunk);
  int64_t n_rows = 0;
  std::vector<int32_t> logit_rows, ended;
  for (size_t begin = 0; begin < longest; begin += step) {
    StepRows rows;
    logit_rows.clear();
    ended.clear();
    for (size_t s = 0; s < prompts.size(); ++s) {
      const size_t len = prompts[s].size();
      if (begin >= len) continue;
      const size_t end = std::min(len, begin + step);
      for (size_t i = begin; i < end; ++i) rows.add(prompts[s][i], int32_t(i), int32_t(s), int32_t(len));
      if (end == len) {
        logit_rows.push_back(static_cast<int32_t>(rows.size()) - 1);
        ended.push_back(static_cast<int32_t>(s));
      }
    }
    n_rows += static_cast<int64_t>(rows.size());
    decoder.forward(rows, logit_rows, nullptr);
    if (!ended.empty()) on_last(ended);
  }
  return n_rows;
}

std::vector<int32_t> generation_stop_tokens(const Tokenizer& tokenizer) {
  std::vector<int32_t> stops;
  for (int32_t t = 0; t < tokenizer.vocab_size(); ++t) {
    if (tokenizer.is_end_token(t) || t == tokenizer.bos()) stops.push_back(t);
  }
  return stops;
}

KvBudgets full_cache_budgets(const ModelConfig& config, int n_positions) {
  return KvBudgets::uniform(config.n_layers, config.n_kv_heads, config.head_dim(), n_positions);
}

GenerateResult generate(Decoder& decoder, const std::vector<std::vector<int32_t>>& prompts,
                        const std::vector<KvBudgets>& budgets, const GenerateOptions& options,
                        const TokenCallback& on_token) {
  const ModelConfig& config = decoder.config();
  KVP_CHECK(options.steps >= 1 && options.steps <= config.seq_len);
  KVP_CHECK(budgets.size() == prompts.size());
  const int n_seqs = static_cast<int>(prompts.size());

  GenerateResult result;
  result.tokens = prompts;
  std::vector<Sampler> samplers;
  for (int s = 0; s < n_seqs; ++s) {
    KVP_CHECK(!prompts[s].empty() && prompts[s].size() <= size_t(options.steps));
    samplers.emplace_back(options.sampler, s);
  }
  Backend& backend = decoder.backend();
  KVP_CHECK(options.prefill_chunk >= 1);
  backend.set_prefill_mode(PrefillMode{.evict_chunk = options.prefill_evict ? options.prefill_chunk : 0});
  backend.reset_sequences(budgets, options.policy);

  // Each step's logits stay on the backend, which picks the tokens with the sequences' draws.
  std::vector<float> uniforms;
  std::vector<int32_t> picked;
  std::vector<int32_t> logit_rows;
  std::vector<int32_t> logit_seqs;
  auto pick = [&] {
    uniforms.clear();
    for (int s : logit_seqs) uniforms.push_back(samplers[s].draw());
    picked.resize(logit_seqs.size());
    backend.pick_tokens(options.sampler, uniforms, picked);
  };

  // Prefill in chunks; the first token of each sequence from its prompt's last logits.
  auto start = std::chrono::steady_clock::now();
  std::vector<std::span<const int32_t>> views(prompts.begin(), prompts.end());
  std::vector<int32_t> first_token(n_seqs, -1);
  result.prompt_tokens = prefill_prompts(decoder, views, options.prefill_chunk, [&](const std::vector<int32_t>& seqs) {
    logit_seqs = seqs;
    pick();
    for (size_t i = 0; i < seqs.size(); ++i) first_token[seqs[i]] = picked[i];
  });
  logit_seqs.clear();
  picked.clear();
  for (int s = 0; s < n_seqs; ++s) {
    logit_seqs.push_back(s);
    picked.push_back(first_token[s]);
  }
  result.prefill_s = seconds_since(start);

  start = std::chrono::steady_clock::now();
  StepRows rows;
  while (!logit_seqs.empty()) {
    rows = StepRows{};
    std::vector<int32_t> next_seqs;
    for (size_t i = 0; i < logit_seqs.size(); ++i) {
      const int s = logit_seqs[i];
      const int32_t token = picked[i];
      if (options.stop_at_eos && std::find(options.stop_tokens.begin(), options.stop_tokens.end(), token) != options.stop_tokens.end()) continue;
      std::vector<int32_t>& seq = result.tokens[s];
      seq.push_back(token);
      ++result.generated_tokens;
      if (on_token) on_token(s, token);
      const int32_t position = static_cast<int32_t>(seq.size()) - 1;
      if (position < options.steps) {
        rows.add(token, position, s);
        next_seqs.push_back(s);
      }
    }
    logit_seqs = std::move(next_seqs);
    if (logit_seqs.empty()) break;
    logit_rows.resize(rows.size());
    for (size_t i = 0; i < rows.size(); ++i) logit_rows[i] = static_cast<int32_t>(i);
    decoder.forward(rows, logit_rows, nullptr);
    pick();
  }
  result.decode_s = seconds_since(start);
  return result;
}

}  // namespace kvp
