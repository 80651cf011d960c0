#include "planner/allocation.h"

#include <gtest/gtest.h>

#include <numeric>

#include "planner/capacity.h"
#include "tests/support/test_support.h"

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
  // Memory-bound: the matrices' bytes (all but the two norms per layer and the final one), then
  // every cached byte of the batch, once per step.
  const double params = 100 * 64 + 2 * (2 * 64 + 64 * 64 + 2 * 64 * 32 + 64 * 64 + 3 * 64 * 128) + 64;
  const double matrices = 100 * 64 + 2 * (64 * 64 + 2 * 64 * 32 + 64 * 64 + 3 * 64 * 128);
  EXPECT_EQ(m.parameter_count(), params);
  EXPECT_TRUE(r.full.memory_bound);
  EXPECT_NEAR(r.full.decode_step_s,
              (r.weight_bytes * matrices / params + double(r.full.max_batch) * r.full.kv_bytes_per_sequence) / 1e9, 1e-9);
  EXPECT_EQ(r.full.overhead_s, 0.0);
  EXPECT_GT(r.plan.max_batch, r.full.max_batch);
}

// The measured rates of a hardware file, each part of the step by hand at a given batch.
TEST(Capacity, StepPartsFromMeasuredRatesByHand) {
  ModelSpec m{.name = "toy", .dim = 64, .hidden_dim = 128, .n_layers = 2, .n_heads = 4, .n_kv_heads = 2,
              .vocab_size = 100, .seq_len = 128, .tied_embeddings = false};
  HardwareSpec hw{.name = "toy", .memory_bytes = int64_t{1} << 30, .bandwidth_bytes_per_s = 1e9, .peak_flops = 1e15,
                  .matmul_flops = {{"q8_0", 2e6}, {"f16", 1e6}}, .attention_flops = 1e5, .evict_slot_s = 1e-6,
                  .sync_s = 1e-3};
  const CapacityReport r = capacity(m, hw, {.context_len = 100, .weight_bytes = 50000, .kv_dtype = KvDtype::kF32,
                                            .aux_floats_per_slot = 1, .keep_ratio = 0.5, .runtime_reserve_bytes = 0,
                                            .batch = 4, .weight_type = "q8_0"});
  const double matrices = 2 * (64 * 64 + 2 * 64 * 32 + 64 * 64 + 3 * 64 * 128) + 100 * 64;
  EXPECT_EQ(r.plan.batch, 4);
  // Weights: 4 rows x 2 FLOPs per matrix parameter at the q8_0 rate; the bytes would take less.
  EXPECT_DOUBLE_EQ(r.plan.weights_s, 4 * 2 * matrices / 2e6);
  EXPECT_FALSE(r.plan.memory_bound);
  // Attention: 2 layers x 2 KV heads x 50 slots, 4 query-head FLOPs of head_dim 16 x group 2 each,
  // at the attention rate (the 76-byte slots would take less), plus VATP's bookkeeping per slot.
  const double slots = 2 * 2 * 50;
  EXPECT_DOUBLE_EQ(r.plan.attention_s, 4 * 4.0 * slots * 16 * 2 / 1e5 + 4 * slots * 1e-6);
  EXPECT_DOUBLE_EQ(r.full.attention_s, 4 * 4.0 * 2 * slots * 16 * 2 / 1e5);  // full: no bookkeeping
  // 8 fork/joins per layer and one for the classifier.
  EXPECT_DOUBLE_EQ(r.plan.overhead_s, 17 * 1e-3);
  EXPECT_DOUBLE_EQ(r.plan.decode_step_s, r.plan.weights_s + r.plan.attention_s + r.plan.overhead_s);
  EXPECT_DOUBLE_EQ(r.plan.tokens_per_s, 4 / r.plan.decode_step_s);
  // Another stored type takes its own rate; an unlisted one peak_flops.
  EXPECT_EQ(hw.matmul_flops_for("f16"), 1e6);
  EXPECT_EQ(hw.matmul_flops_for("bf16"), 1e15);
}

