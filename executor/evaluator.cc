#include "executor/evaluator.h"

#include <chrono>
#include <cmath>

#include "executor/generator.h"
#include "executor/sampler.h"

namespace kvp {

void log_softmax(const float* logits, int n, float* out) {
  double mx = logits[0];
  for (int i = 1; i < n; ++i) mx = std::max(mx, double(logits[i]));
  double sum = 0;
  for (int i = 0; i < n; ++i) sum += std::exp(double(logits[i]) - mx);
  const double log_z = mx + std::log(sum);
  for (int i = 0; i < n; ++i) out[i] = static_cast<float>(double(logits[i]) - log_z);
}

double kl_divergence(const float* log_p, const float* log_q, int n) {
  double kl = 0;
  for (int v = 0; v < n; ++v) kl += std::exp(double(log_p[v])) * (double(log_p[v]) - log_q[v]);
  return kl;
}

namespace {

// Feeds `tokens[s]` of the sequences [first, first + n) through `decoder` under `config`: the
// first prompt_len in one prefill pass, then one position per step while `keep_going(s, t,
// logits)` says so. `on_logits(s, t, logits)` sees the distribution predicting token t + 1 for
// t = prompt_len - 1 .. T - 2. Returns the decode seconds.
double teacher_force(Decoder& decoder, const std::vector<std::vector<int32_t>>& tokens, int first, int n,
                     const EvalConfig& config, int prompt_len,
                     const std::function<bool(int s, int t, const float* logits)>& on_logits) {
  Backend& backend = decoder.backend();
  const int vocab = decoder.config().vocab_size;
  backend.set_prefill_mode(PrefillMode{.evict_chunk = config.prefill_evict ? config.prefill_chunk : 0});
  backend.reset_sequences(std::vector<KvBudgets>(n, config.budgets), config.policy);
  StepRows rows;
  std::vector<int32_t> logit_rows, live;
  std::vector<std::span<const int32_t>> prompts;
  for (int i = 0; i < n; ++i) {
    prompts.emplace_back(tokens[first + i].data(), size_t(prompt_len));
    live.push_back(i);
  }
  // The prompts in chunks; each one's last logits into row i of `logits`.
  std::vector<float> logits(size_t(n) * vocab), ended;
  prefill_prompts(decoder, prompts, config.prefill_chunk, [&](const std::vector<int32_t>& seqs) {
    ended.resize(seqs.size() * size_t(vocab));
    backend.read(Act::kLogits, ended);
    for (size_t k = 0; k < seqs.size(); ++k) {
      std::copy_n(ended.data() + k * vocab, vocab, logits.data() + size_t(seqs[k]) * vocab);
    }
  });
  const auto start = std::chrono::steady_clock::now();
  for (int t = prompt_len - 1;; ++t) {
    std::vector<int32_t> next;
    rows = StepRows{};
    for (size_t k = 0; k < live.size(); ++k) {
      const int i = live[k];
      const std::vector<int32_t>& seq = tokens[first + i];
      const bool more = on_logits(first + i, t, logits.data() + k * size_t(vocab));
      if (more && t + 2 < static_cast<int>(seq.size())) {
        rows.add(seq[t + 1], t + 1, i);
        next.push_back(i);
      }
    }
    live = std::move(next);
    if (live.empty()) break;
    logit_rows.resize(rows.size());
    for (size_t k = 0; k < rows.size(); ++k) logit_rows[k] = static_cast<int32_t>(k);
    decoder.forward(rows, logit_rows, &logits);
  }
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

EvalReference compute_reference(Decoder& decoder, const Corpus& corpus, const EvalOptions& options) {
  const ModelConfig& c = decoder.config();
  const int P = options.prompt_len, V = c.vocab_size;
  EvalReference ref;
  ref.prompt_len = P;
  const size_t n_seqs = corpus.sequences.size();
  ref.logprobs.resize(n_seqs);
  ref.argmax.resize(n_seqs);
  int max_len = 0;
  for (const auto& s : corpus.sequences) {
    KVP_CHECK(static_cast<int>(s.size()) > P && static_cast<int>(s.size()) <= c.seq_len);
    max_len = std::max(max_len, static_cast<int>(s.size()));
  }
  const EvalConfig full{.budgets = full_cache_budgets(c, max_len), .policy = nullptr};
  for (size_t first = 0; first < n_seqs; first += options.batch) {
    const int n = static_cast<int>(std::min<size_t>(options.batch, n_seqs - first));
    teacher_force(decoder, corpus.sequences, static_cast<int>(first), n, full, P,
                  [&](int s, int t, const float* logits) {
                    std::vector<float>& lp = ref.logprobs[s];
                    lp.resize(lp.size() + V);
                    log_softmax(logits, V, lp.data() + lp.size() - V);
                    ref.argmax[s].push_back(argmax(std::span<const float>(logits, V)));
                    (void)t;
                    return true;
                  });
  }
  // The full model's greedy continuation of each prompt, as long as the sequence.
  ref.greedy.resize(n_seqs);
  for (size_t first = 0; first < n_seqs; first += options.batch) {
    const int n = static_cast<int>(std::min<size_t>(options.batch, n_seqs - first));
    std::vector<std::vector<int32_t>> prompts;
    int steps = P;
    for (int i = 0; i < n; ++i) {
      const auto& seq = corpus.sequences[first + i];
      prompts.emplace_back(seq.begin(), seq.begin() + P);
      steps = std::max(steps, static_cast<int>(seq.size()) - 1);
    }
    const GenerateOptions g{.steps = steps, .stop_at_eos = false};
    GenerateResult r = generate(decoder, prompts, std::vector<KvBudgets>(n, full_cache_budgets(c, steps)), g);
    for (int i = 0; i < n; ++i) {
      std::vector<int32_t>& out = ref.greedy[first + i];
      out = std::move(r.tokens[i]);
      out.resize(corpus.sequences[first + i].size());
    }
  }
  return ref;
}

void evaluate(Decoder& decoder, const Corpus& corpus, const EvalReference& ref, const EvalConfig& config,
              const EvalOptions& options, Measured* out, std::vector<EvictionRecord>* eviction_log,
              const std::function<void(int)>& progress, std::vector<std::vector<float>>* by_position) {
  const int V = decoder.config().vocab_size, P = ref.prompt_len;
  const size_t n_seqs = corpus.sequences.size();
  if (by_position) {
    by_position->assign(n_seqs, {});
    for (size_t s = 0; s < n_seqs; ++s) (*by_position)[s].resize(corpus.sequences[s].size() - P);
  }
  double sum_dnll = 0, sum_nll_full = 0, sum_nll = 0, sum_kl = 0;
  int64_t n_tokens = 0, n_top1 = 0;
  double decode_s = 0;
  int64_t decode_tokens = 0;
  Backend::AttendStats attended;  // of the teacher-forced decode rows, over the batches
  std::vector<float> lp(V);
  Backend& backend = decoder.backend();
  for (size_t first = 0; first < n_seqs; first += options.batch) {
    const int n = static_cast<int>(std::min<size_t>(options.batch, n_seqs - first));
    std::vector<EvictionRecord> batch_log;
    backend.set_eviction_log(eviction_log ? &batch_log : nullptr);
    decode_s += teacher_force(decoder, corpus.sequences, static_cast<int>(first), n, config, P,
                              [&](int s, int t, const float* logits) {
                                log_softmax(logits, V, lp.data());
                                const float* full = ref.logprobs[s].data() + size_t(t - (P - 1)) * V;
                                const int32_t next = corpus.sequences[s][t + 1];
                                sum_nll_full -= full[next];
                                sum_nll -= lp[next];
                                sum_dnll += double(full[next]) - lp[next];
                                if (by_position) (*by_position)[s][t - (P - 1)] = full[next] - lp[next];
                                sum_kl += kl_divergence(full, lp.data(), V);
                                n_top1 += argmax(std::span<const float>(logits, V)) == ref.argmax[s][t - (P - 1)];
                                ++n_tokens;
                                return true;
                              });
    if (eviction_log) {
      for (EvictionRecord& e : batch_log) e.seq_idx += static_cast<int32_t>(first);
      eviction_log->insert(eviction_log->end(), batch_log.begin(), batch_log.end());
    }
    backend.set_eviction_log(nullptr);
    out->kv_bytes_per_sequence = backend.kv_bytes_allocated() / n;
    const Backend::AttendStats batch = backend.attend_stats();
    attended.keys += batch.keys, attended.head_steps += batch.head_steps;
    if (progress) progress(static_cast<int>(first) + n);
  }
  // Teacher-forced decode rows: every predicted token after the first (fed one per step).
  decode_tokens = n_tokens - static_cast<int64_t>(n_seqs);

  // Greedy free generation: the pruned model follows the full model's greedy continuation for
  // as long as its own argmax agrees with it.
  int64_t agreed = 0, possible = 0;
  for (size_t first = 0; first < n_seqs; first += options.batch) {
    const int n = static_cast<int>(std::min<size_t>(options.batch, n_seqs - first));
    teacher_force(decoder, ref.greedy, static_cast<int>(first), n, config, P,
                  [&](int s, int t, const float* logits) {
                    const bool same = argmax(std::span<const float>(logits, V)) == ref.greedy[s][t + 1];
                    agreed += same;
                    return same;
                  });
    for (int i = 0; i < n; ++i) possible += static_cast<int64_t>(ref.greedy[first + i].size()) - P;
  }

  out->n_sequences = static_cast<int>(n_seqs);
  out->prompt_len = P;
  out->n_predicted_tokens = n_tokens;
  out->delta_nll = sum_dnll / n_tokens;
  out->nll_full = sum_nll_full / n_tokens;
  out->nll_pruned = sum_nll / n_tokens;
  out->kl = sum_kl / n_tokens;
  out->top1_agreement = double(n_top1) / n_tokens;
  out->greedy_agreement_tokens = double(agreed) / n_seqs;
  out->greedy_agreement_fraction = possible ? double(agreed) / possible : 1.0;
  out->tokens_per_s = decode_s > 0 ? decode_tokens / decode_s : 0;
  out->attended_per_head_step = attended.per_head_step();
  out->backend = std::string(backend.name());
}

}  // namespace kvp
