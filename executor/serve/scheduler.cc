#include "executor/serve/scheduler.h"

#include <algorithm>

#include "executor/generator.h"

namespace kvp::serve {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

}  // namespace

// A request holding sequence `seq` of the backend.
struct Scheduler::Active {
  Active(std::shared_ptr<Job> j, int s)
      : job(std::move(j)), seq(s), sampler(job->sampler, 0), stop(job->stop), last_token(job->prompt.back()) {}

  std::shared_ptr<Job> job;
  int seq;
  Sampler sampler;  // stream 0 of the request's seed: the draws of `kvplan run --seed S` with one prompt
  StopMatcher stop;
  // Read by snapshot() on other threads.
  std::atomic<int> prefilled{0};  // prompt rows run
  std::atomic<int> n_generated{0};
  int32_t last_token;  // the newest token: the prompt's last, then each generated one (fed next step)
  std::vector<int32_t> generated;
  int64_t evicted = 0;  // tokens evicted so far, all layers and heads
  Clock::time_point last_token_at;

  int prompt_len() const { return static_cast<int>(job->prompt.size()); }
  bool prefilling() const { return prefilled < prompt_len(); }
  // Positions run through the model: the prompt's, then one per generated token fed.
  int positions() const { return prefilled + std::max(0, n_generated - 1); }
};

Scheduler::Scheduler(Decoder& decoder, const Tokenizer& tokenizer, const SchedulerOptions& options)
    : decoder_(decoder), backend_(decoder.backend()), tokenizer_(tokenizer), options_(options) {
  KVP_CHECK(backend_.opens_sequences(), "the {} backend cannot serve: it does not open single sequences",
            backend_.name());
  KVP_CHECK(options_.kv_memory > 0 && options_.max_running >= 1 && options_.prefill_chunk >= 1 &&
            options_.max_queue >= 0);
  backend_.set_prefill_mode(PrefillMode{.evict_chunk = options_.prefill_evict ? options_.prefill_chunk : 0});
  backend_.reset_pool(options_.max_running, options_.kv_memory, options_.kv_dtype, options_.pool_policy);
  active_.resize(options_.max_running);
  stop_tokens_ = generation_stop_tokens(tokenizer_);  // as kvplan run stops
  paused_ = options_.start_paused;
  thread_ = std::thread([this] { loop(); });
}

Scheduler::~Scheduler() {
  {
    std::lock_guard lock(mu_);
    quit_ = true;
  }
  wake_.notify_all();
  thread_.join();
}

int64_t Scheduler::scratch_bytes(const KvBudgets& budgets, int prompt_len) const {
  if (!backend_.holds_prompt_scratch(prompt_len, options_.prefill_chunk)) return 0;
  return budgets.prefill_scratch(prompt_len, options_.prefill_evict ? options_.prefill_chunk : 0).kv_bytes();
}

Scheduler::Submit Scheduler::submit(const std::shared_ptr<Job>& job) {
  KVP_CHECK(!job->prompt.empty() && job->max_tokens >= 1);
  job->steady_bytes = job->budgets.kv_bytes();
  job->scratch_bytes = scratch_bytes(job->budgets, static_cast<int>(job->prompt.size()));
  job->submitted = Clock::now();
  {
    std::lock_guard lock(mu_);
    if (!admitting_ || quit_) return Submit::kStopping;
    if (job->steady_bytes + job->scratch_bytes > options_.kv_memory) {
      metrics_.request_rejected("too_large");
      return Submit::kTooLarge;
    }
    if (static_cast<int>(waiting_.size()) >= options_.max_queue) {
      metrics_.request_rejected("queue_full");
      return Submit::kQueueFull;
    }
    job->id = next_id_++;
    waiting_.push_back(job);
  }
  wake_.notify_all();
  return Submit::kQueued;
}

void Scheduler::resume() {
  {
    std::lock_guard lock(mu_);
    paused_ = false;
  }
  wake_.notify_all();
}

void Scheduler::stop_admitting() {
  std::lock_guard lock(mu_);
  admitting_ = false;
}

void Scheduler::cancel_all() {
  std::lock_guard lock(mu_);
  cancel_all_locked();
  wake_.notify_all();
}

void Scheduler::cancel_all_locked() {
  for (const auto& j : waiting_) j->cancelled = true;
  for (const auto& a : active_) {
    if (a) a->job->cancelled = true;
  }
}

bool Scheduler::idle() const {
  std::lock_guard lock(mu_);
  return running_ == 0 && waiting_.empty();
}

