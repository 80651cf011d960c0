// A small CPU emulation of the CUDA execution model, so that kernel bodies — not only their
// arithmetic — run and are checked in every build, with or without a GPU (the approach of CUDA's
// old device-emulation mode and of HIP-CPU). What it provides is exactly what our kernels use:
//   - grid and block indices (threadIdx, blockIdx, blockDim, gridDim);
//   - one fiber (Boost.Context) per CUDA thread, all on the calling OS thread; the blocks of a grid
//     run one after another, so a function-local `static` (what KVP_SHARED expands to here) is the
//     block's shared memory;
//   - __syncthreads as a barrier across the block's threads, and warp shuffles through a per-warp
//     exchange buffer and barrier.
// A fiber runs until it waits at a barrier, then the next one runs, so a block costs a few fiber
// switches per barrier instead of OS threads (a decode step of the whole model runs in
// milliseconds). Threads that return leave the barriers (as exited threads do on the GPU), so
// guarded early returns work. A kernel whose threads diverge at a barrier is reported as a
// deadlock and stops the process. Launches from different OS threads are independent.
// Only for translation units compiled without nvcc; see kernels/gpu_compat.h.
#pragma once

#if defined(__CUDACC__)
#error "kernels/emu/emu.h is for host compilers; CUDA code uses the real runtime"
#endif

#include <boost/context/fiber.hpp>
#include <boost/context/stack_context.hpp>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <utility>
#include <vector>

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

// The names CUDA code reads: the running fiber's values (set by the scheduler before it resumes one).
inline thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;
inline constexpr int warpSize = 32;

namespace kvp::emu {

namespace ctx = boost::context;

// Fiber stacks, reused across blocks and launches of this OS thread.
class StackPool {
 public:
  static constexpr size_t kStackBytes = 128 * 1024;
  ctx::stack_context allocate() {
    void* p;
    if (free_.empty()) {
      p = std::malloc(kStackBytes);
      if (!p) std::abort();
    } else {
      p = free_.back();
      free_.pop_back();
    }
    ctx::stack_context sc;
    sc.size = kStackBytes;
    sc.sp = static_cast<char*>(p) + kStackBytes;
    return sc;
  }
  void deallocate(ctx::stack_context& sc) { free_.push_back(static_cast<char*>(sc.sp) - sc.size); }
  ~StackPool() {
    for (void* p : free_) std::free(p);
  }

