#include "common/thread_pool.h"

#include <algorithm>

#include "common/status.h"

namespace kvp {

ThreadPool::ThreadPool(int n_threads) {
  KVP_CHECK(n_threads >= 1, "a thread pool needs at least one thread, got {}", n_threads);
  for (int part = 1; part < n_threads; ++part) workers_.emplace_back([this, part] { worker(part); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
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
  pending_.store(n - 1, std::memory_order_relaxed);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    task_ = &task;
    generation_.fetch_add(1, std::memory_order_release);
  }
  wake_.notify_all();
  task(0, n);
  // The workers' share is about the caller's, so a short spin usually sees them finish.
  while (pending_.load(std::memory_order_acquire) != 0) std::this_thread::yield();
}

void ThreadPool::worker(int part) {
  uint64_t seen = 0;
  for (;;) {
    // Decode steps call run() every few tens of microseconds: spin a little before sleeping, so a
    // worker usually starts without a wake-up through the kernel.
    for (int spin = 0; spin < 4000 && generation_.load(std::memory_order_acquire) == seen; ++spin) {
#if defined(__x86_64__)
      __builtin_ia32_pause();
#endif
    }
    const std::function<void(int, int)>* task;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [&] { return stop_ || generation_.load() != seen; });
      if (stop_) return;
      seen = generation_.load();
      task = task_;
    }
    (*task)(part, n_threads());
    pending_.fetch_sub(1, std::memory_order_release);
  }
}

RowRange split_rows(int64_t n, int part, int n_parts, int64_t align) {
  const int64_t units = (n + align - 1) / align;
  const int64_t begin = units * part / n_parts * align;
  const int64_t end = units * (part + 1) / n_parts * align;
  return {std::min(begin, n), std::min(end, n)};
}

}  // namespace kvp
