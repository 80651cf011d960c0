// What kernel code in kernels/*.cuh writes, for both compilers: nvcc builds the real kernels;
// a host compiler builds the same bodies against the emulation in kernels/emu/emu.h.
//   KVP_HD            __host__ __device__ (per-element math shared with the C++ references)
//   KVP_GLOBAL        a kernel
//   KVP_SHARED        a block-shared array inside a kernel
//   kvp::gpu::        sync_threads, shfl_xor; half (binary16) with to_float and from_float
#pragma once

#if defined(__CUDACC__)
#define KVP_HD __host__ __device__
#define KVP_GLOBAL __global__
#define KVP_DEVICE __device__
#define KVP_SHARED __shared__
#include <cuda_fp16.h>
namespace kvp::gpu {
using half = __half;
KVP_HD inline float to_float(float x) { return x; }
KVP_HD inline float to_float(half x) { return __half2float(x); }
template <typename T>
KVP_HD inline T from_float(float x);
template <>
KVP_HD inline float from_float<float>(float x) { return x; }
template <>
KVP_HD inline half from_float<half>(float x) { return __float2half(x); }
__device__ inline void sync_threads() { __syncthreads(); }
template <typename T>
__device__ inline T shfl_xor(T v, int mask) { return __shfl_xor_sync(0xffffffffu, v, mask); }
}  // namespace kvp::gpu
#else
#include <cmath>

#include "kernels/emu/emu.h"
#define KVP_HD
#define KVP_GLOBAL
#define KVP_DEVICE
// Blocks run one at a time in the emulation: a function-local static is the block's shared memory.
#define KVP_SHARED static
namespace kvp::gpu {
using half = _Float16;  // IEEE binary16, as __half
inline float to_float(float x) { return x; }
inline float to_float(half x) { return static_cast<float>(x); }
template <typename T>
inline T from_float(float x) { return static_cast<T>(x); }
inline void sync_threads() { emu::sync_block(); }
template <typename T>
inline T shfl_xor(T v, int mask) { return emu::shuffle_from(v, emu::lane() ^ mask); }
}  // namespace kvp::gpu
#endif
