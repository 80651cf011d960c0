// The shared prefill of kvplan eval --tasks (CpuBackend::score_prompt_for and fork_prompt): one
// keep-all prefill scored for every policy, then each configuration's cut forked from it, against
// each configuration run alone (its own prefill and cut): the same kept positions with the same
// scores, and the same greedy tokens with the same logits, bit for bit.
#include <gtest/gtest.h>

#include <bit>
#include <memory>

#include "executor/cpu/cpu_backend.h"
#include "executor/generator.h"
#include "executor/sampler.h"
#include "tests/support/test_support.h"

namespace kvp::shared_prefill_test {
namespace {

using test::default_model;

constexpr int kPromptLen = 200;
constexpr int kSteps = 24;

const std::vector<int32_t>& prompt() {
  static const std::vector<int32_t> p = [] {
    CpuBackend backend(default_model().weights);
    Decoder decoder(backend);
    GenerateOptions options{.steps = kPromptLen - 1, .stop_at_eos = false};
    const ModelConfig& c = default_model().weights.config();
    return generate(decoder, {{kBosToken}}, {full_cache_budgets(c, kPromptLen)}, options).tokens[0];
  }();
  return p;
}

struct Config {
  std::string name;
  PolicyParams params;
  int budget;
};

std::shared_ptr<const Policy> policy_of(const Config& c) { return std::shared_ptr<const Policy>(make_policy(c.name, c.params).value()); }

// Kept positions and scores of every head, then the greedy tokens and their logits' bits.
struct ForkRun {
  std::vector<std::vector<int32_t>> pos;
  std::vector<std::vector<float>> score;
  std::vector<int32_t> tokens;
  std::vector<uint32_t> logit_bits;
};

void take_cache(CpuBackend& b, int seq, ForkRun* out) {
  const ModelConfig& c = default_model().weights.config();
  for (int l = 0; l < c.n_layers; ++l) {
    for (int h = 0; h < c.n_kv_heads; ++h) {
      const HeadSlots head = b.cache(seq).head(l, h);
      out->pos.emplace_back(head.pos, head.pos + *head.n_used);
      out->score.emplace_back(head.score, head.score + *head.n_used);
    }
  }
}

// Greedy decoding of sequence `seq` from `first` at position kPromptLen.
void decode(CpuBackend& b, int seq, int32_t first, ForkRun* out) {
  Decoder decoder(b);
  const int vocab = default_model().weights.config().vocab_size;
  int32_t token = first;
  std::vector<float> logits;
  for (int s = 0; s < kSteps; ++s) {
    out->tokens.push_back(token);
    StepRows rows;
    rows.add(token, kPromptLen + s, seq);
    const int32_t r0 = 0;
    decoder.forward(rows, std::span(&r0, 1), &logits);
    token = argmax(logits);
    for (int i = 0; i < vocab; ++i) out->logit_bits.push_back(std::bit_cast<uint32_t>(logits[i]));
  }
}

TEST(SharedPrefill, ForkedCutsDecodeAsTheirOwnPrefills) {
  const ModelConfig& c = default_model().weights.config();
  std::vector<Config> configs;
  for (const char* name : {"window", "h2o", "vatp", "tova", "snapkv", "knorm", "kvcrush"}) {
    for (int budget : {48, 96}) configs.push_back({name, published_defaults(name, budget), budget});
  }
  PolicyParams mean = published_defaults("vatp", 64);
  mean.vatp_base = VatpBase::kMean;
  configs.push_back({"vatp", mean, 64});
  const int capacity = kPromptLen + kSteps + 1;
  // Shared: sequence 0 prefilled once under keep-all, scored for every configuration's policy.
  CpuBackend shared(default_model().weights);
  std::vector<KvBudgets> budgets(2, full_cache_budgets(c, capacity));
  shared.reset_sequences(budgets);
  std::vector<std::shared_ptr<const Policy>> scorers;
  for (const Config& cfg : configs) scorers.push_back(policy_of(cfg));
  shared.score_prompt_for(0, scorers);
  Decoder decoder(shared);
  StepRows rows;
  for (int p = 0; p < kPromptLen; ++p) rows.add(prompt()[p], p, 0);
  std::vector<float> logits;
  const int32_t last = kPromptLen - 1;
  decoder.forward(rows, std::span(&last, 1), &logits);
  const int32_t first = argmax(logits);
  for (size_t i = 0; i < configs.size(); ++i) {
    const Config& cfg = configs[i];
    SCOPED_TRACE(cfg.name + " budget " + std::to_string(cfg.budget));
    KvBudgets b = KvBudgets::uniform(c.n_layers, c.n_kv_heads, c.head_dim(), cfg.budget);
    b.aux_floats_per_slot = scorers[i]->aux_floats_per_slot();
    ForkRun forked, alone;
    shared.fork_prompt(0, static_cast<int>(i), 1, b, policy_of(cfg));
    take_cache(shared, 1, &forked);
    decode(shared, 1, first, &forked);
    // Alone: its own prefill of the prompt, cut to budget at the end.
    CpuBackend own(default_model().weights);
    own.reset_sequences({b}, policy_of(cfg));
    Decoder d(own);
    std::vector<float> own_logits;
    d.forward(rows, std::span(&last, 1), &own_logits);
    ASSERT_EQ(argmax(own_logits), first);
    take_cache(own, 0, &alone);
    decode(own, 0, first, &alone);
    // Slot order may differ only where the cut chose the same positions differently; it does not.
    EXPECT_EQ(forked.pos, alone.pos);
    EXPECT_EQ(forked.score, alone.score);
    EXPECT_EQ(forked.tokens, alone.tokens);
    EXPECT_TRUE(forked.logit_bits == alone.logit_bits);
    EXPECT_LT(forked.pos[0].size(), size_t(kPromptLen));  // it was cut
  }
  // The source still holds the whole prompt, and a fork with an index it lacks is refused.
  EXPECT_EQ(*shared.cache(0).head(0, 0).n_used, kPromptLen);
  EXPECT_DEATH(shared.fork_prompt(0, static_cast<int>(configs.size()), 1, budgets[1], scorers[0]), "scorer");
}

}  // namespace
}  // namespace kvp::shared_prefill_test
