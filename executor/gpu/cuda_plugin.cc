// The entry point of libkvplan_cuda.so (see cuda_plugin.h).
#include "executor/gpu/cuda_plugin.h"

extern "C" __attribute__((visibility("default"))) const kvp::CudaPlugin* kvp_cuda_plugin() {
  static const kvp::CudaPlugin plugin{.abi = kvp::kCudaPluginAbi,
                                      .make_device = &kvp::make_cuda_device_direct,
                                      .query_devices = &kvp::query_cuda_devices_direct};
  return &plugin;
}