Scheduler::Snapshot Scheduler::snapshot() const {
  std::lock_guard lock(mu_);
  Snapshot s{.running = running_,
             .waiting = static_cast<int>(waiting_.size()),
             .kv_bytes_in_use = in_use_,
             .kv_memory = options_.kv_memory,
             .peak_kv_bytes_in_use = peak_in_use_,
             .peak_running = peak_running_};
  s.backend_kv_bytes = allocated_;
  for (const auto& a : active_) {
    if (!a) continue;
    const int generated = a->n_generated, prefilled = a->prefilled;  // read once: the scheduler moves on
    s.slots.push_back(SlotInfo{.id = a->job->id,
                               .seq = a->seq,
                               .position = prefilled + std::max(0, generated - 1),
                               .prompt_tokens = a->prompt_len(),
                               .completion_tokens = generated,
                               .prefilling = a->prefilling(),
                               .kv_bytes = a->job->steady_bytes + (a->prefilling() ? a->job->scratch_bytes : 0),
                               .budget_slots = a->job->budgets.total_slots(),
                               .policy = a->job->policy ? std::string(a->job->policy->name()) : "full",
                               .plan = a->job->plan_name});
  }
  return s;
}

void Scheduler::loop() {
  while (true) {
    {
      std::unique_lock lock(mu_);
      wake_.wait(lock, [&] { return quit_ || (!paused_ && (running_ > 0 || !waiting_.empty())); });
      if (quit_) cancel_all_locked();
    }
    step();
    std::lock_guard lock(mu_);
    if (quit_ && running_ == 0 && waiting_.empty()) return;
  }
}

void Scheduler::admit_locked() {
  while (!waiting_.empty()) {
    const std::shared_ptr<Job>& job = waiting_.front();
    if (job->cancelled) break;  // dropped by step(), outside the lock
    const int64_t need = job->steady_bytes + job->scratch_bytes;
    if (in_use_ + need > options_.kv_memory) break;  // first come, first served: no overtaking
    const auto free = std::find(active_.begin(), active_.end(), nullptr);
    if (free == active_.end()) break;
    const int seq = static_cast<int>(free - active_.begin());
    backend_.open_sequence(seq, job->budgets, job->policy);
    *free = std::make_unique<Active>(job, seq);
    in_use_ += need;
    ++running_;
    peak_in_use_ = std::max(peak_in_use_, in_use_);
    peak_running_ = std::max(peak_running_, running_);
    waiting_.pop_front();
  }
  allocated_ = backend_.kv_bytes_allocated();
}

void Scheduler::finish(Active& a, const std::string& reason) {
  // Called without the lock; the backend is only ever touched by this thread.
  if (reason != "cancelled" && !a.stop.stopped()) {
    if (std::string rest = a.stop.flush(); !rest.empty() && a.job->on_text) a.job->on_text(rest);
  }
  JobResult r{.finish_reason = reason,
              .text = a.stop.text(),
              .tokens = a.generated,
              .prompt_tokens = a.prompt_len(),
              .completion_tokens = static_cast<int>(a.generated.size())};
  backend_.close_sequence(a.seq);
  const int64_t held = a.job->steady_bytes + (a.prefilling() ? a.job->scratch_bytes : 0);
  std::shared_ptr<Job> job;
  {
    // snapshot() reads every active request's job under the lock: it leaves `a` only here.
    std::lock_guard lock(mu_);
    job = std::move(a.job);
    in_use_ -= held;
    --running_;
    active_[a.seq].reset();  // `a` is gone
    allocated_ = backend_.kv_bytes_allocated();
  }
  metrics_.request_done(reason, seconds_between(job->submitted, Clock::now()));
  if (job->on_done) job->on_done(r);
}