// DELTA's roles: a sparse layer attends the chosen pages' share of its slots, and the CPU backend's
// copy of them is a write at the bandwidth; full and selection layers attend everything. By hand on a
// 3-layer toy at 1,000 tokens with roles f s p, 4 pages of 16 + the last 2 + page 0 = 112 positions.
TEST(Capacity, DeltaAttendsTheChosenPagesShareByHand) {
  ModelSpec m{.name = "toy", .dim = 64, .hidden_dim = 128, .n_layers = 3, .n_heads = 4, .n_kv_heads = 2,
              .vocab_size = 100, .seq_len = 1024, .tied_embeddings = true};
  HardwareSpec hw{.name = "toy", .memory_bytes = int64_t{1} << 30, .bandwidth_bytes_per_s = 1e9, .peak_flops = 1e15,
                  .attention_flops = 1e6, .delta_copy = true};
  CapacityQuery q{.context_len = 1000, .kv_dtype = KvDtype::kF32, .runtime_reserve_bytes = 0, .batch = 2,
                  .delta = {.layers = "fsp", .pages = 4, .page_size = 16, .last = 2}, .sinks = 4};
  const CapacityReport r = capacity(m, hw, q);
  // 2 KV heads per layer: 1000 + 1000 + 112 slots each (the new token is not a cached slot).
  const double full_slots = 3 * 2 * 1000.0, attended = 2 * (1000 + 1000 + 112.0);
  EXPECT_DOUBLE_EQ(r.full.attended_slots_per_step, full_slots);
  EXPECT_DOUBLE_EQ(r.plan.attended_slots_per_step, attended);
  EXPECT_EQ(r.plan.kv_bytes_per_sequence, r.full.kv_bytes_per_sequence);  // DELTA keeps the whole cache
  const double slot_bytes = 2 * 16 * 4 + 8;
  EXPECT_DOUBLE_EQ(r.plan.kv_bytes_read_per_step, attended * slot_bytes);
  EXPECT_DOUBLE_EQ(r.plan.kv_bytes_copied_per_step, 2 * 112 * slot_bytes);
  EXPECT_DOUBLE_EQ(r.full.kv_bytes_copied_per_step, 0.0);
  // Attention: the FLOPs (4 x head_dim 16 x group 2 per slot) against the bytes read, then the copy.
  EXPECT_DOUBLE_EQ(r.plan.attention_s, std::max(2 * attended * slot_bytes / 1e9, 2 * 4.0 * attended * 16 * 2 / 1e6) +
                                           2 * 2 * 112 * slot_bytes / 1e9);
  EXPECT_GT(r.plan.tokens_per_s, r.full.tokens_per_s);
  // A backend that masks in place (the GPU kernels) copies nothing.
  hw.delta_copy = false;
  EXPECT_DOUBLE_EQ(capacity(m, hw, q).plan.kv_bytes_copied_per_step, 0.0);
  EXPECT_LT(capacity(m, hw, q).plan.attention_s, r.plan.attention_s);
  hw.delta_copy = true;
  // A context inside the pages: every slot attended, nothing copied, the full cache's speed.
  q.context_len = 100;
  const CapacityReport short_context = capacity(m, hw, q);
  EXPECT_DOUBLE_EQ(short_context.plan.attended_slots_per_step, 3 * 2 * 100.0);
  EXPECT_DOUBLE_EQ(short_context.plan.kv_bytes_copied_per_step, 0.0);
  EXPECT_DOUBLE_EQ(short_context.plan.tokens_per_s, short_context.full.tokens_per_s);
}

