#include "executor/tasks/task_eval.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <set>

#include "executor/decoder.h"
#include "executor/evaluator.h"
#include "executor/generator.h"
#include "executor/sampler.h"
#include "planner/calibration.h"

namespace kvp {

std::string_view cut_point_name(CutPoint c) { return c == CutPoint::kContext ? "agnostic" : "aware"; }

Interval wilson_interval(double mean, int n) {
  if (n <= 0) return {0, 1};
  const double z = 1.96, z2 = z * z, p = std::clamp(mean, 0.0, 1.0);
  const double centre = (p + z2 / (2 * n)) / (1 + z2 / n);
  const double half = z * std::sqrt(p * (1 - p) / n + z2 / (4.0 * n * n)) / (1 + z2 / n);
  return {std::max(0.0, centre - half), std::min(1.0, centre + half)};
}

namespace {

// A configuration made concrete for one instance and cut.
struct Prepared {
  int config = -1;  // index into configs; -1: the internal full-cache reference
  std::shared_ptr<const Policy> policy;
  KvBudgets budgets;
  int scorer = 0;
  int budget = 0;
};

// The full cache's reference under a trace: keeps every slot and sums the attention each slot gets
// from the queries at `from` and after (the prompt's last token and the reference answer's), over
// the group's query heads, into its score.
class AnswerAttention : public Policy {
 public:
  explicit AnswerAttention(int32_t from) : Policy(PolicyParams{.sinks = 0, .recent = 0}), from_(from) {}
  std::string_view name() const override { return "answer_attention"; }
  bool evicts() const override { return false; }
  void init_slot(SlotArrays& s, int slot, const NewToken&) const override { s.score[slot] = 0; }
  void observe(SlotArrays& s, const float* weights, int query_pos, int) const override {
    if (query_pos < from_) return;
    for (int j = 0; j < s.n_used; ++j) s.score[j] += weights[j];
  }

