// The GPU backend on the emulated device, in every build: the same kernels, step loop and cache
// as on a GPU, against the CPU backend.
#include "tests/executor/gpu_backend_cases.h"

namespace kvp {
namespace {

std::unique_ptr<Device> emulated() { return make_emulated_device(); }

TEST(GpuBackendEmulated, GreedyTextAndLogitsMatchTheCpuBackend) { test::check_decoder_matches_cpu(emulated); }

TEST(GpuBackendEmulated, SampledTextMatchesTheCpuBackend) { test::check_sampled_text_matches_cpu(emulated); }

TEST(GpuBackendEmulated, VatpEvictsWhatTheCpuExecutorEvicts) {
  test::check_same_evictions_as_cpu(emulated, "vatp", PolicyParams{.sinks = 4, .recent = 8});
}

TEST(GpuBackendEmulated, VatpMeanBaseEvictsWhatTheCpuExecutorEvicts) {
  test::check_same_evictions_as_cpu(emulated, "vatp",
                                    PolicyParams{.sinks = 2, .recent = 6, .vatp_base = VatpBase::kMean});
}

TEST(GpuBackendEmulated, H2oEvictsWhatTheCpuExecutorEvicts) {
  test::check_same_evictions_as_cpu(emulated, "h2o", PolicyParams{.sinks = 4, .recent = 8});
}

TEST(GpuBackendEmulated, WindowEvictsWhatTheCpuExecutorEvicts) {
  test::check_same_evictions_as_cpu(emulated, "window", PolicyParams{.sinks = 4, .recent = 8});
}

TEST(GpuBackendEmulated, KnormEvictsWhatTheCpuExecutorEvicts) {
  test::check_same_evictions_as_cpu(emulated, "knorm", PolicyParams{.sinks = 4, .recent = 8});
}

TEST(GpuBackendEmulated, RandomEvictsWhatTheCpuExecutorEvicts) {
  test::check_same_evictions_as_cpu(emulated, "random", PolicyParams{.sinks = 2, .recent = 4, .seed = 9});
}

TEST(GpuBackendEmulated, TovaEvictsWhatTheCpuExecutorEvicts) {
  test::check_same_evictions_as_cpu(emulated, "tova", PolicyParams{.sinks = 4, .recent = 8});
}

TEST(GpuBackendEmulated, SnapkvEvictsWhatTheCpuExecutorEvicts) {
  test::check_same_evictions_as_cpu(emulated, "snapkv",
                                    PolicyParams{.sinks = 2, .recent = 8, .snap_window = 8, .snap_kernel = 5});
}

// Prompts of 64 in chunks of 24 (24, 24, 16): the scratch holds every position until the last
// chunk, whose cut keeps what the one-step prefill keeps.
TEST(GpuBackendEmulated, ChunkedPromptsEvictWhatTheCpuExecutorEvicts) {
  test::check_same_evictions_as_cpu(emulated, "vatp", PolicyParams{.sinks = 4, .recent = 8}, 24);
  test::check_same_evictions_as_cpu(emulated, "h2o", PolicyParams{.sinks = 4, .recent = 8}, 24);
  test::check_same_evictions_as_cpu(emulated, "tova", PolicyParams{.sinks = 4, .recent = 8}, 24);
  test::check_same_evictions_as_cpu(emulated, "snapkv",
                                    PolicyParams{.sinks = 2, .recent = 8, .snap_window = 8, .snap_kernel = 5}, 24);
  test::check_same_evictions_as_cpu(emulated, "window", PolicyParams{.sinks = 4, .recent = 8}, 24);
}

// --prefill-evict: each KV head's scratch cut in place to budget 40 after positions 47 and 59
// (chunks of 12), then into the cache after 63, the CPU executor's cuts record for record.
TEST(GpuBackendEmulated, PrefillEvictCutsWhatTheCpuExecutorCuts) { test::check_prefill_evict_matches_cpu(emulated); }

TEST(GpuBackendEmulated, ThinkAndMustafarEvictWhatTheCpuExecutorEvicts) {
  test::check_compressed_evictions_match_cpu(emulated);
}

TEST(GpuBackendEmulated, ThinkAndMustafarChunkedPromptsCutWhatTheCpuExecutorCuts) {
  test::check_compressed_chunked_prompts_match_cpu(emulated);
}

TEST(GpuBackendEmulated, KvcrushEvictsWhatTheCpuExecutorEvicts) { test::check_kvcrush_evictions_match_cpu(emulated); }

TEST(GpuBackendEmulated, DeltaEvictsWhatTheCpuExecutorEvicts) { test::check_delta_evictions_match_cpu(emulated); }

TEST(GpuBackendEmulated, HalfPrecisionWeightsAndCacheStayCloseToF32) { test::check_half_precision(emulated); }

// The benchmarks' long-context shortcut: a filled cache decodes and evicts only unprotected
// positions, the oldest first (zero keys: equal attention, so equal VATP scores of zero values).
TEST(GpuBackendEmulated, FilledForBenchmarkDecodesAndEvictsTheOldestUnprotected) {
  const PolicyParams params{.sinks = 4, .recent = 8};
  auto plan = uniform_plan(test::stories_model(), "vatp", params, 32, KvDtype::kF32);
  ASSERT_TRUE(plan.ok());
  GpuBackend gpu(test::default_model().weights, make_emulated_device());
  gpu.reset_sequences({plan->kv_budgets(), plan->kv_budgets()},
                      std::shared_ptr<const Policy>(std::move(make_policy("vatp", params)).value()));
  gpu.fill_for_benchmark(300);
  std::vector<EvictionRecord> log;
  gpu.set_eviction_log(&log);
  Decoder decoder(gpu);
  StepRows rows;
  rows.add(5, 300, 0);
  rows.add(6, 300, 1);
  std::vector<float> logits;
  const std::vector<int32_t> both = {0, 1};
  decoder.forward(rows, both, &logits);
  const int heads = 2 * gpu.config().n_layers * gpu.config().n_kv_heads;
  ASSERT_EQ(log.size(), static_cast<size_t>(heads));
  // Held: sinks 0..3 and positions 272..299; the oldest unprotected is 272.
  for (const EvictionRecord& r : log) EXPECT_EQ(r.evicted_pos, 272);
  for (float l : logits) ASSERT_TRUE(std::isfinite(l));
}

TEST(GpuBackendEmulated, Q8_0WeightsThroughTheKernelTellTheCpusQ8_0Story) {
  test::check_q8_0_weights_match_cpu(emulated);
}

TEST(GpuBackendEmulated, Q4WeightsWidenedOnTheHostTellTheCpusStory) { test::check_q4_weights_match_cpu(emulated); }

TEST(GpuBackendEmulated, RunsEveryPolicy) {
  for (const std::string& name : policy_names()) {
    const auto policy = std::move(make_policy(name, PolicyParams{})).value();
    EXPECT_TRUE(GpuBackend::supports(*policy).ok()) << name;
  }
}

}  // namespace
}  // namespace kvp
