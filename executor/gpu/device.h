// Where the GPU backend's memory and kernels live. Two devices implement it with the same kernel
// bodies (kernels/decoder_kernels.cuh): `cuda` (device memory, cuBLAS, the compiled kernels), built
// where nvcc exists and usable where a GPU is present, and `emulated` (host memory, Eigen for the
// matrix products, the kernels run by the CPU emulation of kernels/emu), which runs everywhere so
// the backend's logic is tested in every build.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "common/status.h"
#include "kernels/launch.h"

namespace kvp {

// How a matrix weight is held on the device.
enum class DeviceWeight { kF32, kF16, kQ8_0 };

class Device {
 public:
  virtual ~Device() = default;

  // "cuda" or "emulated".
  virtual std::string_view kind() const = 0;
  // What it is, for reports: "NVIDIA H100 80GB HBM3 (cuda:0)", "CPU emulation".
  virtual std::string description() const = 0;
  virtual const Launchers& kernels() const = 0;
  // Threads per block for the kernels (a multiple of 32).
  virtual int block_threads() const = 0;

  // Device memory; aborts with a message naming the size when the device has no room.
  virtual void* alloc(size_t bytes) = 0;
  virtual void release(void* p) = 0;
  virtual void upload(void* dst, const void* host_src, size_t bytes) = 0;
  virtual void download(void* host_dst, const void* src, size_t bytes) const = 0;
  virtual void copy(void* dst, const void* src, size_t bytes) = 0;
  virtual void zero(void* dst, size_t bytes) = 0;

  // y[rows, out] = x[rows, in] · wᵀ (y += ... when `accumulate`), w [out, in] row-major: f32; or
  // binary16 (x is then rounded to binary16 into x_half, [rows, in], and the products summed in
  // f32, as cuBLAS's GemmEx does); or q8_0 blocks through our kernel (f32 activations).
  virtual void gemm(const void* w, DeviceWeight type, int out, int in, const float* x, void* x_half, float* y, int rows,
                    bool accumulate) = 0;
  virtual void synchronize() = 0;
  // Free device memory in bytes, or -1 where the device cannot tell (the emulation).
  virtual int64_t free_memory() const = 0;
};

// The CPU emulation: always available.
std::unique_ptr<Device> make_emulated_device();
// The first CUDA device, or why there is none (no CUDA build, the plugin or the CUDA libraries
// not loadable, no driver, no device). Loads the CUDA plugin on first use (cuda_plugin.h).
Result<std::unique_ptr<Device>> make_cuda_device();
// The plugin's own constructor (executor/gpu/cuda_device.cc; CUDA builds only).
Result<std::unique_ptr<Device>> make_cuda_device_direct();

// Device memory owned by one buffer.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(Device& device, size_t bytes) : device_(&device), bytes_(bytes), p_(bytes ? device.alloc(bytes) : nullptr) {}
  DeviceBuffer(DeviceBuffer&& o) noexcept { *this = std::move(o); }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      reset();
      device_ = o.device_, bytes_ = o.bytes_, p_ = o.p_;
      o.p_ = nullptr, o.bytes_ = 0;
    }
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() { reset(); }

  void reset() {
    if (p_) device_->release(p_);
    p_ = nullptr, bytes_ = 0;
  }
  size_t bytes() const { return bytes_; }
  // A workspace of at least `bytes` on `device`: reallocated (contents not kept) when smaller.
  void grow(Device& device, size_t bytes) {
    if (bytes_ < bytes) *this = DeviceBuffer(device, bytes);
  }
  void* get() const { return p_; }
  template <typename T>
  T* as() const { return static_cast<T*>(p_); }

 private:
  Device* device_ = nullptr;
  size_t bytes_ = 0;
  void* p_ = nullptr;
};

}  // namespace kvp