// Measured call costs: each of a step's matrices (7 per layer and the classifier) pays its call
// cost on top of its FLOPs at the streamed rate, and no separate fork/join; attention's rate goes
// log-linearly from 4 to 128 KV heads per fork/join.
TEST(Capacity, CallCostsAndBatchAttentionRateByHand) {
  ModelSpec m{.name = "toy", .dim = 64, .hidden_dim = 128, .n_layers = 2, .n_heads = 4, .n_kv_heads = 2,
              .vocab_size = 100, .seq_len = 128, .tied_embeddings = false};
  HardwareSpec hw{.name = "toy", .memory_bytes = int64_t{1} << 30, .bandwidth_bytes_per_s = 1e12, .peak_flops = 1e15,
                  .matmul_flops = {{"q8_0", 2e6}}, .matmul_stream_flops = {{"q8_0", 1e6}},
                  .matmul_stream1_flops = {{"q8_0", 5e5}}, .matmul_stream_call_s = {{"q8_0", 1e-3}},
                  .matmul_stream1_call_s = {{"q8_0", 2e-3}}, .attention_flops = 1e5, .attention_batch_flops = 3.2e5,
                  .sync_s = 1e-3};
  CapacityQuery q{.context_len = 100, .weight_bytes = 50000, .kv_dtype = KvDtype::kF32, .runtime_reserve_bytes = 0,
                  .batch = 2, .weight_type = "q8_0"};
  const double per_row = 2.0 * (2 * (64 * 64 + 2 * 64 * 32 + 64 * 64 + 3 * 64 * 128) + 100 * 64);
  const double t4 = 4 * per_row / 1e6 + 15 * 1e-3, t1 = per_row / 5e5 + 15 * 2e-3;
  CapacityReport r = capacity(m, hw, q);
  EXPECT_DOUBLE_EQ(r.full.weights_s, t1 + (t4 - t1) / 3);  // 2 rows: a third of the way from 1 to 4
  EXPECT_DOUBLE_EQ(r.full.overhead_s, 2 * 1e-3);           // attention's fork/join per layer only
  const double flops = 4.0 * (2 * 2 * 100) * 16 * 2;       // per sequence: 2 layers x 2 heads x 100 slots
  EXPECT_DOUBLE_EQ(r.full.attention_s, 2 * flops / 1e5);   // 4 KV heads per fork/join
  q.batch = 8;                                             // 16 heads: 2/5 of the way in log2
  r = capacity(m, hw, q);
  EXPECT_NEAR(r.full.attention_s, 8 * flops / (1e5 * std::pow(3.2, 0.4)), 1e-12);
  EXPECT_DOUBLE_EQ(r.full.weights_s, t4 + 4 * per_row / 2e6);  // rows past 4 at the in-cache rate
  q.batch = 100;                                               // past 128 heads: the batch rate
  r = capacity(m, hw, q);
  EXPECT_NEAR(r.full.attention_s, 100 * flops / 3.2e5, 1e-12);
  EXPECT_DOUBLE_EQ(hw.attention_flops_at(4), 1e5);
  EXPECT_DOUBLE_EQ(hw.attention_flops_at(1), 1e5);
}

// A toy model on a machine with streamed rates measured for q8_0; per_row: its FLOPs per row (2 per
// matrix parameter, the untied classifier included).
struct StreamedToy {
  ModelSpec m{.name = "toy", .dim = 64, .hidden_dim = 128, .n_layers = 2, .n_heads = 4, .n_kv_heads = 2,
              .vocab_size = 100, .seq_len = 4096, .tied_embeddings = false};
  HardwareSpec hw{.name = "toy", .memory_bytes = int64_t{1} << 40, .bandwidth_bytes_per_s = 1e12, .peak_flops = 1e15,
                  .matmul_flops = {{"q8_0", 2e6}}, .matmul_stream_flops = {{"q8_0", 1e6}},
                  .matmul_stream1_flops = {{"q8_0", 5e5}}, .matmul_stream_call_s = {{"q8_0", 1e-3}},
                  .matmul_stream1_call_s = {{"q8_0", 2e-3}}, .attention_flops = 1e5};
  CapacityQuery q{.context_len = 1000, .weight_bytes = 50000, .kv_dtype = KvDtype::kF32, .runtime_reserve_bytes = 0,
                  .batch = 1, .weight_type = "q8_0"};
  const double per_row = 2.0 * (2 * (64 * 64 + 2 * 64 * 32 + 64 * 64 + 3 * 64 * 128) + 100 * 64);
};

