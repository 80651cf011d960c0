// The serve scheduler in process: requests batched continuously (admitted mid-run, prompts
// prefilled in chunks beside other requests' decode rows) give exactly the tokens of a lone
// generate() with the same prompt, budgets and seed, as kvplan run makes them; admission fills
// the pool to sequences_in_pool (kvplan capacity --kv-memory) and no further; cancellation frees
// the cache at once.
#include "executor/serve/scheduler.h"

#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "executor/cpu/cpu_backend.h"
#include "executor/generator.h"
#include "executor/gpu/gpu_backend.h"
#include "planner/capacity.h"
#include "tests/support/test_support.h"

namespace kvp::serve {
namespace {

using test::default_config;
using test::default_model;

KvBudgets uniform(int budget, const Policy* policy) {
  const ModelConfig& c = default_config();
  KvBudgets b = KvBudgets::uniform(c.n_layers, c.n_kv_heads, c.head_dim(), budget);
  b.aux_floats_per_slot = policy ? policy->aux_floats_per_slot() : 0;
  return b;
}

std::shared_ptr<const Policy> policy(const std::string& name, int budget) {
  auto p = make_policy(name, published_defaults(name, budget));
  EXPECT_TRUE(p.ok());
  return std::shared_ptr<const Policy>(std::move(p).value());
}

// A natural prompt of n tokens: the model's greedy continuation of BOS.
std::vector<int32_t> natural_prompt(int n) {
  CpuBackend backend(default_model().weights);
  Decoder decoder(backend);
  GenerateOptions options{.steps = n - 1};
  options.stop_at_eos = false;
  return generate(decoder, {{kBosToken}}, {full_cache_budgets(default_config(), n)}, options).tokens[0];
}

struct Spec {
  std::vector<int32_t> prompt;
  int max_tokens;
  SamplerOptions sampler;
  std::string policy;  // empty: full cache
  int budget = 0;
  std::vector<std::string> stop;
};

std::shared_ptr<Job> make_job(const Spec& s) {
  auto job = std::make_shared<Job>();
  job->prompt = s.prompt;
  job->max_tokens = s.max_tokens;
  job->sampler = s.sampler;
  job->stop = s.stop;
  if (s.policy.empty()) {
    job->budgets = uniform(static_cast<int>(s.prompt.size()) + s.max_tokens - 1, nullptr);
  } else {
    job->policy = policy(s.policy, s.budget);
    job->budgets = uniform(s.budget, job->policy.get());
  }
  return job;
}

// What kvplan run gives for the spec alone: its generated tokens, and its text piece by piece.
// `evict_chunk` > 0: run --prefill-chunk C --prefill-evict. `gpu`: on the emulated GPU backend.
std::pair<std::vector<int32_t>, std::string> alone(const Spec& s, int evict_chunk = 0, bool gpu = false) {
  std::unique_ptr<Backend> backend_ptr;
  if (gpu) {
    backend_ptr = std::make_unique<GpuBackend>(default_model().weights, make_emulated_device());
  } else {
    backend_ptr = std::make_unique<CpuBackend>(default_model().weights);
  }
  Backend& backend = *backend_ptr;
  Decoder decoder(backend);
  const Tokenizer& tok = default_model().tokenizer;
  GenerateOptions options{.steps = static_cast<int>(s.prompt.size()) + s.max_tokens - 1, .sampler = s.sampler};
  if (evict_chunk > 0) options.prefill_chunk = evict_chunk, options.prefill_evict = true;
  options.stop_tokens = generation_stop_tokens(tok);
  const std::shared_ptr<Job> job = make_job(s);
  options.policy = job->policy;
  const GenerateResult r = generate(decoder, {s.prompt}, {job->budgets}, options);
  std::vector<int32_t> generated(r.tokens[0].begin() + static_cast<long>(s.prompt.size()), r.tokens[0].end());
  std::string text;
  int32_t prev = s.prompt.back();
  for (int32_t t : generated) text += tok.decode(prev, t), prev = t;
  return {generated, text};
}

// Collects the results of requests submitted while the scheduler is paused (so that its first
// step sees them all).
struct Batch {
  explicit Batch(size_t n) : results(n), streamed(n) {}
  std::mutex mu;
  std::condition_variable cv;
  std::vector<JobResult> results;
  std::vector<std::string> streamed;
  int done = 0;