 private:
  std::vector<void*> free_;
};

inline StackPool& stack_pool() {
  thread_local StackPool pool;
  return pool;
}

// Boost.Context's stack allocator concept, backed by the pool.
struct PooledStack {
  ctx::stack_context allocate() { return stack_pool().allocate(); }
  void deallocate(ctx::stack_context& sc) { stack_pool().deallocate(sc); }
};

// A barrier of `expected` threads; a thread that exits stops being expected.
struct Barrier {
  int expected = 0;
  int arrived = 0;
  uint64_t generation = 0;
};

// The state of the block being run: its threads' fibers, their way back to the scheduler, and the
// barriers.
struct Block {
  int threads = 0;
  dim3 block, grid, block_idx;
  std::vector<ctx::fiber> fiber;  // suspended threads (empty once finished)
  std::vector<ctx::fiber> sink;   // each running thread's way back to the scheduler
  Barrier block_barrier;
  std::vector<Barrier> warp_barrier;
  std::vector<uint64_t> exchange;  // one slot per thread for shuffles
  uint64_t progress = 0;           // barrier generations completed and threads finished
  int running = 0;                 // the linear index of the running thread
};

inline thread_local Block* current_block = nullptr;

inline int linear_thread() { return current_block->running; }
inline int lane() { return linear_thread() % warpSize; }
inline int warp() { return linear_thread() / warpSize; }

// Suspends the running thread until the scheduler resumes it.
inline void yield() {
  Block& b = *current_block;
  const int t = b.running;
  b.sink[t] = std::move(b.sink[t]).resume();
}

inline void complete(Barrier& bar, Block& b) {
  bar.arrived = 0;
  ++bar.generation;
  ++b.progress;
}

inline void wait_at(Barrier& bar) {
  Block& b = *current_block;
  if (++bar.arrived == bar.expected) {
    complete(bar, b);
    return;
  }
  const uint64_t gen = bar.generation;
  while (bar.generation == gen) yield();
}

inline void leave(Barrier& bar, Block& b) {
  --bar.expected;
  if (bar.arrived > 0 && bar.arrived == bar.expected) complete(bar, b);
}

inline void sync_block() { wait_at(current_block->block_barrier); }
inline void sync_warp() { wait_at(current_block->warp_barrier[warp()]); }

// Every lane publishes its value, the warp meets, each reads its source lane, the warp meets again.
template <typename T>
T shuffle_from(T value, int src_lane) {
  static_assert(sizeof(T) <= sizeof(uint64_t));
  Block& b = *current_block;
  const size_t base = static_cast<size_t>(warp()) * warpSize;
  const int members = std::min(warpSize, b.threads - warp() * warpSize);
  if ((src_lane & (warpSize - 1)) >= members) {
    // On the GPU this reads a lane that does not exist: undefined. Kernels must use whole warps.
    std::fprintf(stderr, "emulation: warp shuffle from lane %d of a %d-thread warp\n", src_lane & (warpSize - 1),
                 members);
    std::abort();
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

// Points the CUDA names at thread `t` of the current block.
inline void enter(Block& b, int t) {
  b.running = t;
  threadIdx = dim3(t % b.block.x, (t / b.block.x) % b.block.y, t / (b.block.x * b.block.y));
  blockIdx = b.block_idx;
  blockDim = b.block;
  gridDim = b.grid;
}

template <typename Kernel, typename... Args>
void run_block(Block& b, const Kernel& kernel, const std::tuple<Args...>& args) {
  const int threads = b.threads;
  b.fiber.clear();
  b.sink.clear();
  b.sink.resize(threads);
  b.block_barrier = Barrier{.expected = threads};
  const int warps = (threads + warpSize - 1) / warpSize;
  b.warp_barrier.assign(warps, Barrier{});
  for (int w = 0; w < warps; ++w) b.warp_barrier[w].expected = std::min(warpSize, threads - w * warpSize);
  b.exchange.assign(static_cast<size_t>(warps) * warpSize, 0);
  for (int t = 0; t < threads; ++t) {
    b.fiber.emplace_back(std::allocator_arg, PooledStack{}, [&b, &kernel, &args, t](ctx::fiber&& sink) {
      b.sink[t] = std::move(sink);
      std::apply(kernel, args);
      // An exited thread no longer holds up its block's or its warp's barriers.
      leave(b.warp_barrier[t / warpSize], b);
      leave(b.block_barrier, b);
      ++b.progress;
      return std::move(b.sink[t]);
    });
  }
  int live = threads;
  while (live > 0) {
    const uint64_t before = b.progress;
    for (int t = 0; t < threads; ++t) {
      if (!b.fiber[t]) continue;
      enter(b, t);
      b.fiber[t] = std::move(b.fiber[t]).resume();
      if (!b.fiber[t]) --live;
    }
    if (live > 0 && b.progress == before) {
      std::fprintf(stderr, "emulation: deadlock: every live thread of block (%u,%u,%u) waits at a barrier the "
                           "others never reach\n", b.block_idx.x, b.block_idx.y, b.block_idx.z);
      std::abort();
    }
  }
}

template <typename Kernel, typename... Args>
void launch(dim3 grid, dim3 block, Kernel kernel, Args... args) {
  Block state;
  Block* outer = std::exchange(current_block, &state);
  state.threads = static_cast<int>(block.x * block.y * block.z);
  state.block = block;
  state.grid = grid;
  const std::tuple<Args...> packed(args...);
  for (unsigned bz = 0; bz < grid.z; ++bz) {
    for (unsigned by = 0; by < grid.y; ++by) {
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        state.block_idx = dim3(bx, by, bz);
        run_block(state, kernel, packed);
      }
    }
  }
  current_block = outer;
}

}  // namespace kvp::emu