// With streamed rates measured, a slow bandwidth figure does not bound the weight products again:
// those rates were measured streaming the weights from memory.
TEST(Capacity, StreamedRatesStandWithoutTheBandwidthBound) {
  StreamedToy toy;
  const ModelSpec& m = toy.m;
  HardwareSpec& hw = toy.hw;
  const CapacityQuery& q = toy.q;
  const double weights = capacity(m, hw, q).full.weights_s;
  const double per_row = toy.per_row;
  EXPECT_DOUBLE_EQ(weights, per_row / 5e5 + 15 * 2e-3);  // 1 row: the 1-row streamed rate and call cost
  hw.bandwidth_bytes_per_s = 1.0;  // a read of 50 kB would take half a day
  const CapacityReport slow = capacity(m, hw, q);
  EXPECT_DOUBLE_EQ(slow.full.weights_s, weights);
  EXPECT_TRUE(slow.full.memory_bound);  // still reported: the plain read says memory is the limit
}

// Rows past 4 with the 32-row streamed rate: the slope from the 4-row time to the 32-row time,
// both with their call costs; without it, the in-cache rate.
TEST(Capacity, RowsPastFourFollowTheStreamedSlopeToThirtyTwo) {
  StreamedToy toy;
  const ModelSpec& m = toy.m;
  HardwareSpec& hw = toy.hw;
  CapacityQuery& q = toy.q;
  q.batch = 18;
  const double per_row = toy.per_row;
  const double t4 = 4 * per_row / 1e6 + 15 * 1e-3;
  EXPECT_DOUBLE_EQ(capacity(m, hw, q).full.weights_s, t4 + 14 * per_row / 2e6);  // the in-cache rate
  hw.matmul_stream32_flops = {{"q8_0", 4e6}};
  hw.matmul_stream32_call_s = {{"q8_0", 3e-3}};
  const double t32 = 32 * per_row / 4e6 + 15 * 3e-3;
  EXPECT_DOUBLE_EQ(capacity(m, hw, q).full.weights_s, t4 + 14 * (t32 - t4) / 28);
  q.batch = 32;
  EXPECT_NEAR(capacity(m, hw, q).full.weights_s, t32, 1e-12 * t32);
  q.batch = 64;  // past one tile: the same slope on
  EXPECT_NEAR(capacity(m, hw, q).full.weights_s, t4 + 60 * (t32 - t4) / 28, 1e-12 * t32);
}

// The prefill transient: the budgets plus the whole prompt per head, or budget + one chunk.
TEST(Capacity, PeakBytesAddThePrefillScratch) {
  ModelSpec m{.name = "toy", .dim = 64, .hidden_dim = 128, .n_layers = 2, .n_heads = 4, .n_kv_heads = 2,
              .vocab_size = 100, .seq_len = 4096, .tied_embeddings = true};
  HardwareSpec hw{.name = "toy", .memory_bytes = int64_t{1} << 30, .bandwidth_bytes_per_s = 1e9, .peak_flops = 1e15};
  CapacityQuery q{.context_len = 1000, .kv_dtype = KvDtype::kF32, .keep_ratio = 0.25, .runtime_reserve_bytes = 0};
  const int64_t slot = 2 * 16 * 4 + 8, heads = 2 * 2;
  CapacityReport r = capacity(m, hw, q);
  EXPECT_EQ(r.plan.kv_bytes_per_sequence, heads * 250 * slot);
  EXPECT_EQ(r.plan.peak_kv_bytes_per_sequence, heads * (250 + 1000) * slot);
  EXPECT_EQ(r.full.peak_kv_bytes_per_sequence, heads * 2000 * slot);
  EXPECT_LT(r.plan.max_batch_at_peak, r.plan.max_batch);
  q.prefill_evict_chunk = 128;
  r = capacity(m, hw, q);
  EXPECT_EQ(r.plan.peak_kv_bytes_per_sequence, heads * (250 + 250 + 128) * slot);
  q.prompt_len = 300;
  r = capacity(m, hw, q);
  EXPECT_EQ(r.plan.peak_kv_bytes_per_sequence, heads * (250 + 300) * slot);  // min(prompt, budget + chunk)
}

