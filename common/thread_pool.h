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
  // when all are done. Part 0 runs on the caller. Calls must not nest.
  void run(const std::function<void(int part, int n_parts)>& task);

 private:
  void worker(int part);

  std::vector<std::thread> workers_;
  std::mutex mutex_;
  std::condition_variable wake_;
  const std::function<void(int, int)>* task_ = nullptr;
  std::atomic<uint64_t> generation_{0};  // bumped (under mutex_) per run
  std::atomic<int> pending_{0}; // workers still running the current task
  bool stop_ = false;
};

// The rows [begin, end) of `n` split into `n_parts` nearly equal parts, `align` rows at a time.
struct RowRange {
  int64_t begin;
  int64_t end;
};
RowRange split_rows(int64_t n, int part, int n_parts, int64_t align = 1);

}  // namespace kvp
