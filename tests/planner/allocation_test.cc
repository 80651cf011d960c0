#include "planner/allocation.h"

#include <gtest/gtest.h>

#include <numeric>

#include "planner/capacity.h"

namespace kvp {
namespace {

TEST(Allocation, ConvexHullDropsPointsAboveTheChord) {
  const ErrorCurve c{.budgets = {8, 16, 32, 64}, .error = {1.0, 0.9, 0.3, 0.2}};
  const ErrorCurve h = lower_convex_hull(c);
  // (16, 0.9) lies above the chord from (8, 1.0) to (32, 0.3).
  EXPECT_EQ(h.budgets, (std::vector<int32_t>{8, 32, 64}));
}

TEST(Allocation, GreedyGivesSlotsWhereTheyCutMostErrorAndNeverExceedsTheLimit) {
  // Layer 0 barely cares about its budget; layer 1 cares a lot.
  const std::vector<ErrorCurve> curves = {{.budgets = {8, 16, 32, 64}, .error = {0.10, 0.09, 0.08, 0.07}},
                                          {.budgets = {8, 16, 32, 64}, .error = {1.00, 0.50, 0.20, 0.05}}};
  const AllocationRequest r{.n_layers = 2, .n_kv_heads = 2, .total_slots = 2 * 2 * 40, .min_budget = 8, .max_budget = 64};
  auto greedy = allocate(Allocation::kGreedy, r, curves);
  ASSERT_TRUE(greedy.ok()) << greedy.error().message();
  // By hand (2 heads per layer): start at (8, 8) = 32 slots. Layer 1 to 16 (+16 slots, gain
  // 0.5/16), to 32 (+32, 0.3/32), to 64 (+64, 0.15/64 beats layer 0's 0.01/16): 144 slots. Then
  // layer 0 to 16 (+16): 160, the limit; nothing more fits.
  EXPECT_EQ(*greedy, (std::vector<int32_t>{16, 64}));
  EXPECT_LE(2 * ((*greedy)[0] + (*greedy)[1]), 160);
  auto uniform = allocate(Allocation::kUniform, r, curves);
  EXPECT_EQ(*uniform, (std::vector<int32_t>{40, 40}));
}

TEST(Allocation, GreedyHeadGivesSlotsToTheHeadsThatNeedThemWithinTheLimit) {
  // One layer, two KV heads: head 0 barely cares about its budget, head 1 cares a lot. Per layer
  // the two would get equal budgets; per head the slots go to head 1.
  const std::vector<ErrorCurve> curves = {{.budgets = {8, 16, 32, 64}, .error = {0.10, 0.09, 0.08, 0.07}},
                                          {.budgets = {8, 16, 32, 64}, .error = {1.00, 0.50, 0.20, 0.05}}};
  const AllocationRequest r{.n_layers = 1, .n_kv_heads = 2, .total_slots = 80, .min_budget = 8, .max_budget = 64};
  auto head = allocate(Allocation::kGreedyHead, r, curves);
  ASSERT_TRUE(head.ok()) << head.error().message();
  // By hand (one head per unit): start at (8, 8) = 16 slots. Head 1 to 16 (+8, gain 0.5/8), to 32
  // (+16, 0.3/16), to 64 (+32, 0.15/32 beats head 0's 0.01/8): 72 slots. Head 0 to 16 (+8): 80.
  EXPECT_EQ(*head, (std::vector<int32_t>{16, 64}));
  auto wrong = allocate(Allocation::kGreedyHead, r, {curves[0]});
  ASSERT_FALSE(wrong.ok());
  EXPECT_NE(wrong.error().message().find("1 error curves for 2 layers x KV heads"), std::string::npos);
  EXPECT_EQ(allocation_name(*parse_allocation("greedy-head")), "greedy-head");
}

TEST(Allocation, PyramidFallsWithDepthWithinTheLimit) {
  const AllocationRequest r{.n_layers = 5, .n_kv_heads = 4, .total_slots = 5 * 4 * 64, .min_budget = 8, .max_budget = 512};
  auto p = allocate(Allocation::kPyramid, r, {});
  ASSERT_TRUE(p.ok());
  EXPECT_TRUE(std::is_sorted(p->rbegin(), p->rend()));
  EXPECT_GT((*p)[0], (*p)[4]);
  EXPECT_LE(4 * std::accumulate(p->begin(), p->end(), int64_t{0}), r.total_slots);
}

TEST(Allocation, ALimitBelowTheProtectedPositionsIsAnError) {
  const AllocationRequest r{.n_layers = 5, .n_kv_heads = 4, .total_slots = 100, .min_budget = 20, .max_budget = 512};
  auto p = allocate(Allocation::kUniform, r, {});
  ASSERT_FALSE(p.ok());
  EXPECT_NE(p.error().message().find("memory limit"), std::string::npos);
}

TEST(Capacity, PublishedShapesGiveTheirKnownSizes) {
  auto llama2 = ModelSpec::load(find_config("models", "llama-2-7b").value());
  ASSERT_TRUE(llama2.ok()) << llama2.error().message();
  EXPECT_NEAR(llama2->parameter_count() / 1e9, 6.74, 0.01);
  auto llama3 = ModelSpec::load(find_config("models", "llama-3-8b").value());
  EXPECT_NEAR(llama3->parameter_count() / 1e9, 8.03, 0.01);
  auto qwen = ModelSpec::load(find_config("models", "qwen2.5-7b").value());
  EXPECT_NEAR(qwen->parameter_count() / 1e9, 7.62, 0.01);
  // Llama 2 7B fp16 KV at 4096 tokens: 32 layers x 32 heads x 4096 x (2 x 128 x 2 + 8 metadata).
  const KvBudgets kv = keep_ratio_budgets(*llama2, 4096, 1.0, KvDtype::kF16, 0);
  EXPECT_EQ(kv.kv_bytes(), int64_t{32} * 32 * 4096 * 520);
}

TEST(Capacity, BatchAndRooflineByHand) {
  ModelSpec m{.name = "toy", .dim = 64, .hidden_dim = 128, .n_layers = 2, .n_heads = 4, .n_kv_heads = 2,
              .vocab_size = 100, .seq_len = 128, .tied_embeddings = true};
  HardwareSpec hw{.name = "toy", .memory_bytes = int64_t{1} << 30, .bandwidth_bytes_per_s = 1e9, .peak_flops = 1e15};
  const CapacityReport r = capacity(m, hw, {.context_len = 100, .kv_dtype = KvDtype::kF32, .keep_ratio = 0.25,
                                            .runtime_reserve_bytes = 1 << 20});
  // KV: 2 layers x 2 heads x slots x (2 x 16 x 4 + 8) = 136 bytes per slot.
  EXPECT_EQ(r.full.kv_bytes_per_sequence, 4 * 100 * 136);
  EXPECT_EQ(r.plan.kv_bytes_per_sequence, 4 * 25 * 136);
  const int64_t free = (int64_t{1} << 30) - r.weight_bytes - (1 << 20);
  EXPECT_EQ(r.full.max_batch, free / (r.full.kv_bytes_per_sequence + r.full.activation_bytes_per_sequence));
  // Memory-bound: weights plus every cached byte of the batch, once per step.
  EXPECT_TRUE(r.full.memory_bound);
  EXPECT_NEAR(r.full.decode_step_s, (r.weight_bytes + double(r.full.max_batch) * r.full.kv_bytes_per_sequence) / 1e9, 1e-9);
  EXPECT_GT(r.plan.max_batch, r.full.max_batch);
}

TEST(Capacity, UnknownConfigsAreErrorsListingWhatExists) {
  auto missing = find_config("hardware", "tpu-v9");
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.error().message().find("h100-80gb"), std::string::npos);
}

}  // namespace
}  // namespace kvp
