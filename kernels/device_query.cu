#include <cuda_runtime.h>

#include "kernels/device_query.h"

namespace kvp {

CudaDeviceReport query_cuda_devices_direct() {
  CudaDeviceReport report;
  report.built_with_cuda = true;
  cudaRuntimeGetVersion(&report.runtime_version);
  cudaDriverGetVersion(&report.driver_version);
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    const std::string cause = std::string(cudaGetErrorName(err)) + ": " + cudaGetErrorString(err);
    report.why_none = report.driver_version == 0
                          ? "no NVIDIA driver is installed, so this machine has no usable GPU (" +
                                cause + ")"
                          : cause;
    cudaGetLastError();  // clear the sticky error so later calls are not poisoned
    return report;
  }
  if (count == 0) report.why_none = "the CUDA runtime reports 0 devices";
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, i) != cudaSuccess) continue;
    CudaDevice d;
    d.index = i;
    d.name = prop.name;
    d.compute_major = prop.major;
    d.compute_minor = prop.minor;
    d.total_bytes = static_cast<int64_t>(prop.totalGlobalMem);
    d.multiprocessors = prop.multiProcessorCount;
    d.memory_bus_bits = prop.memoryBusWidth;
    size_t free_bytes = 0, total_bytes = 0;
    if (cudaSetDevice(i) == cudaSuccess && cudaMemGetInfo(&free_bytes, &total_bytes) == cudaSuccess) {
      d.free_bytes = static_cast<int64_t>(free_bytes);
    }
    report.devices.push_back(d);
  }
  return report;
}

}  // namespace kvp