  void attach(Job& job, int i) {
    job.on_text = [this, i](std::string_view t) {
      std::lock_guard lock(mu);
      streamed[i] += t;
    };
    job.on_done = [this, i](const JobResult& r) {
      std::lock_guard lock(mu);
      results[i] = r;
      ++done;
      cv.notify_all();
    };
  }
  // The job of `spec` as request i, submitted (it must be queued).
  std::shared_ptr<Job> submit(Scheduler& scheduler, const Spec& spec, int i) {
    auto job = make_job(spec);
    attach(*job, i);
    EXPECT_EQ(scheduler.submit(job), Scheduler::Submit::kQueued);
    return job;
  }
  void wait(int n) {
    std::unique_lock lock(mu);
    ASSERT_TRUE(cv.wait_for(lock, std::chrono::seconds(120), [&] { return done >= n; }));
  }
};

TEST(Scheduler, BatchedRequestsGetTheTokensOfALoneRun) {
  const Tokenizer& tok = default_model().tokenizer;
  const std::vector<int32_t> long_prompt = natural_prompt(150);
  const std::vector<Spec> specs = {
      {tok.encode("Once upon a time"), 60, {}, "", 0, {}},
      {tok.encode("The dog"), 80, {.temperature = 0.8f, .top_p = 0.9f, .seed = 11}, "vatp", 32, {}},
      {long_prompt, 40, {}, "h2o", 48, {}},
      {long_prompt, 30, {.temperature = 1.0f, .seed = 3}, "tova", 40, {}},
      {tok.encode("Lily and Ben"), 100, {}, "snapkv", 40, {}},
      {{tok.bos()}, 400, {}, "", 0, {}},  // long enough to end with an end token
      {tok.encode("Once upon a time"), 60, {}, "window", 24, {}},
      {long_prompt, 25, {.temperature = 0.5f, .seed = 99}, "", 0, {}},
      {tok.encode("Tom had a red ball"), 50, {.temperature = 0.9f, .top_p = 0.5f, .seed = 5}, "vatp", 20, {}},
      {tok.encode("Once upon a time"), 60, {}, "", 0, {"Lily", "park"}},
  };
  CpuBackend backend(default_model().weights, 2);
  Decoder decoder(backend);
  // Prompt rows in chunks of 16 per step, all prompts together: the long prompts are prefilled
  // over many steps while the short ones already decode.
  Scheduler scheduler(decoder, tok,
                      SchedulerOptions{.kv_memory = int64_t{1} << 30, .prefill_chunk = 16, .start_paused = true});
  Batch batch(specs.size());
  for (size_t i = 0; i < specs.size(); ++i) batch.submit(scheduler, specs[i], static_cast<int>(i));
  scheduler.resume();
  batch.wait(static_cast<int>(specs.size()));
  bool ended_by_eos = false;
  for (size_t i = 0; i < specs.size(); ++i) {
    SCOPED_TRACE(testing::Message() << "request " << i);
    const auto [tokens, text] = alone(specs[i]);
    const JobResult& r = batch.results[i];
    EXPECT_EQ(r.prompt_tokens, static_cast<int>(specs[i].prompt.size()));
    EXPECT_EQ(batch.streamed[i], r.text);
    if (!specs[i].stop.empty()) {
      // Cut before the first stop string; the tokens run one past it.
      const size_t at = std::min(text.find("Lily"), text.find("park"));
      ASSERT_NE(at, std::string::npos);
      EXPECT_EQ(r.text, text.substr(0, at));
      EXPECT_EQ(r.finish_reason, "stop");
      EXPECT_EQ(std::vector<int32_t>(tokens.begin(), tokens.begin() + static_cast<long>(r.tokens.size())), r.tokens);
      continue;
    }
    EXPECT_EQ(r.tokens, tokens);
    EXPECT_EQ(r.text, text);
    EXPECT_EQ(r.completion_tokens, static_cast<int>(tokens.size()));
    EXPECT_EQ(r.finish_reason, static_cast<int>(tokens.size()) == specs[i].max_tokens ? "length" : "stop");
    ended_by_eos |= r.finish_reason == "stop";
  }
  EXPECT_TRUE(ended_by_eos) << "no request ended with an end token";
  const Scheduler::Snapshot s = scheduler.snapshot();
  EXPECT_EQ(s.running, 0);
  EXPECT_EQ(s.kv_bytes_in_use, 0);
  EXPECT_EQ(s.backend_kv_bytes, 0);
  EXPECT_EQ(backend.kv_bytes_allocated(), 0);
  EXPECT_EQ(s.peak_running, static_cast<int>(specs.size()));
}

TEST(Scheduler, PrefillEvictCutsWhereKvplanRunCutsAndHoldsItsSmallerScratch) {
  // --prefill-evict with chunks of 16: the cuts fall after positions 15, 31, ... however the
  // scheduler spreads a prompt's rows over steps (here 10 prompt rows per step, all prompts
  // together), so the tokens equal run --prefill-chunk 16 --prefill-evict.
  const std::vector<int32_t> long_prompt = natural_prompt(120);
  const std::vector<Spec> specs = {{long_prompt, 40, {}, "vatp", 32, {}},
                                   {long_prompt, 40, {}, "h2o", 24, {}},
                                   {long_prompt, 40, {.temperature = 0.8f, .seed = 4}, "tova", 40, {}}};
  CpuBackend backend(default_model().weights);
  Decoder decoder(backend);
  Scheduler scheduler(
      decoder, default_model().tokenizer,
      SchedulerOptions{
          .kv_memory = int64_t{1} << 30, .prefill_chunk = 16, .prefill_evict = true, .start_paused = true});
  Batch batch(specs.size());
  for (size_t i = 0; i < specs.size(); ++i) {
    const std::shared_ptr<Job> job = batch.submit(scheduler, specs[i], static_cast<int>(i));
    // The scratch the admission charges: budget + one chunk per head, not the whole prompt.
    EXPECT_EQ(job->scratch_bytes, job->budgets.prefill_scratch(120, 16).kv_bytes());
    EXPECT_LT(job->scratch_bytes, job->budgets.prefill_scratch(120, 0).kv_bytes());
  }
  scheduler.resume();
  batch.wait(static_cast<int>(specs.size()));
  for (size_t i = 0; i < specs.size(); ++i) {
    SCOPED_TRACE(testing::Message() << "request " << i);
    const auto with_evict = alone(specs[i], 16);
    EXPECT_EQ(batch.results[i].tokens, with_evict.first);
    EXPECT_EQ(batch.results[i].text, with_evict.second);
  }
  // The cuts matter: without --prefill-evict some request generates other tokens.
  int differ = 0;
  for (const Spec& s : specs) differ += alone(s).first != alone(s, 16).first;
  EXPECT_GT(differ, 0);
}

TEST(Scheduler, AdmissionFillsThePoolAsCapacityPredicts) {
  const Tokenizer& tok = default_model().tokenizer;
  const Spec spec{tok.encode("Once upon a time there was"), 120, {}, "vatp", 40, {}};
  const std::shared_ptr<Job> probe = make_job(spec);
  CpuBackend backend(default_model().weights);
  Decoder decoder(backend);
  for (const int64_t slack : {int64_t{0}, int64_t{-1}}) {
    const int64_t steady = probe->budgets.kv_bytes();
    const int64_t scratch = probe->budgets.prefill_scratch(static_cast<int>(spec.prompt.size()), 0).kv_bytes();
    const int64_t pool = 5 * steady + scratch + slack;  // 5 fit exactly; one byte less, 4
    const int64_t expected = sequences_in_pool(pool, steady, scratch);
    EXPECT_EQ(expected, slack == 0 ? 5 : 4);
    Scheduler scheduler(decoder, tok, SchedulerOptions{.kv_memory = pool, .start_paused = true});
    const int n = 12;
    Batch batch(n);
    for (int i = 0; i < n; ++i) batch.submit(scheduler, spec, i);
    scheduler.resume();
    batch.wait(n);
    const Scheduler::Snapshot s = scheduler.snapshot();
    EXPECT_EQ(s.peak_running, expected) << "pool " << pool;
    EXPECT_LE(s.peak_kv_bytes_in_use, pool);
    // The last one admitted came in beside the others' caches with its own scratch.
    EXPECT_GE(s.peak_kv_bytes_in_use, expected * steady + scratch);
    for (const JobResult& r : batch.results) EXPECT_EQ(r.finish_reason, "length");
  }
  // A request whose cache and scratch alone exceed the pool is refused at once.
  Scheduler small(decoder, tok, SchedulerOptions{.kv_memory = probe->budgets.kv_bytes()});
  EXPECT_EQ(small.submit(make_job(spec)), Scheduler::Submit::kTooLarge);
}

TEST(Scheduler, CancellationFreesTheCacheAtOnce) {
  const Tokenizer& tok = default_model().tokenizer;
  CpuBackend backend(default_model().weights);
  Decoder decoder(backend);
  const Spec spec{tok.encode("Once"), 500, {}, "", 0, {}};
  const std::shared_ptr<Job> probe = make_job(spec);
  const int64_t steady = probe->budgets.kv_bytes();
  const int64_t one = steady + probe->budgets.prefill_scratch(static_cast<int>(spec.prompt.size()), 0).kv_bytes();
  // Room for one: the second waits, and is cancelled before it runs; the queue holds one.
  Scheduler scheduler(decoder, tok, SchedulerOptions{.kv_memory = one, .max_queue = 1});
  Batch batch(2);
  auto running = make_job(spec), waiting = make_job(spec);
  batch.attach(*running, 0);
  batch.attach(*waiting, 1);
  std::atomic<int> pieces{0};
  auto on_text = running->on_text;
  running->on_text = [&pieces, on_text](std::string_view t) {
    on_text(t);
    ++pieces;
  };
  ASSERT_EQ(scheduler.submit(running), Scheduler::Submit::kQueued);
  while (pieces < 3) std::this_thread::yield();
  EXPECT_EQ(scheduler.snapshot().backend_kv_bytes, steady);
  ASSERT_EQ(scheduler.submit(waiting), Scheduler::Submit::kQueued);
  EXPECT_EQ(scheduler.submit(make_job(spec)), Scheduler::Submit::kQueueFull);
  waiting->cancelled = true;
  batch.wait(1);
  EXPECT_EQ(batch.results[1].finish_reason, "cancelled");
  EXPECT_EQ(batch.results[1].completion_tokens, 0);
  EXPECT_EQ(scheduler.snapshot().running, 1);  // the first goes on
  running->cancelled = true;
  batch.wait(2);
  EXPECT_EQ(batch.results[0].finish_reason, "cancelled");
  EXPECT_GE(batch.results[0].completion_tokens, 3);
  EXPECT_LT(batch.results[0].completion_tokens, 500);
  const Scheduler::Snapshot s = scheduler.snapshot();
  EXPECT_EQ(s.kv_bytes_in_use, 0);
  EXPECT_EQ(s.backend_kv_bytes, 0);
  EXPECT_EQ(backend.kv_bytes_allocated(), 0);
  EXPECT_EQ(s.waiting, 0);
}

// The specs batched on the emulated GPU backend's pool under vatp at budget 32 (prompt rows 16 a
// step; `evict`: --prefill-evict with chunks of 16): each request gets the tokens and
// text of a lone run on the same backend, and the pool is empty at the end.
void batch_on_the_emulated_gpu(const std::vector<Spec>& specs, bool evict) {
  GpuBackend backend(default_model().weights, make_emulated_device());
  Decoder decoder(backend);
  Scheduler scheduler(decoder, default_model().tokenizer,
                      SchedulerOptions{.kv_memory = 4 << 20, .prefill_chunk = 16, .prefill_evict = evict,
                                       .start_paused = true, .pool_policy = policy("vatp", 32)});
  Batch batch(specs.size());
  for (size_t i = 0; i < specs.size(); ++i) batch.submit(scheduler, specs[i], static_cast<int>(i));
  scheduler.resume();
  batch.wait(static_cast<int>(specs.size()));
  for (size_t i = 0; i < specs.size(); ++i) {
    SCOPED_TRACE(testing::Message() << "request " << i);
    const auto [tokens, text] = alone(specs[i], evict ? 16 : 0, true);
    EXPECT_EQ(batch.results[i].tokens, tokens);
    EXPECT_EQ(batch.results[i].text, text);
  }
  EXPECT_EQ(backend.kv_bytes_allocated(), 0);
}

// The GPU backend's pool (reset_pool): every request under one policy, caches carved from one
// arena and given back. Batched, they get the tokens each gets alone on the same backend.
TEST(SchedulerOnTheEmulatedGpu, BatchedRequestsGetTheTokensOfALoneRun) {
  const Tokenizer& tok = default_model().tokenizer;
  // One policy for the pool: vatp with the published parameters of budget 32.
  batch_on_the_emulated_gpu({{tok.encode("Once upon a time"), 24, {}, "vatp", 32, {}},
                             {natural_prompt(40), 20, {.temperature = 0.8f, .top_p = 0.9f, .seed = 7}, "vatp", 32, {}},
                             {tok.encode("The dog"), 30, {}, "vatp", 32, {}}},
                            false);
}

// --prefill-evict on the GPU pool: the scheduler ends a step's prompt rows at the next cut (the
// device cuts at the end of a step's rows), so each request gets the tokens of kvplan run
// --prefill-chunk 16 --prefill-evict on the same backend, and greedily the CPU's.
TEST(SchedulerOnTheEmulatedGpu, PrefillEvictCutsWhereKvplanRunCuts) {
  const std::vector<int32_t> long_prompt = natural_prompt(100);
  const std::vector<Spec> specs = {{long_prompt, 30, {}, "vatp", 32, {}},
                                   {natural_prompt(70), 30, {.temperature = 0.8f, .seed = 4}, "vatp", 32, {}},
                                   {long_prompt, 25, {}, "vatp", 32, {}}};
  batch_on_the_emulated_gpu(specs, true);
  int differ = 0;
  for (const Spec& s : specs) {
    const std::vector<int32_t> evicting = alone(s, 16, true).first;
    if (s.sampler.temperature == 0.0f) {
      EXPECT_EQ(evicting, alone(s, 16).first) << "the CPU's greedy tokens";
    }
    differ += evicting != alone(s, 0, true).first;
  }
  EXPECT_GT(differ, 0) << "the cuts matter: without --prefill-evict some request generates other tokens";
}

TEST(GpuPoolEmulated, ClosedRangesAreReusedAndMerged) {
  GpuBackend gpu(default_model().weights, make_emulated_device());
  const std::shared_ptr<const Policy> p = policy("h2o", 32);
  const int64_t slot = uniform(1, p.get()).kv_bytes() / (default_config().n_layers * default_config().n_kv_heads);
  const int heads = default_config().n_layers * default_config().n_kv_heads;
  // Room for 100 slots per head.
  gpu.reset_pool(4, slot * heads * 100, KvDtype::kF32, p);
  gpu.open_sequence(0, uniform(40, p.get()), p);
  gpu.open_sequence(1, uniform(30, p.get()), p);
  gpu.open_sequence(2, uniform(30, p.get()), p);
  EXPECT_EQ(gpu.kv_bytes_allocated(), uniform(100, p.get()).kv_bytes());
  gpu.close_sequence(1);
  EXPECT_EQ(gpu.kv_bytes_allocated(), uniform(70, p.get()).kv_bytes());
  gpu.open_sequence(3, uniform(30, p.get()), p);  // the hole sequence 1 left
  gpu.close_sequence(3);
  gpu.close_sequence(0);  // merged with the hole: 70 slots free in a row
  gpu.open_sequence(1, uniform(70, p.get()), p);
  EXPECT_EQ(gpu.kv_bytes_allocated(), uniform(100, p.get()).kv_bytes());
  EXPECT_DEATH_IF_SUPPORTED(gpu.open_sequence(0, uniform(32, p.get()), p), "no free range");
  gpu.close_sequence(1);
  gpu.close_sequence(2);
  EXPECT_EQ(gpu.kv_bytes_allocated(), 0);
  gpu.open_sequence(0, uniform(100, p.get()), p);  // everything merged back into one range
  // Another policy than the pool's is refused by name (the Service gives every request the pool's).
  const std::shared_ptr<const Policy> vatp = policy("vatp", 32);
  EXPECT_DEATH_IF_SUPPORTED(gpu.open_sequence(1, uniform(10, vatp.get()), vatp), "pool runs h2o");
}

}  // namespace
}  // namespace kvp::serve
