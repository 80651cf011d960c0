// The CUDA backend as a plugin: libkvplan_cuda.so holds everything that needs cudart and cuBLAS
// (the CUDA device, the compiled kernels, the device query) and is loaded with dlopen only when a
// command asks for a GPU (--backend cuda, inspect --devices, the gpu tests). Every other command
// starts without the CUDA libraries (≈540 MB mapped, ≈60 ms), and one binary runs on machines
// that have none.
#pragma once

#include <memory>
#include <string>

#include "common/status.h"
#include "executor/gpu/device.h"
#include "kernels/device_query.h"

namespace kvp {

// Bumped whenever CudaPlugin or the Device interface changes: a stale plugin is refused.
inline constexpr int kCudaPluginAbi = 1;

struct CudaPlugin {
  int abi;
  Result<std::unique_ptr<Device>> (*make_device)();
  CudaDeviceReport (*query_devices)();
};

// The plugin, loaded once per process: from $KVPLAN_CUDA_PLUGIN, else libkvplan_cuda.so next to
// the executable, else the build tree's. Null, with the reason in `why`, when it cannot be loaded.
const CudaPlugin* load_cuda_plugin(std::string* why);

}  // namespace kvp

// The plugin's one exported symbol.
extern "C" const kvp::CudaPlugin* kvp_cuda_plugin();
