// The GPU backend on the emulated device, in every build: the same kernels, step loop and cache
// as on a GPU, against the CPU backend.
#include "tests/executor/gpu_backend_cases.h"

namespace kvp {
namespace {

std::unique_ptr<Device> emulated() { return make_emulated_device(); }

TEST(GpuBackendEmulated, GreedyTextAndLogitsMatchTheCpuBackend) { test::check_decoder_matches_cpu(emulated); }

TEST(GpuBackendEmulated, VatpEvictsWhatTheCpuExecutorEvicts) {
  test::check_same_evictions_as_cpu(emulated, "vatp", PolicyParams{.sinks = 4, .recent = 8});
}

TEST(GpuBackendEmulated, VatpMeanBaseEvictsWhatTheCpuExecutorEvicts) {
  test::check_same_evictions_as_cpu(emulated, "vatp", PolicyParams{.sinks = 2, .recent = 6, .vatp_base = VatpBase::kMean});
}

TEST(GpuBackendEmulated, H2oEvictsWhatTheCpuExecutorEvicts) {
  test::check_same_evictions_as_cpu(emulated, "h2o", PolicyParams{.sinks = 4, .recent = 8});
}

TEST(GpuBackendEmulated, WindowEvictsWhatTheCpuExecutorEvicts) {
  test::check_same_evictions_as_cpu(emulated, "window", PolicyParams{.sinks = 4, .recent = 8});
}

TEST(GpuBackendEmulated, HalfPrecisionWeightsAndCacheStayCloseToF32) { test::check_half_precision(emulated); }

TEST(GpuBackendEmulated, RefusesPoliciesItDoesNotRun) {
  for (const std::string& name : policy_names()) {
    const auto policy = std::move(make_policy(name, PolicyParams{})).value();
    const bool runs = name == "full" || name == "window" || name == "h2o" || name == "vatp";
    const Status s = GpuBackend::supports(*policy);
    EXPECT_EQ(s.ok(), runs) << name;
    if (!runs) {
      EXPECT_NE(s.error().message().find("runs full, window, h2o and vatp"), std::string::npos);
    }
  }
}

}  // namespace
}  // namespace kvp