void Scheduler::step() {
  // Drop cancelled waiting jobs, admit what fits, and take this step's running requests.
  std::vector<std::shared_ptr<Job>> dropped;
  std::vector<Active*> running;
  {
    std::lock_guard lock(mu_);
    for (auto it = waiting_.begin(); it != waiting_.end();) {
      if ((*it)->cancelled) {
        dropped.push_back(*it);
        it = waiting_.erase(it);
      } else {
        ++it;
      }
    }
    admit_locked();
    for (const auto& a : active_) {
      if (a) running.push_back(a.get());
    }
  }
  for (const auto& job : dropped) {
    metrics_.request_done("cancelled", seconds_between(job->submitted, Clock::now()));
    if (job->on_done) {
      job->on_done(JobResult{.finish_reason = "cancelled", .prompt_tokens = static_cast<int>(job->prompt.size())});
    }
  }
  // Cancelled requests leave before the step: their memory is free for the next admission.
  std::erase_if(running, [&](Active* a) {
    if (!a->job->cancelled) return false;
    finish(*a, "cancelled");
    return true;
  });
  if (running.empty()) return;

  // Decode rows first (one per decoding request), then up to prefill_chunk prompt rows, oldest
  // request first: a long prompt is spread over several steps between the others' tokens.
  std::sort(running.begin(), running.end(), [](const Active* x, const Active* y) { return x->job->id < y->job->id; });
  StepRows rows;
  std::vector<int32_t> logit_rows;
  std::vector<Active*> logit_of;
  std::vector<int> prompt_rows(running.size(), 0);
  for (Active* a : running) {
    if (a->prefilling()) continue;
    rows.add(a->last_token, a->positions(), a->seq);
    logit_rows.push_back(static_cast<int32_t>(rows.size()) - 1);
    logit_of.push_back(a);
  }
  int budget = options_.prefill_chunk;
  for (size_t i = 0; i < running.size() && budget > 0; ++i) {
    Active* a = running[i];
    if (!a->prefilling()) continue;
    // A prompt that fits one step runs in one step (a device backend then cuts it without a
    // scratch, as holds_prompt_scratch says and admission counted); it waits for the budget.
    if (a->prefilled == 0 && a->prompt_len() <= options_.prefill_chunk && a->prompt_len() > budget) continue;
    int n = std::min(budget, a->prompt_len() - a->prefilled);
    // Under --prefill-evict a step's rows end at the next cut at the latest (a device backend cuts at
    // the end of a step's rows; the CPU's cuts, after every such row, are the same either way).
    if (options_.prefill_evict) {
      const int next_cut = (a->prefilled / options_.prefill_chunk + 1) * options_.prefill_chunk;
      n = std::min(n, next_cut - a->prefilled);
    }
    for (int p = a->prefilled; p < a->prefilled + n; ++p) rows.add(a->job->prompt[p], p, a->seq, a->prompt_len());
    prompt_rows[i] = n;
    budget -= n;
    if (a->prefilled + n == a->prompt_len()) {
      logit_rows.push_back(static_cast<int32_t>(rows.size()) - 1);
      logit_of.push_back(a);
    }
  }
  std::vector<float> logits;
  decoder_.forward(rows, logit_rows, &logits);
  ++steps_;
  metrics_.step(static_cast<int>(rows.size()));

  const Clock::time_point now = Clock::now();
  int64_t prompt_tokens = 0, generated = 0, evicted = 0;
  for (size_t i = 0; i < running.size(); ++i) {
    if (prompt_rows[i] == 0) continue;
    Active& a = *running[i];
    a.prefilled += prompt_rows[i];
    prompt_tokens += prompt_rows[i];
    if (!a.prefilling()) {
      std::lock_guard lock(mu_);
      in_use_ -= a.job->scratch_bytes;  // the prompt is cut into its cache; the scratch is gone
    }
  }
  const size_t vocab = static_cast<size_t>(decoder_.config().vocab_size);
  for (size_t r = 0; r < logit_of.size(); ++r) {
    Active& a = *logit_of[r];
    const float uniform = a.sampler.draw();
    const int32_t token = pick_token(std::span<const float>(logits.data() + r * vocab, vocab), a.job->sampler, uniform);
    if (a.generated.empty()) {
      metrics_.first_token(seconds_between(a.job->submitted, now));
    } else {
      metrics_.inter_token(seconds_between(a.last_token_at, now));
    }
    a.last_token_at = now;
    // Tokens evicted by this step: a head of b slots that has seen n positions has evicted n - b.
    if (a.job->policy && a.job->policy->evicts()) {
      const int n = a.positions() + (a.generated.empty() ? 0 : 1);
      int64_t total = 0;
      for (int32_t b : a.job->budgets.budget_tokens) total += std::max(0, n - b);
      evicted += total - a.evicted;
      a.evicted = total;
    }
    if (!a.job->ignore_eos && std::find(stop_tokens_.begin(), stop_tokens_.end(), token) != stop_tokens_.end()) {
      finish(a, "stop");
      continue;
    }
    ++generated;
    const std::string piece = tokenizer_.decode(a.last_token, token);
    a.generated.push_back(token);
    ++a.n_generated;
    a.last_token = token;
    if (std::string text = a.stop.feed(piece); !text.empty() && a.job->on_text) a.job->on_text(text);
    if (a.stop.stopped()) {
      finish(a, "stop");
    } else if (static_cast<int>(a.generated.size()) == a.job->max_tokens) {
      finish(a, "length");
    }
  }
  metrics_.tokens(prompt_tokens, generated, evicted);
}

}  // namespace kvp::serve
