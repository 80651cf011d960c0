// Which CUDA devices this process can use, for `kvplan inspect --devices` and for GPU tests
// that must skip with a reason where there is none.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace kvp {

struct CudaDevice {
  int index = 0;
  std::string name;
  int compute_major = 0;
  int compute_minor = 0;
  int64_t total_bytes = 0;
  int64_t free_bytes = 0;
  int multiprocessors = 0;
  int memory_bus_bits = 0;
};

struct CudaDeviceReport {
  bool built_with_cuda = false;
  int runtime_version = 0;  // e.g. 13000; 0 when unknown
  int driver_version = 0;   // 0 when no driver is installed
  std::vector<CudaDevice> devices;
  std::string why_none;  // when devices is empty: the runtime's own reason
};

// Loads the CUDA plugin (executor/gpu/cuda_plugin.h) on first use; a build without CUDA, or a
// machine where the plugin or the CUDA libraries cannot be loaded, reports no device and why.
CudaDeviceReport query_cuda_devices();
// The plugin's own query through the CUDA runtime (kernels/device_query.cu; CUDA builds only).
CudaDeviceReport query_cuda_devices_direct();

}  // namespace kvp
