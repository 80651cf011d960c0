// The thread pool: every part runs once per call, each on its own fixed thread, and the pool wakes
// workers that went to sleep between calls.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "common/thread_pool.h"

namespace kvp {
namespace {

TEST(ThreadPool, EveryPartRunsOncePerCallOnItsOwnThread) {
  for (int threads : {1, 2, 3}) {
    ThreadPool pool(threads);
    ASSERT_EQ(pool.n_threads(), threads);
    std::vector<std::thread::id> owner(threads);
    std::vector<int64_t> runs(threads, 0);
    const std::thread::id caller = std::this_thread::get_id();
    for (int call = 0; call < 20000; ++call) {
      pool.run([&](int part, int n_parts) {
        ASSERT_EQ(n_parts, threads);
        if (call == 0) owner[part] = std::this_thread::get_id();
        EXPECT_EQ(owner[part], std::this_thread::get_id()) << "part " << part << " moved at call " << call;
        ++runs[part];  // each part is written by one thread; run() returns after all are done
      });
    }
    EXPECT_EQ(owner[0], caller) << "part 0 runs on the caller";
    for (int p = 0; p < threads; ++p) {
      EXPECT_EQ(runs[p], 20000) << "part " << p;
      for (int q = 0; q < p; ++q) EXPECT_NE(owner[p], owner[q]) << "parts " << q << " and " << p;
    }
  }
}

TEST(ThreadPool, WorkersAsleepBetweenCallsAreWokenAndFinishTheirPart) {
  ThreadPool pool(2);
  std::atomic<int> done{0};
  for (int call = 0; call < 5; ++call) {
    // Longer than a worker spins (0.5 ms): it is asleep on the condition variable when the call comes.
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    pool.run([&](int part, int) {
      if (part == 1) done.fetch_add(1);
    });
    EXPECT_EQ(done.load(), call + 1) << "the worker's part of call " << call << " had not finished";
  }
}

TEST(ThreadPool, ADestroyedPoolStopsSpinningAndSleepingWorkers) {
  {
    ThreadPool spinning(2);
    spinning.run([](int, int) {});
  }  // destroyed at once: its worker is still spinning
  {
    ThreadPool sleeping(2);
    sleeping.run([](int, int) {});
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }  // its worker sleeps
  SUCCEED();  // the test would hang on a worker that missed the stop
}

TEST(SplitRows, PartsCoverTheRowsInAlignedPieces) {
  for (int64_t n : {0, 1, 15, 16, 17, 100, 5632}) {
    for (int parts : {1, 2, 3}) {
      int64_t next = 0;
      for (int p = 0; p < parts; ++p) {
        const RowRange r = split_rows(n, p, parts, 16);
        EXPECT_EQ(r.begin, next) << n << " rows, part " << p;
        if (r.end < n) {
          EXPECT_EQ(r.end % 16, 0) << n << " rows, part " << p;
        }
        next = r.end;
      }
      EXPECT_EQ(next, n);
    }
  }
}

}  // namespace
}  // namespace kvp
