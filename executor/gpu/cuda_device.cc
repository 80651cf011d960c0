// The CUDA device: cudaMalloc'd memory, the compiled kernels (kernels/cuda_kernels.cu) and cuBLAS,
// all on the default stream. Built where nvcc exists (KVP_HAVE_CUDA); runs where a GPU is present.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <fmt/format.h>

#include "executor/gpu/device.h"

namespace kvp {
namespace {

void check(cudaError_t e, const char* what) {
  KVP_CHECK(e == cudaSuccess, "cuda: {}: {}", what, cudaGetErrorString(e));
}
void check(cublasStatus_t s, const char* what) {
  KVP_CHECK(s == CUBLAS_STATUS_SUCCESS, "cublas: {}: status {}", what, static_cast<int>(s));
}

class CudaDevice final : public Device {
 public:
  CudaDevice(int ordinal, std::string name) : ordinal_(ordinal), name_(std::move(name)) {
    check(cudaSetDevice(ordinal_), "cudaSetDevice");
    check(cublasCreate(&blas_), "cublasCreate");
  }
  ~CudaDevice() override { cublasDestroy(blas_); }

  std::string_view kind() const override { return "cuda"; }
  std::string description() const override { return fmt::format("{} (cuda:{})", name_, ordinal_); }
  const Launchers& kernels() const override { return cuda::kLaunchers; }
  // Eight warps: decode attention then holds up to 64 × 256 slots per head.
  int block_threads() const override { return 256; }

  void* alloc(size_t bytes) override {
    void* p = nullptr;
    const cudaError_t e = cudaMalloc(&p, bytes);
    KVP_CHECK(e == cudaSuccess, "cuda: cannot allocate {} bytes: {}", bytes, cudaGetErrorString(e));
    return p;
  }
  void release(void* p) override { cudaFree(p); }
  void upload(void* dst, const void* src, size_t bytes) override {
    check(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice), "upload");
  }
  void download(void* dst, const void* src, size_t bytes) const override {
    check(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost), "download (or an earlier kernel)");
  }
  void copy(void* dst, const void* src, size_t bytes) override {
    check(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToDevice), "copy");
  }

  // Row-major y[rows, out] = x[rows, in] · wᵀ is, column-major, y (out × rows) = wᵀ (out × in, the
  // row-major w read transposed) · x (in × rows).
  void gemm(const void* w, DeviceWeight type, int out, int in, const float* x, void* x_half, float* y, int rows,
            bool accumulate) override {
    const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
    if (type == DeviceWeight::kQ8_0) {
      cuda::q8_0_gemv(w, out, in, x, y, rows, accumulate, 256);
      return;
    }
    if (type == DeviceWeight::kF32) {
      check(cublasSgemm(blas_, CUBLAS_OP_T, CUBLAS_OP_N, out, rows, in, &alpha, static_cast<const float*>(w), in, x,
                        in, &beta, y, out),
            "cublasSgemm");
      return;
    }
    cuda::to_half(x, x_half, static_cast<int64_t>(rows) * in, 256);
    check(cublasGemmEx(blas_, CUBLAS_OP_T, CUBLAS_OP_N, out, rows, in, &alpha, w, CUDA_R_16F, in, x_half, CUDA_R_16F,
                       in, &beta, y, CUDA_R_32F, out, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
          "cublasGemmEx");
  }
  void zero(void* dst, size_t bytes) override { check(cudaMemset(dst, 0, bytes), "cudaMemset"); }
  void synchronize() override { check(cudaDeviceSynchronize(), "synchronize"); }
  int64_t free_memory() const override {
    size_t free = 0, total = 0;
    check(cudaMemGetInfo(&free, &total), "cudaMemGetInfo");
    return static_cast<int64_t>(free);
  }

 private:
  int ordinal_;
  std::string name_;
  cublasHandle_t blas_ = nullptr;
};

}  // namespace

Result<std::unique_ptr<Device>> make_cuda_device_direct() {
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) return make_error("no CUDA device: {}", cudaGetErrorString(e));
  if (count == 0) return make_error("no CUDA device: the driver reports none");
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, 0) != cudaSuccess) return make_error("no CUDA device: cannot read device 0");
  return std::unique_ptr<Device>(std::make_unique<CudaDevice>(0, prop.name));
}

}  // namespace kvp