 private:
  int32_t from_;
};

}  // namespace

std::vector<std::vector<TaskOutcome>> evaluate_tasks(CpuBackend& backend, const Tokenizer& tokenizer,
                                                     const std::vector<TaskInstance>& instances,
                                                     const std::vector<TaskConfig>& configs,
                                                     const TaskEvalOptions& options) {
  const ModelConfig& mc = backend.config();
  const int vocab = mc.vocab_size;
  std::vector<std::vector<TaskOutcome>> out(configs.size(), std::vector<TaskOutcome>(instances.size()));
  Decoder decoder(backend);
  const auto start = std::chrono::steady_clock::now();
  const int batch = std::max(1, options.batch);
  for (size_t ii = 0; ii < instances.size(); ++ii) {
    const TaskInstance& inst = instances[ii];
    const int n = static_cast<int>(inst.tokens.size());
    const int reference_len = static_cast<int>(inst.reference.size());
    const int capacity = n + std::max(inst.max_answer_tokens, reference_len) + 1;
    for (CutPoint cut : {CutPoint::kContext, CutPoint::kQuestion}) {
      std::vector<int> chosen;
      for (size_t c = 0; c < configs.size(); ++c) {
        if (configs[c].cut == cut) chosen.push_back(static_cast<int>(c));
      }
      const bool tracing = options.trace && cut == options.trace_cut;
      if (chosen.empty() && !tracing) continue;
      const int prefix = cut == CutPoint::kContext ? inst.context_end : n - 1;
      // The configurations concrete at this cut, the full-cache reference first, and their scorers.
      std::vector<Prepared> prepared;
      std::vector<std::shared_ptr<const Policy>> scorers = {keep_all_policy()};
      prepared.push_back(Prepared{.config = -1, .policy = keep_all_policy(), .budgets = full_cache_budgets(mc, capacity),
                                  .scorer = 0, .budget = capacity});
      for (int c : chosen) {
        const TaskConfig& cfg = configs[c];
        Prepared p{.config = c};
        if (cfg.policy == "full") {
          continue;  // the reference's outcome, copied below
        } else {
          p.budget = cfg.budgets ? *std::max_element(cfg.budgets->budget_tokens.begin(), cfg.budgets->budget_tokens.end())
                                 : std::max(1, static_cast<int>(std::ceil(cfg.keep * prefix)));
          PolicyParams params = cfg.params;
          if (cfg.published_defaults && !cfg.budgets) {
            const PolicyParams d = published_defaults(cfg.policy, p.budget);
            params.sinks = d.sinks, params.recent = d.recent;
          }
          auto policy = make_policy(cfg.policy, params);
          KVP_CHECK(policy.ok(), "{}: {}", cfg.label, policy.error().message());
          p.policy = std::shared_ptr<const Policy>(std::move(policy).value());
          if (cfg.budgets) {
            p.budgets = *cfg.budgets;
          } else {
            p.budget = std::max(p.budget, p.policy->min_budget());
            p.budgets = KvBudgets::uniform(mc.n_layers, mc.n_kv_heads, mc.head_dim(), p.budget);
          }
          p.budgets.aux_floats_per_slot = p.policy->aux_floats_per_slot();
          // One scorer per group of policies that score a prefill alike; a ThinK or Mustafar cache
          // is cut in its own prefill instead (p.scorer −1).
          if (!p.budgets.compressed()) {
            const auto it = std::find_if(scorers.begin(), scorers.end(),
                                         [&](const auto& s) { return same_prefill(*s, *p.policy); });
            p.scorer = static_cast<int>(it - scorers.begin());
            if (it == scorers.end()) scorers.push_back(p.policy);
          } else {
            p.scorer = -1;
          }
        }
        prepared.push_back(std::move(p));
      }
      TaskTraceInstance traced;
      if (tracing) {
        for (const auto& t : options.trace_scorers) {
          if (std::none_of(scorers.begin() + 1, scorers.end(), [&](const auto& s) { return same_prefill(*s, *t); })) {
            scorers.push_back(t);
          }
        }
        // The trace's scorers: the first instance's, in order; every later instance has the same
        // groups (same_prefill ignores what differs between instances: sinks, recent, budgets).
        if (ii == 0) {
          options.trace->scorers.clear();
          for (size_t s = 1; s < scorers.size(); ++s) {
            options.trace->scorers.push_back(TaskTraceScorer{std::string(scorers[s]->name()), scorers[s]->params()});
          }
        }
        KVP_CHECK(options.trace->scorers.size() + 1 == scorers.size(), "instance {}: other scorers than the first's", inst.id);
        prepared[0].policy = std::make_shared<AnswerAttention>(n - 1);
      }
      // The prompt up to the cut, in chunks, into sequence `seq` (its policy cuts it at the end).
      auto prefill = [&](int seq) {
        for (int c0 = 0; c0 < prefix; c0 += options.prefill_chunk) {
          StepRows rows;
          for (int q = c0; q < std::min(prefix, c0 + options.prefill_chunk); ++q) rows.add(inst.tokens[q], q, seq, prefix);
          decoder.forward(rows, {}, nullptr);
        }
      };
      // The shared prefill: sequence 0 under keep-all, scored for every policy.
      std::vector<KvBudgets> seqs(1 + batch, KvBudgets::uniform(mc.n_layers, mc.n_kv_heads, mc.head_dim(), 0));
      seqs[0] = full_cache_budgets(mc, capacity);
      backend.reset_sequences(seqs);
      backend.score_prompt_for(0, scorers);
      prefill(0);
      if (tracing) {
        traced = TaskTraceInstance{.id = inst.id, .family = inst.family, .length = inst.length, .prompt_tokens = n,
                                   .cut = prefix, .answer_rows = std::max(1, reference_len)};
        for (const TaskNeedle& nd : inst.needles) traced.needles.emplace_back(nd.begin, nd.end);
        const size_t heads = size_t(mc.n_layers) * mc.n_kv_heads;
        for (size_t s = 1; s < scorers.size(); ++s) {
          const auto& t = options.trace->scorers[s - 1];
          auto same = make_policy(t.policy, t.params);
          KVP_CHECK(same.ok() && same_prefill(*same.value(), *scorers[s]), "instance {}: scorer {} differs", inst.id, s);
          traced.score.emplace_back(heads * prefix);
          traced.aux.emplace_back(scorers[s]->aux_floats_per_slot() > 0 ? heads * prefix : 0);
          for (int l = 0; l < mc.n_layers; ++l) {
            for (int h = 0; h < mc.n_kv_heads; ++h) {
              const size_t off = traced.head_offset(mc.n_kv_heads, l, h);
              const auto sc = backend.prompt_scores(0, static_cast<int>(s), l, h, false);
              std::copy(sc.begin(), sc.end(), traced.score.back().begin() + off);
              if (!traced.aux.back().empty()) {
                const auto ax = backend.prompt_scores(0, static_cast<int>(s), l, h, true);
                std::copy(ax.begin(), ax.end(), traced.aux.back().begin() + off);
              }
            }
          }
        }
      }
      // A configuration's cache at the cut, in sequence `seq`: forked from the shared prefill, or
      // (ThinK, Mustafar) from a prefill of its own.
      auto cut_into = [&](const Prepared& p, int seq) {
        if (p.scorer >= 0) return backend.fork_prompt(0, p.scorer, seq, p.budgets, p.policy);
        backend.open_sequence(seq, p.budgets, p.policy);
        prefill(seq);
      };
      const std::vector<int32_t> suffix(inst.tokens.begin() + prefix, inst.tokens.end());
      const int s_len = static_cast<int>(suffix.size());
      std::vector<std::vector<float>> full_logprobs;  // [reference_len][vocab], the reference's rows
      double full_nll = 0;
      TaskOutcome reference;  // the full cache's, for the configurations of policy full
      for (size_t b0 = 0; b0 < prepared.size(); b0 += batch) {
        const size_t b1 = std::min(prepared.size(), b0 + batch);
        const int k = static_cast<int>(b1 - b0);
        // Teacher-forced: the rest of the prompt, then the reference answer.
        StepRows rows;
        std::vector<int32_t> logit_rows;
        for (int j = 0; j < k; ++j) {
          const Prepared& p = prepared[b0 + j];
          cut_into(p, 1 + j);
          if (tracing && p.config < 0) {
            for (int l = 0; l < mc.n_layers; ++l) {
              for (int h = 0; h < mc.n_kv_heads; ++h) std::fill_n(backend.cache(1 + j).head(l, h).score, prefix, 0.0f);
            }
          }
          for (int t = 0; t < s_len + reference_len - 1; ++t) {
            const int32_t token = t < s_len ? suffix[t] : inst.reference[t - s_len];
            if (t >= s_len - 1) logit_rows.push_back(static_cast<int32_t>(rows.size()));
            rows.add(token, prefix + t, 1 + j);
          }
        }
        std::vector<float> logits;
        decoder.forward(rows, logit_rows, &logits);
        for (int j = 0; j < k; ++j) {
          const Prepared& p = prepared[b0 + j];
          double nll = 0, kl = 0;
          std::vector<std::vector<float>> lp(reference_len, std::vector<float>(vocab));
          for (int r = 0; r < reference_len; ++r) {
            log_softmax(logits.data() + (size_t(j) * reference_len + r) * vocab, vocab, lp[r].data());
            nll -= lp[r][inst.reference[r]];
          }
          if (p.config < 0) {
            if (tracing) {
              // The answer rows' attention on the cut's positions (slot j holds position j), per query head.
              const float per_row = 1.0f / float(traced.answer_rows * mc.group_size());
              traced.answer_attention.assign(size_t(mc.n_layers) * mc.n_kv_heads * prefix, 0.0f);
              for (int l = 0; l < mc.n_layers; ++l) {
                for (int h = 0; h < mc.n_kv_heads; ++h) {
                  const HeadSlots head = backend.cache(1 + j).head(l, h);
                  float* a = traced.answer_attention.data() + traced.head_offset(mc.n_kv_heads, l, h);
                  for (int q = 0; q < prefix; ++q) a[q] = std::min(1.0f, head.score[q] * per_row);
                }
              }
            }
            full_logprobs = lp;
            full_nll = nll / std::max(1, reference_len);
            reference.nll = reference.nll_full = full_nll;
            continue;
          }
          for (int r = 0; r < reference_len; ++r) kl += kl_divergence(full_logprobs[r].data(), lp[r].data(), vocab);
          TaskOutcome& o = out[p.config][ii];
          o.nll = nll / std::max(1, reference_len);
          o.nll_full = full_nll;
          o.kl = kl / std::max(1, reference_len);
        }
        // Greedy answers: a fresh cut, the rest of the prompt, then one token per step.
        std::vector<std::vector<int32_t>> answer(k);
        std::vector<bool> done(k, false);
        rows = StepRows{};
        logit_rows.clear();
        for (int j = 0; j < k; ++j) {
          const Prepared& p = prepared[b0 + j];
          cut_into(p, 1 + j);
          if (p.config >= 0 && !inst.needles.empty()) {
            // Needle tokens in the cut cache, over layers and heads.
            std::set<int32_t> wanted;
            for (const TaskNeedle& nd : inst.needles) {
              for (int32_t q = nd.begin; q < nd.end; ++q) wanted.insert(q);
            }
            int64_t kept = 0;
            for (int l = 0; l < mc.n_layers; ++l) {
              for (int h = 0; h < mc.n_kv_heads; ++h) {
                const HeadSlots head = backend.cache(1 + j).head(l, h);
                for (int s = 0; s < *head.n_used; ++s) kept += wanted.count(head.pos[s]);
              }
            }
            out[p.config][ii].needles_kept =
                double(kept) / (double(wanted.size()) * mc.n_layers * mc.n_kv_heads);
          }
          for (int t = 0; t < s_len; ++t) rows.add(suffix[t], prefix + t, 1 + j);
          logit_rows.push_back(static_cast<int32_t>(rows.size() - 1));
        }
        for (int step = 0;; ++step) {
          decoder.forward(rows, logit_rows, &logits);
          rows = StepRows{};
          logit_rows.clear();
          int li = 0;
          for (int j = 0; j < k; ++j) {
            if (done[j]) continue;
            const int32_t token = argmax(std::span<const float>(logits.data() + size_t(li++) * vocab, size_t(vocab)));
            if (tokenizer.is_end_token(token) || token == tokenizer.bos()) {
              done[j] = true;
              continue;
            }
            answer[j].push_back(token);
            if (static_cast<int>(answer[j].size()) >= inst.max_answer_tokens) {
              done[j] = true;
              continue;
            }
            logit_rows.push_back(static_cast<int32_t>(rows.size()));
            rows.add(token, n + static_cast<int>(answer[j].size()) - 1, 1 + j);
          }
          if (rows.size() == 0) break;
        }
        for (int j = 0; j < k; ++j) {
          const Prepared& p = prepared[b0 + j];
          TaskOutcome& o = p.config < 0 ? reference : out[p.config][ii];
          o.id = inst.id;
          o.family = inst.family;
          o.length = inst.length;
          o.prompt_tokens = n;
          o.budget = p.budget;
          o.kv_bytes = p.budgets.kv_bytes();
          o.prediction = tokenizer.decode(answer[j]);
          o.sinks = p.policy->params().sinks, o.recent = p.policy->params().recent;
          o.detail = policy_detail(std::string(p.policy->name()), p.policy->params());
          o.score = score_answer(inst.metric, inst.answers, o.prediction);
        }
      }
      for (int c : chosen) {
        if (configs[c].policy == "full") out[c][ii] = reference;
      }
      if (tracing) {
        traced.full_score = reference.score;
        options.trace->instances.push_back(std::move(traced));
      }
    }
    if (options.progress) {
      options.progress(static_cast<int>(ii + 1),
                       std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    }
  }
  return out;
}

}  // namespace kvp
