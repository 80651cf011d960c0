// The executor under a plan: it holds only the budgeted tokens, never evicts what is protected,
// allocates exactly what the plan predicts, and with a budget covering the sequence reproduces the
// full cache bit for bit.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <set>

#include "executor/cpu/cpu_backend.h"
#include "executor/evaluator.h"
#include "executor/generator.h"
#include "planner/plan/plan.h"
#include "planner/trace_stats.h"
#include "tests/support/test_support.h"

namespace kvp {
namespace {

using test::default_model;

PlanModel stories_plan_model() {
  const ModelConfig& c = default_model().weights.config();
  return PlanModel{.fingerprint = std::string(64, '0'), .dim = c.dim, .n_layers = c.n_layers, .n_heads = c.n_heads,
                   .n_kv_heads = c.n_kv_heads, .head_dim = c.head_dim(), .vocab_size = c.vocab_size,
                   .seq_len = c.seq_len};
}

struct Configured {
  KvBudgets budgets;
  std::shared_ptr<const Policy> policy;
  int64_t predicted_bytes;
};

Configured configure(const std::string& name, PolicyParams params, int budget) {
  auto plan = uniform_plan(stories_plan_model(), name, params, budget, KvDtype::kF32);
  EXPECT_TRUE(plan.ok()) << plan.error().message();
  auto policy = make_policy(name, params);
  return {plan->kv_budgets(), std::shared_ptr<const Policy>(std::move(policy).value()), plan->kv_bytes_per_sequence};
}

std::vector<int32_t> story_tokens(int n) {
  static const std::vector<int32_t> greedy = [] {
    CpuBackend backend(default_model().weights);
    Decoder decoder(backend);
    const GenerateOptions g{.steps = 300, .sampler = {.temperature = 1.0f, .top_p = 0.95f, .seed = 3},
                            .stop_at_eos = false};
    return generate(decoder, {{kBosToken}}, {full_cache_budgets(default_model().weights.config(), 300)}, g).tokens[0];
  }();
  return std::vector<int32_t>(greedy.begin(), greedy.begin() + n);
}

// Teacher-forced logits: a prompt prefill of `prompt_len`, then one token per pass.
std::vector<float> teacher_forced_logits(const std::vector<int32_t>& tokens, int prompt_len, const Configured& cfg,
                                         std::vector<EvictionRecord>* log = nullptr) {
  CpuBackend backend(default_model().weights);
  Decoder decoder(backend);
  backend.reset_sequences({cfg.budgets}, cfg.policy);
  backend.set_eviction_log(log);
  std::vector<float> all, logits;
  StepRows rows;
  for (int t = 0; t < prompt_len; ++t) rows.add(tokens[t], t, 0);
  const int32_t last = prompt_len - 1;
  decoder.forward(rows, std::span<const int32_t>(&last, 1), &logits);
  all = logits;
  for (size_t t = prompt_len; t < tokens.size(); ++t) {
    StepRows one;
    one.add(tokens[t], static_cast<int32_t>(t), 0);
    const int32_t zero = 0;
    decoder.forward(one, std::span<const int32_t>(&zero, 1), &logits);
    all.insert(all.end(), logits.begin(), logits.end());
  }
  return all;
}

TEST(PlanCache, ABudgetCoveringTheSequenceReproducesTheFullCacheBitForBit) {
  const std::vector<int32_t> tokens = story_tokens(160);
  const std::vector<float> full = teacher_forced_logits(tokens, 32, {full_cache_budgets(default_model().weights.config(), 160), nullptr, 0});
  for (const std::string& name : policy_names()) {
    const Configured cfg = configure(name, published_defaults(name, 160), 160);
    EXPECT_EQ(teacher_forced_logits(tokens, 32, cfg), full) << name;
  }
}

// Two stories (120 and 90 tokens), prompt 16, and their full-cache reference.
struct TwoStories {
  TwoStories() : backend(default_model().weights), decoder(backend) {
    corpus.sequences = {story_tokens(120), story_tokens(90)};
    ref = compute_reference(decoder, corpus, options);
  }
  CpuBackend backend;
  Decoder decoder;
  Corpus corpus;
  const EvalOptions options{.prompt_len = 16, .batch = 2};
  EvalReference ref;
};

TEST(PlanCache, FullPolicyHasZeroDeltaNllAndFullAgreement) {
  TwoStories t;
  Decoder& decoder = t.decoder;
  const Corpus& corpus = t.corpus;
  const EvalOptions& options = t.options;
  const EvalReference& ref = t.ref;
  Measured m;
  evaluate(decoder, corpus, ref, {.budgets = full_cache_budgets(default_model().weights.config(), 120), .policy = nullptr},
           options, &m);
  EXPECT_EQ(m.delta_nll, 0.0);
  EXPECT_EQ(m.kl, 0.0);
  EXPECT_EQ(m.top1_agreement, 1.0);
  EXPECT_EQ(m.greedy_agreement_fraction, 1.0);
  EXPECT_EQ(m.n_predicted_tokens, (120 - 16) + (90 - 16));
  // A small budget costs something, and is measured as such.
  Measured small;
  const Configured cfg = configure("h2o", {.sinks = 2, .recent = 4}, 12);
  evaluate(decoder, corpus, ref, {.budgets = cfg.budgets, .policy = cfg.policy}, options, &small);
  EXPECT_GT(small.delta_nll, 0.0);
  EXPECT_GT(small.kl, 0.0);
  EXPECT_LT(small.top1_agreement, 1.0);
  EXPECT_EQ(small.kv_bytes_per_sequence, cfg.predicted_bytes);
}

// Per predicted token: as many as each sequence predicts, averaging to delta_nll, zero up to the
// first eviction (budget 24, prompt 16: the cache holds every token through position 23).
TEST(PlanCache, DeltaNllByPositionAveragesToTheWhole) {
  TwoStories t;
  const Configured cfg = configure("h2o", {.sinks = 2, .recent = 4}, 24);
  Measured m;
  std::vector<std::vector<float>> by_position;
  evaluate(t.decoder, t.corpus, t.ref, {.budgets = cfg.budgets, .policy = cfg.policy}, t.options, &m, nullptr, {},
           &by_position);
  ASSERT_EQ(by_position.size(), 2u);
  EXPECT_EQ(by_position[0].size(), 120u - 16);
  EXPECT_EQ(by_position[1].size(), 90u - 16);
  double sum = 0;
  for (const auto& seq : by_position) {
    for (float d : seq) sum += d;
    for (int j = 0; j <= 24 - 16; ++j) EXPECT_EQ(seq[j], 0.0f) << "token " << 16 + j;
  }
  EXPECT_GT(m.delta_nll, 0.0);
  EXPECT_NEAR(sum / double(m.n_predicted_tokens), m.delta_nll, 1e-6);
}

class EveryPolicy : public ::testing::TestWithParam<std::string> {};

TEST_P(EveryPolicy, HoldsAtMostItsBudgetAndNeverEvictsSinksOrRecent) {
  const std::string name = GetParam();
  if (name == "full") GTEST_SKIP() << "full never evicts";
  const PolicyParams params{.sinks = 3, .recent = 6, .snap_window = 8};
  const int budget = 20;
  const Configured cfg = configure(name, params, budget);
  CpuBackend backend(default_model().weights);
  Decoder decoder(backend);
  std::vector<EvictionRecord> log;
  backend.set_eviction_log(&log);
  const ModelConfig& c = default_model().weights.config();
  int steps_checked = 0;
  const std::vector<int32_t> prompt = story_tokens(40);  // longer than the budget: a prefill cut
  const GenerateOptions g{.steps = 200, .sampler = {.temperature = 1.0f, .seed = 1}, .stop_at_eos = false,
                          .policy = cfg.policy};
  generate(decoder, {prompt}, {cfg.budgets}, g, [&](int, int32_t) {
    // After each forward pass: every head at most at budget, holding every sink and the recent
    // positions seen so far.
    KvCache& cache = backend.cache(0);
    for (int l = 0; l < c.n_layers; ++l) {
      std::set<int32_t> first_head;
      for (int h = 0; h < c.n_kv_heads; ++h) {
        HeadCache head = cache.head(l, h);
        ASSERT_LE(*head.n_used, budget);
        const std::set<int32_t> held(head.pos, head.pos + *head.n_used);
        ASSERT_EQ(held.size(), static_cast<size_t>(*head.n_used)) << "a position held twice";
        const int32_t newest = *std::max_element(head.pos, head.pos + *head.n_used);
        for (int32_t p = 0; p < params.sinks; ++p) ASSERT_TRUE(held.count(p)) << "sink " << p;
        for (int32_t p = newest - params.recent + 1; p <= newest; ++p) ASSERT_TRUE(held.count(p)) << "recent " << p;
        if (cfg.policy->shared_per_layer()) {
          if (h == 0) first_head = held;
          ASSERT_EQ(held, first_head) << "one kept set per layer";
        }
      }
    }
    ++steps_checked;
  });
  EXPECT_GT(steps_checked, 100);
  ASSERT_FALSE(log.empty());
  for (const EvictionRecord& e : log) {
    ASSERT_GE(e.evicted_pos, params.sinks);
    ASSERT_LE(e.evicted_pos, e.step - params.recent);
  }
  // Every position beyond the budget was evicted once per head: (tokens - budget) per head.
  EXPECT_EQ(static_cast<int64_t>(log.size()), int64_t{c.n_layers} * c.n_kv_heads * (200 - budget));
  EXPECT_EQ(backend.kv_bytes_allocated(), cfg.predicted_bytes);
}

INSTANTIATE_TEST_SUITE_P(Policies, EveryPolicy, ::testing::ValuesIn(policy_names()),
                         [](const auto& info) { return info.param; });

TEST(PlanCache, RaggedPerHeadBudgetsAreEachHeld) {
  auto plan = uniform_plan(stories_plan_model(), "vatp", {.sinks = 2, .recent = 4}, 24, KvDtype::kF32);
  ASSERT_TRUE(plan.ok());
  plan->budgets[1] = {8, 16, 24, 40};
  plan->budgets[4] = {6, 6, 60, 12};
  plan->kv_bytes_per_sequence = plan->kv_budgets().kv_bytes();
  auto policy = make_policy("vatp", plan->params);
  CpuBackend backend(default_model().weights);
  Decoder decoder(backend);
  const GenerateOptions g{.steps = 120, .policy = std::shared_ptr<const Policy>(std::move(policy).value())};
  generate(decoder, {story_tokens(30)}, {plan->kv_budgets()}, g);
  EXPECT_EQ(backend.kv_bytes_allocated(), plan->kv_bytes_per_sequence);
  for (int l = 0; l < 5; ++l) {
    for (int h = 0; h < 4; ++h) {
      EXPECT_EQ(*backend.cache(0).head(l, h).n_used, std::min(plan->budgets[l][h], 120)) << l << " " << h;
    }
  }
}

TEST(PlanCache, PrunedBatchEqualsSingleRuns) {
  const Configured cfg = configure("vatp", {.sinks = 4, .recent = 8}, 24);
  const Tokenizer& tok = default_model().tokenizer;
  const std::vector<std::vector<int32_t>> prompts = {
      tok.encode("Once upon a time, there was a girl who loved to dance in the rain with her friends"),
      tok.encode("The dog"), {kBosToken}};
  const GenerateOptions g{.steps = 150, .policy = cfg.policy};
  auto run = [&](const std::vector<std::vector<int32_t>>& p) {
    CpuBackend backend(default_model().weights);
    Decoder decoder(backend);
    return generate(decoder, p, std::vector<KvBudgets>(p.size(), cfg.budgets), g).tokens;
  };
  const auto batch = run(prompts);
  for (size_t s = 0; s < prompts.size(); ++s) EXPECT_EQ(batch[s], run({prompts[s]})[0]) << s;
}

// Captures q and k of every layer during a prefill.
class QkCapture final : public ForwardObserver {
 public:
  void after_qkv(int layer_idx, const Backend& b) override {
    if (static_cast<int>(q.size()) <= layer_idx) { q.resize(layer_idx + 1); k.resize(layer_idx + 1); }
    q[layer_idx].resize(size_t(b.n_rows()) * b.config().q_dim());
    k[layer_idx].resize(size_t(b.n_rows()) * b.config().kv_dim());
    b.read(Act::kQ, q[layer_idx]);
    b.read(Act::kK, k[layer_idx]);
  }
  std::vector<std::vector<float>> q, k;
};

TEST(PlanCache, ScoresAreAttentionSummedOverTheQueryHeadsOfAGroup) {
  // H2O after a prefill that keeps everything: each slot's score is the attention its token got
  // from every prompt query, summed over the group's query heads (here 2 per KV head).
  const Configured cfg = configure("h2o", {.sinks = 0, .recent = 1}, 64);
  const std::vector<int32_t> tokens = story_tokens(48);
  CpuBackend backend(default_model().weights);
  Decoder decoder(backend);
  backend.reset_sequences({cfg.budgets}, cfg.policy);
  StepRows rows;
  for (int t = 0; t < 48; ++t) rows.add(tokens[t], t, 0);
  QkCapture capture;
  std::vector<float> logits;
  const int32_t last = 47;
  decoder.forward(rows, std::span<const int32_t>(&last, 1), &logits, &capture);
  const ModelConfig& c = default_model().weights.config();
  std::vector<double> probs;
  for (int l = 0; l < c.n_layers; ++l) {
    for (int h = 0; h < c.n_kv_heads; ++h) {
      std::vector<double> expected(48, 0.0);
      for (int g = 0; g < c.group_size(); ++g) {
        for (int t = 0; t < 48; ++t) {
          causal_attention_row(capture.q[l].data(), capture.k[l].data(), c.n_heads, c.n_kv_heads, c.head_dim(),
                               h * c.group_size() + g, t, &probs);
          for (int j = 0; j <= t; ++j) expected[j] += probs[j];
        }
      }
      HeadCache head = backend.cache(0).head(l, h);
      ASSERT_EQ(*head.n_used, 48);
      for (int j = 0; j < 48; ++j) {
        ASSERT_EQ(head.pos[j], j);
        EXPECT_NEAR(head.score[j], expected[j], 1e-4 * std::max(1.0, expected[j])) << l << " " << h << " " << j;
      }
    }
  }
}

}  // namespace
}  // namespace kvp
