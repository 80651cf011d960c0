// GPU suite (ctest label gpu): skips with the runtime's reason where no device is present.
#include <gtest/gtest.h>

#include "kernels/device_query.h"

namespace kvp {
namespace {

TEST(DeviceQueryGpu, ReportsAPlausibleDevice) {
  const CudaDeviceReport report = query_cuda_devices();
  if (report.devices.empty()) GTEST_SKIP() << "no CUDA device: " << report.why_none;
  for (const CudaDevice& d : report.devices) {
    EXPECT_FALSE(d.name.empty());
    EXPECT_GE(d.compute_major, 7);
    EXPECT_GT(d.total_bytes, int64_t{1} << 30);
    EXPECT_GT(d.free_bytes, 0);
    EXPECT_LE(d.free_bytes, d.total_bytes);
    EXPECT_GT(d.multiprocessors, 0);
  }
}

}  // namespace
}  // namespace kvp
