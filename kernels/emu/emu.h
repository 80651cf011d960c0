// A small CPU emulation of the CUDA execution model, so that kernel bodies — not only their
// arithmetic — run and are checked in every build, with or without a GPU (the approach of CUDA's
// old device-emulation mode and of HIP-CPU). What it provides is exactly what our kernels use:
//   - grid and block indices (threadIdx, blockIdx, blockDim, gridDim as thread-local values);
//   - one OS thread per CUDA thread; the blocks of a grid run one after another, so a function-
//     local `static` (what KVP_SHARED expands to here) is the block's shared memory;
//   - __syncthreads as a barrier across the block's threads, and warp shuffles through a per-warp
//     exchange buffer and barrier.
// Threads that return leave the barriers (as exited threads do on the GPU), so guarded early
// returns work. A kernel that diverges at a barrier deadlocks here as it would misbehave there.
// Only for translation units compiled without nvcc; see kernels/gpu_compat.h.
#pragma once

#if defined(__CUDACC__)
#error "kernels/emu/emu.h is for host compilers; CUDA code uses the real runtime"
#endif

#include <atomic>
#include <barrier>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

// The names CUDA code reads, one value per emulated thread.
inline thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;
inline constexpr int warpSize = 32;

namespace kvp::emu {

// The state one block's threads share.
struct Block {
  explicit Block(int threads_) : threads(threads_), barrier(threads_) {
    const int warps = (threads + warpSize - 1) / warpSize;
    for (int w = 0; w < warps; ++w) {
      const int members = std::min(warpSize, threads - w * warpSize);
      warp_barriers.push_back(std::make_unique<std::barrier<>>(members));
    }
    exchange.resize(static_cast<size_t>(warps) * warpSize);
  }
  int threads;
  std::barrier<> barrier;
  std::vector<std::unique_ptr<std::barrier<>>> warp_barriers;
  std::vector<uint64_t> exchange;  // one slot per thread for shuffles
};

inline thread_local Block* current_block = nullptr;
inline thread_local int current_linear_thread = 0;

inline int lane() { return current_linear_thread % warpSize; }
inline int warp() { return current_linear_thread / warpSize; }

inline void sync_block() { current_block->barrier.arrive_and_wait(); }
inline void sync_warp() { current_block->warp_barriers[warp()]->arrive_and_wait(); }

// Every lane publishes its value, the warp meets, each reads its source lane, the warp meets again.
template <typename T>
T shuffle_from(T value, int src_lane) {
  static_assert(sizeof(T) <= sizeof(uint64_t));
  Block& b = *current_block;
  const size_t base = static_cast<size_t>(warp()) * warpSize;
  const int members = std::min(warpSize, b.threads - warp() * warpSize);
  if ((src_lane & (warpSize - 1)) >= members) {
    // On the GPU this reads a lane that does not exist: undefined. Kernels must use whole warps.
    // One thread reports and stops the process; the others wait for it.
    static std::atomic<bool> reported{false};
    if (!reported.exchange(true)) {
      std::fprintf(stderr, "emulation: warp shuffle from lane %d of a %d-thread warp\n", src_lane & (warpSize - 1),
                   members);
      std::abort();
    }
    for (;;) std::this_thread::sleep_for(std::chrono::seconds(1));
  }
  uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  b.exchange[base + lane()] = bits;
  sync_warp();
  T out;
  const uint64_t src = b.exchange[base + (src_lane & (warpSize - 1))];
  std::memcpy(&out, &src, sizeof(T));
  sync_warp();
  return out;
}

template <typename Kernel, typename... Args>
void launch(dim3 grid, dim3 block, Kernel kernel, Args... args) {
  const int threads = static_cast<int>(block.x * block.y * block.z);
  for (unsigned bz = 0; bz < grid.z; ++bz) {
    for (unsigned by = 0; by < grid.y; ++by) {
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        Block state(threads);
        std::vector<std::thread> pool;
        pool.reserve(threads);
        for (int t = 0; t < threads; ++t) {
          pool.emplace_back([&, t] {
            threadIdx = dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
            blockIdx = dim3(bx, by, bz);
            blockDim = block;
            gridDim = grid;
            current_block = &state;
            current_linear_thread = t;
            kernel(args...);
            // An exited thread no longer holds up its block's or its warp's barriers.
            state.warp_barriers[t / warpSize]->arrive_and_drop();
            state.barrier.arrive_and_drop();
          });
        }
        for (std::thread& th : pool) th.join();
      }
    }
  }
}

}  // namespace kvp::emu
