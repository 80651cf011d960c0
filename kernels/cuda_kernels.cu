// The decoder kernels compiled for the GPU, launched on the default stream with device pointers.
#include <cstdio>
#include <cstdlib>

#include "kernels/launch.h"

#define KVP_KERNEL_NS cuda_kernels
#include "kernels/decoder_kernels.cuh"

#define KVP_LAUNCH(kernel, grid, block, ...) kernel<<<(grid), (block)>>>(__VA_ARGS__)

namespace kvp::cuda {
#include "kernels/launch_body.inc"
}  // namespace kvp::cuda
