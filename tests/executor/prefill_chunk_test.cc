// Chunked prefill (--prefill-chunk) and chunked eviction during prefill (--prefill-evict) on the
// CPU backend, against the prompt run in one step: the same kept tokens with the same scores
// (H2O/VATP column sums over every later query, SnapKV's window, TOVA's last row), the same
// evictions and the same generated tokens, at any chunk size and thread count; and the prefill
// transient held, counted by peak_kv_bytes, as the memory model predicts.
#include <gtest/gtest.h>

#include <memory>

#include "executor/cpu/cpu_backend.h"
#include "executor/generator.h"
#include "tests/support/test_support.h"

namespace kvp {
namespace {

using test::default_model;

constexpr int kPromptLen = 300;
constexpr int kBudget = 64;

// A natural 300-token prompt: the model's own greedy continuation of BOS.
const std::vector<int32_t>& prompt() {
  static const std::vector<int32_t> p = [] {
    CpuBackend backend(default_model().weights);
    Decoder decoder(backend);
    GenerateOptions options{.steps = kPromptLen - 1};
    options.stop_at_eos = false;
    const ModelConfig& c = default_model().weights.config();
    return generate(decoder, {{kBosToken}}, {full_cache_budgets(c, kPromptLen)}, options).tokens[0];
  }();
  return p;
}

struct Outcome {
  std::vector<EvictionRecord> evictions;
  std::vector<std::vector<int32_t>> kept_pos;  // per (layer, head) after prefill, in slot order
  std::vector<std::vector<float>> kept_score;
  std::vector<int32_t> tokens;                 // prompt + generated
  int64_t peak_kv_bytes = 0;
  int64_t kv_bytes = 0;
};

std::shared_ptr<const Policy> make(const std::string& name) {
  auto p = make_policy(name, published_defaults(name, kBudget));
  KVP_CHECK(p.ok(), "{}", p.error().message());
  return std::shared_ptr<const Policy>(std::move(*p));
}

KvBudgets budgets_for(const Policy& policy) {
  const ModelConfig& c = default_model().weights.config();
  KvBudgets b = policy.evicts() ? KvBudgets::uniform(c.n_layers, c.n_kv_heads, c.head_dim(), kBudget)
                                : full_cache_budgets(c, c.seq_len);
  b.aux_floats_per_slot = policy.aux_floats_per_slot();
  return b;
}

void snapshot(CpuBackend& backend, Outcome* out) {
  const ModelConfig& c = default_model().weights.config();
  for (int l = 0; l < c.n_layers; ++l) {
    for (int h = 0; h < c.n_kv_heads; ++h) {
      const HeadSlots head = backend.cache(0).head(l, h);
      out->kept_pos.emplace_back(head.pos, head.pos + *head.n_used);
      out->kept_score.emplace_back(head.score, head.score + *head.n_used);
    }
  }
}

// The prompt run through `generate` in chunks (evict: --prefill-evict), then `decode` more tokens.
Outcome run_chunked(const std::string& policy_name, int chunk, int threads, bool evict, int decode = 0) {
  CpuBackend backend(default_model().weights, threads);
  Decoder decoder(backend);
  Outcome out;
  backend.set_eviction_log(&out.evictions);
  const auto policy = make(policy_name);
  GenerateOptions options{.steps = kPromptLen, .policy = policy, .prefill_chunk = chunk, .prefill_evict = evict};
  options.stop_at_eos = false;
  const GenerateResult prefilled = generate(decoder, {prompt()}, {budgets_for(*policy)}, options);
  snapshot(backend, &out);
  out.peak_kv_bytes = backend.peak_kv_bytes();
  out.kv_bytes = backend.kv_bytes_allocated();
  if (decode > 0) {
    options.steps = kPromptLen + decode;
    out.tokens = generate(decoder, {prompt()}, {budgets_for(*policy)}, options).tokens[0];
  } else {
    out.tokens = prefilled.tokens[0];
  }
  return out;
}

// The prompt in one forward pass of a fresh sequence (no prompt_len on the rows): the unchunked path.
Outcome run_whole(const std::string& policy_name) {
  CpuBackend backend(default_model().weights);
  Decoder decoder(backend);
  Outcome out;
  backend.set_eviction_log(&out.evictions);
  const auto policy = make(policy_name);
  backend.reset_sequences({budgets_for(*policy)}, policy);
  StepRows rows;
  for (int i = 0; i < kPromptLen; ++i) rows.add(prompt()[i], i, 0);
  const std::vector<int32_t> last = {kPromptLen - 1};
  decoder.forward(rows, last, nullptr);
  snapshot(backend, &out);
  return out;
}

void expect_same_prefill(const Outcome& a, const Outcome& b, const std::string& what) {
  ASSERT_EQ(a.kept_pos.size(), b.kept_pos.size());
  for (size_t i = 0; i < a.kept_pos.size(); ++i) {
    ASSERT_EQ(a.kept_pos[i], b.kept_pos[i]) << what << ": head " << i;
    ASSERT_EQ(a.kept_score[i], b.kept_score[i]) << what << ": head " << i << " scores";  // bit for bit
  }
  ASSERT_EQ(a.evictions.size(), b.evictions.size()) << what;
  for (size_t i = 0; i < a.evictions.size(); ++i) {
    const EvictionRecord &x = a.evictions[i], &y = b.evictions[i];
    ASSERT_TRUE(x.seq_idx == y.seq_idx && x.step == y.step && x.layer_idx == y.layer_idx &&
                x.kv_head_idx == y.kv_head_idx && x.evicted_pos == y.evicted_pos && x.score == y.score)
        << what << ": eviction " << i << " (pos " << x.evicted_pos << " vs " << y.evicted_pos << ")";
  }
}

class ChunkedPrefill : public ::testing::TestWithParam<std::string> {};

TEST_P(ChunkedPrefill, KeepsTheSameTokensWithTheSameScoresAsTheWholePrompt) {
  const Outcome whole = run_whole(GetParam());
  if (GetParam() != "full") {
    ASSERT_FALSE(whole.evictions.empty()) << "the budget must cut the prompt";
  }
  for (const int chunk : {1, 7, 64, 299, 300, 512}) {
    expect_same_prefill(whole, run_chunked(GetParam(), chunk, 1, false), fmt::format("chunk {}", chunk));
  }
  expect_same_prefill(whole, run_chunked(GetParam(), 64, 2, false), "chunk 64, 2 threads");
}

TEST_P(ChunkedPrefill, GeneratesTheSameTokensAtAnyChunkAndThreadCount) {
  const Outcome one = run_chunked(GetParam(), 512, 1, false, 40);
  const Outcome chunked = run_chunked(GetParam(), 37, 2, false, 40);
  EXPECT_EQ(one.tokens, chunked.tokens);
  EXPECT_EQ(one.tokens.size(), size_t(kPromptLen + 40 + 1));
  expect_same_prefill(one, chunked, "decode");
}

TEST_P(ChunkedPrefill, EvictingWithAChunkAsLongAsThePromptIsTheFullPrefill) {
  expect_same_prefill(run_whole(GetParam()), run_chunked(GetParam(), kPromptLen, 1, true), "evict, one chunk");
}

TEST_P(ChunkedPrefill, EvictionDuringPrefillHoldsAtMostBudgetPlusChunk) {
  if (GetParam() == "full") GTEST_SKIP() << "full keeps every token; nothing to evict";
  const int chunk = 32;
  const Outcome evicted = run_chunked(GetParam(), chunk, 2, true);
  const Outcome held = run_chunked(GetParam(), chunk, 2, false);
  const ModelConfig& c = default_model().weights.config();
  KvBudgets slot = budgets_for(*make(GetParam()));
  const int64_t heads = int64_t{c.n_layers} * c.n_kv_heads;
  // The transient, by hand: the cache plus every head's budget + one chunk (evicting) or the whole
  // prompt (holding it) of slots, each slot_bytes().
  EXPECT_EQ(evicted.peak_kv_bytes, evicted.kv_bytes + heads * (kBudget + chunk) * slot.slot_bytes());
  EXPECT_EQ(held.peak_kv_bytes, held.kv_bytes + heads * kPromptLen * slot.slot_bytes());
  // Chunk ends cut in place: every eviction made before the last position is at a chunk's end,
  // and what is kept holds the budget.
  int intermediate = 0;
  for (const EvictionRecord& e : evicted.evictions) {
    if (e.step == kPromptLen - 1) continue;
    ++intermediate;
    EXPECT_EQ((e.step + 1) % chunk, 0) << "eviction at step " << e.step;
    EXPECT_LT(e.evicted_pos, e.step + 1);
  }
  EXPECT_GT(intermediate, 0);
  for (const auto& kept : evicted.kept_pos) EXPECT_EQ(kept.size(), size_t(kBudget));
  // Recency-only eviction keeps the same set however the prompt is cut.
  if (GetParam() == "window") {
    EXPECT_EQ(evicted.kept_pos, held.kept_pos);
  }
}

INSTANTIATE_TEST_SUITE_P(Policies, ChunkedPrefill, ::testing::ValuesIn(policy_names()),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace kvp
