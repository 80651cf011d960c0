// Built when no CUDA compiler was found (or KVP_ENABLE_CUDA=OFF).
#include "kernels/device_query.h"

namespace kvp {

CudaDeviceReport query_cuda_devices() {
  CudaDeviceReport report;
  report.why_none = "kvplan was built without CUDA (no nvcc found, or -DKVP_ENABLE_CUDA=OFF)";
  return report;
}

}  // namespace kvp