TEST(Capacity, HardwareFilesReadTheirMeasuredRatesAndRejectUnknownTypes) {
  auto hw = HardwareSpec::load(std::string(KVP_SOURCE_DIR) + "/configs/hardware/cpu-2core.yaml");
  ASSERT_TRUE(hw.ok()) << hw.error().message();
  EXPECT_GT(hw->matmul_flops_for("q8_0"), 0);
  EXPECT_GT(hw->attention_flops, 0);
  const std::string dir = test::make_temp_dir("hw");
  test::write_bytes(dir + "/bad.yaml",
                    "name: x\nmemory_bytes: 1\nbandwidth_bytes_per_s: 1\npeak_flops: 1\nsource: x\n"
                    "matmul_flops:\n  f8: 1e9\n");
  auto bad = HardwareSpec::load(dir + "/bad.yaml");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().message().find("matmul_flops.f8"), std::string::npos) << bad.error().message();
  // Call costs may be 0 (the fit found none); negative seconds are refused.
  EXPECT_GT(hw->attention_batch_flops, 0);
  EXPECT_FALSE(hw->matmul_stream_call_s.empty());
  const std::string base = "name: x\nmemory_bytes: 1\nbandwidth_bytes_per_s: 1\npeak_flops: 1\nsource: x\n";
  test::write_bytes(dir + "/zero.yaml", base + "matmul_stream_call_s:\n  f16: 0\n");
  auto zero = HardwareSpec::load(dir + "/zero.yaml");
  ASSERT_TRUE(zero.ok()) << zero.error().message();
  EXPECT_EQ(zero->matmul_stream_call_s_for("f16"), 0.0);
  test::write_bytes(dir + "/negative.yaml", base + "matmul_stream1_call_s:\n  f16: -1e-6\n");
  auto negative = HardwareSpec::load(dir + "/negative.yaml");
  ASSERT_FALSE(negative.ok());
  EXPECT_NE(negative.error().message().find("matmul_stream1_call_s.f16"), std::string::npos) << negative.error().message();
  auto epyc = HardwareSpec::load(std::string(KVP_SOURCE_DIR) + "/configs/hardware/cpu-2core-epyc.yaml");
  ASSERT_TRUE(epyc.ok()) << epyc.error().message();
  EXPECT_GT(epyc->attention_batch_flops, 0);
  EXPECT_EQ(epyc->matmul_stream32_flops_for("q8_0"), 0.0);  // measured before the 32-row rates
  auto zen5 = HardwareSpec::load(std::string(KVP_SOURCE_DIR) + "/configs/hardware/cpu-2core-zen5.yaml");
  ASSERT_TRUE(zen5.ok()) << zen5.error().message();
  EXPECT_DOUBLE_EQ(zen5->matmul_stream32_flops_for("q8_0"), 1.462e11);
  EXPECT_DOUBLE_EQ(zen5->matmul_stream32_call_s_for("f16"), 3.984e-6);
  test::write_bytes(dir + "/bad32.yaml", base + "matmul_stream32_flops:\n  q8_0: 0\n");
  auto bad32 = HardwareSpec::load(dir + "/bad32.yaml");
  ASSERT_FALSE(bad32.ok());
  EXPECT_NE(bad32.error().message().find("matmul_stream32_flops.q8_0"), std::string::npos) << bad32.error().message();
}

TEST(Capacity, UnknownConfigsAreErrorsListingWhatExists) {
  auto missing = find_config("hardware", "tpu-v9");
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.error().message().find("h100-80gb"), std::string::npos);
}

}  // namespace
}  // namespace kvp
