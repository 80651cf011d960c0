// Builds without nvcc have no CUDA device.
#include "executor/gpu/device.h"

namespace kvp {

Result<std::unique_ptr<Device>> make_cuda_device() {
  return make_error("no CUDA device: kvplan was built without CUDA (nvcc not found or KVP_ENABLE_CUDA=OFF)");
}

}  // namespace kvp
