// Continuous batching under a KV pool (kvplan serve): one thread steps the batch of every running
// request; between steps it admits waiting requests whose cache fits the pool, prefills them in
// chunks beside the others' decode rows, and frees a finished or cancelled request's cache at once.
//
// Admission uses the memory model's bytes (KvBudgets, docs/ARCHITECTURE.md): a request is admitted when the
// bytes in use plus its steady cache plus its prompt's prefill scratch fit `kv_memory`. In use:
// each running request's cache, plus its scratch while its prompt is still being prefilled. So
// with requests of equal shape, at most floor((kv_memory - scratch) / steady) run at once (what
// `kvplan capacity --kv-memory` reports).
//
// Batching does not change results: every row is computed with the same floating-point
// operations whatever else is in the step (CpuBackend), and each request samples from its own
// generator, so a request's tokens equal `kvplan run` with the same prompt, budgets and seed.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "executor/decoder.h"
#include "executor/model/tokenizer.h"
#include "executor/sampler.h"
#include "executor/serve/metrics.h"
#include "executor/serve/stop_matcher.h"

namespace kvp::serve {

struct JobResult {
  std::string finish_reason;    // "stop" (an end token or a stop string), "length", "cancelled"
  std::string text;             // the completion (cut before a stop string)
  std::vector<int32_t> tokens;  // generated tokens (an end token is not kept)
  int prompt_tokens = 0;
  int completion_tokens = 0;
};

// One request's work. The HTTP side fills the inputs and submits it; the scheduler thread calls
// on_text and then on_done exactly once, and never touches the job after on_done.
struct Job {
  std::vector<int32_t> prompt;  // non-empty
  int max_tokens = 16;          // >= 1
  SamplerOptions sampler;
  std::vector<std::string> stop;  // stop strings
  bool ignore_eos = false;        // the model's end tokens do not stop it (stop strings still do)
  KvBudgets budgets;
  std::shared_ptr<const Policy> policy;  // null: keep everything
  std::string plan_name;                 // reported by /slots

  // Text as it is generated (held back while it may begin a stop string); scheduler thread.
  std::function<void(std::string_view text)> on_text;
  std::function<void(const JobResult&)> on_done;

  // Set from any thread: the scheduler stops the request at its next step.
  std::atomic<bool> cancelled{false};

  // Set by the scheduler at submit.
  uint64_t id = 0;
  int64_t steady_bytes = 0;   // the cache
  int64_t scratch_bytes = 0;  // the prompt's prefill scratch, held until the prompt is cut
  std::chrono::steady_clock::time_point submitted;
};

struct SchedulerOptions {
  int64_t kv_memory = 0;    // the pool, bytes (> 0)
  int max_queue = 64;       // waiting requests beyond which submit refuses
  int max_running = 256;    // sequences the backend holds at most
  int prefill_chunk = 512;  // prompt rows per step, all prefilling requests together
  bool prefill_evict = false;
  bool start_paused = false;  // step nothing until resume() (tests submit a batch first)
  // The pool's element type and policy: a device backend runs one policy for every sequence
  // (Backend::reset_pool); the CPU backend runs each job's own.
  KvDtype kv_dtype = KvDtype::kF32;
  std::shared_ptr<const Policy> pool_policy;
};

// A running request, for /slots.
struct SlotInfo {
  uint64_t id;
  int seq;
  int position;  // positions run through the model so far
  int prompt_tokens;
  int completion_tokens;
  bool prefilling;
  int64_t kv_bytes;      // its cache (and scratch while prefilling)
  int64_t budget_slots;  // slots of its cache, all layers and heads
  std::string policy;
  std::string plan;
};

class Scheduler {
 public:
  // `decoder`'s backend must open single sequences; `tokenizer` turns tokens into text. Both
  // outlive the scheduler, which starts its thread here.
  Scheduler(Decoder& decoder, const Tokenizer& tokenizer, const SchedulerOptions& options);
  ~Scheduler();  // cancels what remains and joins the thread

  enum class Submit { kQueued, kQueueFull, kTooLarge, kStopping };
  // Queues `job` (its bytes are computed here). kTooLarge: its cache and scratch exceed the pool.
  Submit submit(const std::shared_ptr<Job>& job);

  // Starts stepping (after SchedulerOptions::start_paused).
  void resume();
  // Stops admitting; running and waiting requests go on. cancel_all() cancels all of them.
  void stop_admitting();
  void cancel_all();
  bool idle() const;  // nothing running or waiting

  // Steps taken so far: for tests that wait for the scheduler.
  int64_t steps() const { return steps_.load(); }

  struct Snapshot {
    int running = 0, waiting = 0;
    int64_t kv_bytes_in_use = 0, kv_memory = 0, peak_kv_bytes_in_use = 0;
    int peak_running = 0;
    int64_t backend_kv_bytes = 0;  // what the backend has allocated, for the check against the model
    std::vector<SlotInfo> slots;
  };
  Snapshot snapshot() const;
  Metrics& metrics() { return metrics_; }
  const SchedulerOptions& options() const { return options_; }
  // Bytes the memory model gives a job: its cache and its prompt's scratch.
  int64_t scratch_bytes(const KvBudgets& budgets, int prompt_len) const;

 private:
  struct Active;
  void loop();
  void admit_locked();
  void cancel_all_locked();
  void step();
  void finish(Active& a, const std::string& reason);

  Decoder& decoder_;
  Backend& backend_;
  const Tokenizer& tokenizer_;
  SchedulerOptions options_;
  Metrics metrics_;

  mutable std::mutex mu_;
  std::condition_variable wake_;
  std::deque<std::shared_ptr<Job>> waiting_;
  std::vector<std::unique_ptr<Active>> active_;  // [max_running], null where the sequence is free
  int64_t in_use_ = 0;
  int64_t peak_in_use_ = 0;
  int peak_running_ = 0;
  int running_ = 0;
  bool admitting_ = true;
  bool paused_ = false;
  int64_t allocated_ = 0;  // the backend's kv_bytes_allocated() after the last change
  bool quit_ = false;
  uint64_t next_id_ = 1;
  std::atomic<int64_t> steps_{0};
  std::vector<int32_t> stop_tokens_;
  std::thread thread_;
};

}  // namespace kvp::serve
