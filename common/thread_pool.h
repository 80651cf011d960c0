// A fixed set of worker threads for data-parallel loops that run many times a second (each matrix
// product of a decode step), where starting threads per call would cost more than the work.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace kvp {

class ThreadPool {
 public:
  // `n_threads` >= 1 counts the calling thread: n_threads - 1 workers are started.
  explicit ThreadPool(int n_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int n_threads() const { return static_cast<int>(workers_.size()) + 1; }

  // Runs task(part, n_parts) for part = 0 .. n_threads() - 1, one part per thread, and returns
  // when all are done. Part 0 runs on the caller. Calls must not nest. Part p always runs on the
  // same thread, so data a part touches each call stays in that core's caches.
  void run(const std::function<void(int part, int n_parts)>& task);

 private:
  void worker(int part);

  std::vector<std::thread> workers_;
  // The fast path is lock-free: run() publishes the task and bumps generation_, which spinning
  // workers see within ~100 ns. A worker that has spun long with nothing to do sleeps on wake_;
  // run() takes mutex_ and notifies only when sleepers_ says one is asleep.
  // Each field is on its own cache line where two threads write it: a run costs the worker one
  // line transfer to see the task and the caller one to see it done (~100 ns each here).
  struct alignas(64) Done {
    std::atomic<uint64_t> generation{0};  // the last generation this worker finished
  };
  std::mutex mutex_;
  std::condition_variable wake_;
  alignas(64) std::atomic<const std::function<void(int, int)>*> task_{nullptr};
  std::atomic<uint64_t> generation_{0};
  std::atomic<bool> stop_{false};
  alignas(64) std::atomic<int> sleepers_{0};  // workers asleep (or about to be) on wake_
  std::vector<Done> done_;                    // per worker
};

// The rows [begin, end) of `n` split into `n_parts` nearly equal parts, `align` rows at a time.
struct RowRange {
  int64_t begin;
  int64_t end;
};
RowRange split_rows(int64_t n, int part, int n_parts, int64_t align = 1);

}  // namespace kvp
