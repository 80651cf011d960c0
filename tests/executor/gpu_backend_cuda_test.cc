// The GPU backend on the CUDA device (label gpu): the decoder against the CPU backend, the same
// evictions under a plan, half precision, and the device memory a plan takes. Skips with the
// runtime's reason where there is no device.
#include "kernels/device_query.h"
#include "tests/executor/gpu_backend_cases.h"

namespace kvp {
namespace {

std::unique_ptr<Device> cuda_device() { return std::move(make_cuda_device()).value(); }

#define KVP_REQUIRE_GPU()                                                             \
  do {                                                                                \
    auto device = make_cuda_device();                                                 \
    if (!device.ok()) GTEST_SKIP() << device.error().message();                       \
  } while (0)

TEST(GpuBackendCuda, GreedyTextAndLogitsMatchTheCpuBackend) {
  KVP_REQUIRE_GPU();
  test::check_decoder_matches_cpu(cuda_device);
}

TEST(GpuBackendCuda, SampledTextMatchesTheCpuBackend) {
  KVP_REQUIRE_GPU();
  test::check_sampled_text_matches_cpu(cuda_device);
}

TEST(GpuBackendCuda, VatpEvictsWhatTheCpuExecutorEvicts) {
  KVP_REQUIRE_GPU();
  test::check_same_evictions_as_cpu(cuda_device, "vatp", PolicyParams{.sinks = 4, .recent = 8});
}

TEST(GpuBackendCuda, H2oAndWindowEvictWhatTheCpuExecutorEvicts) {
  KVP_REQUIRE_GPU();
  test::check_same_evictions_as_cpu(cuda_device, "h2o", PolicyParams{.sinks = 4, .recent = 8});
  test::check_same_evictions_as_cpu(cuda_device, "window", PolicyParams{.sinks = 4, .recent = 8});
}

TEST(GpuBackendCuda, KnormAndRandomEvictWhatTheCpuExecutorEvicts) {
  KVP_REQUIRE_GPU();
  test::check_same_evictions_as_cpu(cuda_device, "knorm", PolicyParams{.sinks = 4, .recent = 8});
  test::check_same_evictions_as_cpu(cuda_device, "random", PolicyParams{.sinks = 2, .recent = 4, .seed = 9});
}

TEST(GpuBackendCuda, TovaAndSnapkvEvictWhatTheCpuExecutorEvicts) {
  KVP_REQUIRE_GPU();
  test::check_same_evictions_as_cpu(cuda_device, "tova", PolicyParams{.sinks = 4, .recent = 8});
  test::check_same_evictions_as_cpu(cuda_device, "snapkv",
                                    PolicyParams{.sinks = 2, .recent = 8, .snap_window = 8, .snap_kernel = 5});
}

TEST(GpuBackendCuda, PrefillEvictCutsWhatTheCpuExecutorCuts) {
  KVP_REQUIRE_GPU();
  test::check_prefill_evict_matches_cpu(cuda_device);
}

TEST(GpuBackendCuda, ThinkAndMustafarEvictWhatTheCpuExecutorEvicts) {
  KVP_REQUIRE_GPU();
  test::check_compressed_evictions_match_cpu(cuda_device);
  test::check_compressed_chunked_prompts_match_cpu(cuda_device);
}

TEST(GpuBackendCuda, KvcrushEvictsWhatTheCpuExecutorEvicts) {
  KVP_REQUIRE_GPU();
  test::check_kvcrush_evictions_match_cpu(cuda_device);
}

TEST(GpuBackendCuda, DeltaEvictsWhatTheCpuExecutorEvicts) {
  KVP_REQUIRE_GPU();
  test::check_delta_evictions_match_cpu(cuda_device);
}

TEST(GpuBackendCuda, HalfPrecisionWeightsAndCacheStayCloseToF32) {
  KVP_REQUIRE_GPU();
  test::check_half_precision(cuda_device);
}

// The KV cache takes exactly the plan's bytes, and the device's free memory drops by them (to the
// allocator's granularity, 2 MiB).
TEST(GpuBackendCuda, FreeMemoryDropsByThePlansBytes) {
  KVP_REQUIRE_GPU();
  const PolicyParams params{.sinks = 4, .recent = 16};
  auto plan = uniform_plan(test::stories_model(), "vatp", params, 256, KvDtype::kF32);
  ASSERT_TRUE(plan.ok());
  const std::shared_ptr<const Policy> policy(std::move(make_policy("vatp", params)).value());
  GpuBackend gpu(test::default_model().weights, cuda_device());
  const int n_seqs = 400;  // ~100 MiB of cache, far above the granularity
  gpu.device().synchronize();
  const int64_t before = gpu.device().free_memory();
  gpu.reset_sequences(std::vector<KvBudgets>(n_seqs, plan->kv_budgets()), policy);
  gpu.device().synchronize();
  const int64_t after = gpu.device().free_memory();
  EXPECT_EQ(gpu.kv_bytes_allocated(), plan->kv_bytes_per_sequence * n_seqs);
  EXPECT_NEAR(static_cast<double>(before - after), static_cast<double>(plan->kv_bytes_per_sequence * n_seqs),
              2.0 * 1024 * 1024);
}

TEST(GpuBackendCuda, Q8_0WeightsThroughTheKernelTellTheCpusQ8_0Story) {
  KVP_REQUIRE_GPU();
  test::check_q8_0_weights_match_cpu(cuda_device);
}

TEST(GpuBackendCuda, Q4WeightsWidenedOnTheHostTellTheCpusStory) {
  KVP_REQUIRE_GPU();
  test::check_q4_weights_match_cpu(cuda_device);
}

}  // namespace
}  // namespace kvp
