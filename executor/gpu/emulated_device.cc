// The emulated device: host memory, the kernels through the CPU emulation, Eigen GEMVs per row for
// f32 matrix products (the CPU backend's own, so those bits agree) and a plain f32-accumulated loop
// over binary16 inputs for half weights.
#include <Eigen/Core>
#include <cstdlib>
#include <cstring>

#include "executor/gpu/device.h"

namespace kvp {
namespace {

using ConstMatrixMap = Eigen::Map<const Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>;

class EmulatedDevice final : public Device {
 public:
  std::string_view kind() const override { return "emulated"; }
  std::string description() const override { return "CPU emulation of the CUDA kernels (kernels/emu)"; }
  const Launchers& kernels() const override { return emulated::kLaunchers; }
  // One warp per block: the emulation's cost grows with threads, and one warp exercises every
  // reduction path the kernels have (the kernel tests cover wider blocks).
  int block_threads() const override { return 32; }

  void* alloc(size_t bytes) override {
    void* p = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
    KVP_CHECK(p != nullptr, "emulated device: cannot allocate {} bytes", bytes);
    return p;
  }
  void release(void* p) override { std::free(p); }
  void upload(void* dst, const void* src, size_t bytes) override { std::memcpy(dst, src, bytes); }
  void download(void* dst, const void* src, size_t bytes) const override { std::memcpy(dst, src, bytes); }
  void copy(void* dst, const void* src, size_t bytes) override { std::memmove(dst, src, bytes); }
  void zero(void* dst, size_t bytes) override { std::memset(dst, 0, bytes); }

  void gemm(const void* w, DeviceWeight type, int out, int in, const float* x, void* x_half, float* y, int rows,
            bool accumulate) override {
    if (type == DeviceWeight::kQ8_0) {
      emulated::q8_0_gemv(w, out, in, x, y, rows, accumulate, 256);
      return;
    }
    if (type == DeviceWeight::kF32) {
      const ConstMatrixMap W(static_cast<const float*>(w), out, in);
      for (int r = 0; r < rows; ++r) {
        const Eigen::Map<const Eigen::VectorXf> xr(x + static_cast<size_t>(r) * in, in);
        Eigen::Map<Eigen::VectorXf> yr(y + static_cast<size_t>(r) * out, out);
        if (accumulate) {
          yr.noalias() += W * xr;
        } else {
          yr.noalias() = W * xr;
        }
      }
      return;
    }
    emulated::to_half(x, x_half, static_cast<int64_t>(rows) * in, 256);
    const auto* wh = static_cast<const _Float16*>(w);
    const auto* xh = static_cast<const _Float16*>(x_half);
    for (int r = 0; r < rows; ++r) {
      for (int o = 0; o < out; ++o) {
        float acc = 0.0f;
        for (int i = 0; i < in; ++i) {
          acc += static_cast<float>(wh[static_cast<size_t>(o) * in + i]) * static_cast<float>(xh[static_cast<size_t>(r) * in + i]);
        }
        float& dst = y[static_cast<size_t>(r) * out + o];
        dst = accumulate ? dst + acc : acc;
      }
    }
  }
  void synchronize() override {}
  int64_t free_memory() const override { return -1; }
};

}  // namespace

std::unique_ptr<Device> make_emulated_device() { return std::make_unique<EmulatedDevice>(); }

}  // namespace kvp
