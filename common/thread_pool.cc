#include "common/thread_pool.h"

#include <algorithm>
#include <chrono>

#include "common/status.h"

namespace kvp {
namespace {

inline void cpu_relax() {
#if defined(__x86_64__)
  __builtin_ia32_pause();
#endif
}

// How long a worker spins for the next task before it sleeps. Decode steps call run() every few
// microseconds, and a step's calls follow each other by less; tokens follow each other within
// tens of microseconds. A sleeping worker costs a futex wake-up (several microseconds here).
constexpr auto kSpinFor = std::chrono::microseconds(500);
// Past this, a waiting thread yields between looks instead of only pausing: with more threads
// than free cores (another process, or --threads above the core count), the thread it waits for
// may be the one kept off a core by the spinning. 20 000 calls of 3 threads on 2 cores took 9.4 s
// without it.
constexpr auto kPauseFor = std::chrono::microseconds(20);

// Waits until done() holds: pauses, then yields (see kPauseFor), and gives up when `until` passes.
template <typename Done>
bool wait_for(Done&& done, std::chrono::steady_clock::time_point until) {
  const auto start = std::chrono::steady_clock::now();
  for (int spin = 0;; ++spin) {
    if (done()) return true;
    if ((spin & 63) == 63) {
      const auto now = std::chrono::steady_clock::now();
      if (now > until) return false;
      if (now - start > kPauseFor) {
        std::this_thread::yield();
        continue;
      }
    }
    cpu_relax();
  }
}

}  // namespace

ThreadPool::ThreadPool(int n_threads) {
  KVP_CHECK(n_threads >= 1, "a thread pool needs at least one thread, got {}", n_threads);
  done_ = std::vector<Done>(n_threads);
  for (int part = 1; part < n_threads; ++part) workers_.emplace_back([this, part] { worker(part); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_.store(true);
    generation_.fetch_add(1);  // wakes the spinning workers too
  }
  wake_.notify_all();
  for (std::thread& t : workers_) t.join();
}

void ThreadPool::run(const std::function<void(int, int)>& task) {
  const int n = n_threads();
  if (n == 1) {
    task(0, 1);
    return;
  }
  task_.store(&task, std::memory_order_relaxed);
  // seq_cst: either a worker going to sleep sees the new generation, or we see its sleepers_.
  const uint64_t generation = generation_.load(std::memory_order_relaxed) + 1;
  generation_.store(generation, std::memory_order_seq_cst);
  if (sleepers_.load(std::memory_order_seq_cst) > 0) {
    std::lock_guard<std::mutex> lock(mutex_);
    wake_.notify_all();
  }
  task(0, n);
  for (int part = 1; part < n; ++part) {
    wait_for([&] { return done_[part].generation.load(std::memory_order_acquire) == generation; },
             std::chrono::steady_clock::time_point::max());
  }
}

void ThreadPool::worker(int part) {
  uint64_t seen = 0;
  for (;;) {
    uint64_t now = seen;
    wait_for([&] { return (now = generation_.load(std::memory_order_acquire)) != seen; },
             std::chrono::steady_clock::now() + kSpinFor);
    if (now == seen) {
      std::unique_lock<std::mutex> lock(mutex_);
      sleepers_.fetch_add(1, std::memory_order_seq_cst);
      wake_.wait(lock, [&] { return generation_.load(std::memory_order_seq_cst) != seen; });
      sleepers_.fetch_sub(1, std::memory_order_relaxed);
      now = generation_.load(std::memory_order_acquire);
    }
    if (stop_.load(std::memory_order_acquire)) return;
    seen = now;
    (*task_.load(std::memory_order_relaxed))(part, n_threads());
    done_[part].generation.store(now, std::memory_order_release);
  }
}

RowRange split_rows(int64_t n, int part, int n_parts, int64_t align) {
  const int64_t units = (n + align - 1) / align;
  const int64_t begin = units * part / n_parts * align;
  const int64_t end = units * (part + 1) / n_parts * align;
  return {std::min(begin, n), std::min(end, n)};
}

}  // namespace kvp
