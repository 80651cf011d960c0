// The decoder kernels' bodies run on the CPU through the emulation layer (kernels/emu/emu.h).
#include <stdexcept>

#include <cstdio>
#include <cstdlib>

#include "kernels/launch.h"

#define KVP_KERNEL_NS emulated_kernels
#include "kernels/decoder_kernels.cuh"

#define KVP_LAUNCH(kernel, grid, block, ...) ::kvp::emu::launch(dim3(grid), dim3(block), kernel, __VA_ARGS__)

namespace kvp::emulated {
#include "kernels/launch_body.inc"
}  // namespace kvp::emulated
