#include "kernels/device_query.h"

#include <gtest/gtest.h>

namespace kvp {
namespace {

TEST(DeviceQuery, AnswersWithDevicesOrAReason) {
  const CudaDeviceReport report = query_cuda_devices();
  if (report.devices.empty()) {
    EXPECT_FALSE(report.why_none.empty());
  }
#ifdef KVP_HAVE_CUDA
  EXPECT_TRUE(report.built_with_cuda);
  EXPECT_GT(report.runtime_version, 0);
#else
  EXPECT_FALSE(report.built_with_cuda);
#endif
}

}  // namespace
}  // namespace kvp
