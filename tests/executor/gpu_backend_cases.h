// The GPU backend against the CPU backend on stories260K, written once for any Device: the emulated
// device runs them in every build (gpu_backend_emulated_test.cc), the CUDA device on a GPU
// (gpu_backend_cuda_test.cc, label gpu).
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <map>
#include <set>
#include <tuple>
#include <memory>

#include "executor/cpu/cpu_backend.h"
#include "executor/generator.h"
#include "executor/gpu/gpu_backend.h"
#include "planner/plan/plan.h"
#include "tests/support/test_support.h"

namespace kvp::test {

using DeviceFactory = std::function<std::unique_ptr<Device>()>;

// f32 logits of the GPU backend against the CPU backend's, relative to the largest |logit| of the
// row: both compute in f32 with sums in different orders.
inline constexpr double kGpuF32LogitTolerance = 1e-4;
// binary16 weights and KV against the f32 CPU backend.
inline constexpr double kGpuF16LogitTolerance = 2e-2;

inline PlanModel stories_model() {
  const ModelConfig& c = default_model().weights.config();
  return PlanModel{.fingerprint = std::string(64, '0'), .dim = c.dim, .n_layers = c.n_layers, .n_heads = c.n_heads,
                   .n_kv_heads = c.n_kv_heads, .head_dim = c.head_dim(), .vocab_size = c.vocab_size,
                   .seq_len = c.seq_len};
}

// A sampled story (temperature 1, fixed seed), so the sequences are not the greedy oracle's.
inline std::vector<int32_t> sampled_story(int n, uint64_t seed) {
  CpuBackend backend(default_model().weights);
  Decoder decoder(backend);
  const GenerateOptions g{.steps = n, .sampler = {.temperature = 1.0f, .top_p = 0.95f, .seed = seed},
                          .stop_at_eos = false};
  auto tokens = generate(decoder, {{kBosToken}}, {full_cache_budgets(default_model().weights.config(), n)}, g).tokens[0];
  tokens.resize(n);
  return tokens;
}

struct Run {
  std::vector<float> logits;  // every fed position's logits, per sequence in turn
  std::vector<EvictionRecord> evictions;
  int64_t kv_bytes = 0;
};

// Teacher-forced run of several sequences in one batch: each prompt prefilled (all in one step),
// then one row per sequence per step, logits of every row.
// `chunk` > 0: the prompts arrive in steps of `chunk` rows each (StepRows::prompt_len set), the
// last one with the logits; 0: in one step.
inline Run teacher_forced(Backend& backend, const std::vector<std::vector<int32_t>>& seqs, int prompt_len,
                          const std::vector<KvBudgets>& budgets, std::shared_ptr<const Policy> policy, int chunk = 0) {
  Decoder decoder(backend);
  backend.reset_sequences(budgets, std::move(policy));
  Run run;
  run.kv_bytes = backend.kv_bytes_allocated();
  backend.set_eviction_log(&run.evictions);
  std::vector<std::vector<float>> per_seq(seqs.size());
  const int V = backend.config().vocab_size;
  std::vector<float> logits;
  const int step_rows = chunk > 0 ? chunk : prompt_len;
  for (int begin = 0; begin < prompt_len; begin += step_rows) {
    const int end = std::min(prompt_len, begin + step_rows);
    StepRows rows;
    std::vector<int32_t> last;
    for (size_t s = 0; s < seqs.size(); ++s) {
      for (int t = begin; t < end; ++t) rows.add(seqs[s][t], t, static_cast<int32_t>(s), chunk > 0 ? prompt_len : 0);
      if (end == prompt_len) last.push_back(static_cast<int32_t>(rows.size()) - 1);
    }
    decoder.forward(rows, last, &logits);
  }
  for (size_t s = 0; s < seqs.size(); ++s) per_seq[s].assign(logits.begin() + s * V, logits.begin() + (s + 1) * V);
  for (size_t t = prompt_len; t < seqs[0].size(); ++t) {
    StepRows step;
    std::vector<int32_t> all;
    for (size_t s = 0; s < seqs.size(); ++s) {
      step.add(seqs[s][t], static_cast<int32_t>(t), static_cast<int32_t>(s));
      all.push_back(static_cast<int32_t>(s));
    }
    decoder.forward(step, all, &logits);
    for (size_t s = 0; s < seqs.size(); ++s) {
      per_seq[s].insert(per_seq[s].end(), logits.begin() + s * V, logits.begin() + (s + 1) * V);
    }
  }
  backend.set_eviction_log(nullptr);
  for (auto& l : per_seq) run.logits.insert(run.logits.end(), l.begin(), l.end());
  return run;
}

// Largest |a − b| of each vocabulary row over that row's largest |b|.
inline double max_relative_logit_error(const std::vector<float>& a, const std::vector<float>& b, int vocab) {
  EXPECT_EQ(a.size(), b.size());
  double worst = 0;
  for (size_t base = 0; base + vocab <= std::min(a.size(), b.size()); base += vocab) {
    double scale = 0, err = 0;
    for (int i = 0; i < vocab; ++i) {
      scale = std::max(scale, std::fabs(double(b[base + i])));
      err = std::max(err, std::fabs(double(a[base + i]) - b[base + i]));
    }
    worst = std::max(worst, err / scale);
  }
  return worst;
}

inline std::vector<int32_t> argmax_rows(const std::vector<float>& x, int vocab) {
  std::vector<int32_t> out;
  for (size_t base = 0; base + vocab <= x.size(); base += vocab) {
    out.push_back(static_cast<int32_t>(std::max_element(x.begin() + base, x.begin() + base + vocab) - x.begin() - base));
  }
  return out;
}

// The full cache, f32: greedy generation reproduces the model's oracle text, and teacher-forced
// logits of a batch of three sequences agree with the CPU backend's.
inline void check_decoder_matches_cpu(const DeviceFactory& make_device) {
  const ModelWeights& w = default_model().weights;
  {
    GpuBackend gpu(w, make_device());
    Decoder decoder(gpu);
    const GenerateOptions options{.steps = 256};
    const auto result = generate(decoder, {{kBosToken}}, {full_cache_budgets(w.config(), 256)}, options);
    EXPECT_EQ(default_model().tokenizer.decode(result.tokens[0]), default_model_oracle().text);
  }
  const std::vector<std::vector<int32_t>> seqs = {sampled_story(96, 1), sampled_story(96, 2), sampled_story(96, 3)};
  const std::vector<KvBudgets> budgets(3, full_cache_budgets(w.config(), 96));
  CpuBackend cpu(w);
  GpuBackend gpu(w, make_device());
  const Run want = teacher_forced(cpu, seqs, 20, budgets, nullptr);
  const Run got = teacher_forced(gpu, seqs, 20, budgets, nullptr);
  EXPECT_LE(max_relative_logit_error(got.logits, want.logits, w.config().vocab_size), kGpuF32LogitTolerance);
  EXPECT_EQ(argmax_rows(got.logits, w.config().vocab_size), argmax_rows(want.logits, w.config().vocab_size));
  EXPECT_EQ(got.kv_bytes, want.kv_bytes);
}

// Sampled generation (the device's sampling kernel) against the CPU backend (the host sampler) with
// the same seeds: the same stories, for top_p below 1 (the nucleus, walked by probability) and at
// 1 (walked by id). The draws are the same; the two differ only where float rounding puts a draw
// or the nucleus cut on the other side of a token boundary, which these seeds never do.
inline void check_sampled_text_matches_cpu(const DeviceFactory& make_device) {
  const ModelWeights& w = default_model().weights;
  for (const SamplerOptions& sampler : {SamplerOptions{.temperature = 1.0f, .top_p = 0.9f, .seed = 7},
                                        SamplerOptions{.temperature = 0.8f, .top_p = 1.0f, .seed = 8}}) {
    const GenerateOptions g{.steps = 160, .sampler = sampler, .stop_at_eos = false};
    const std::vector<std::vector<int32_t>> prompts(3, {kBosToken});
    const std::vector<KvBudgets> budgets(3, full_cache_budgets(w.config(), 160));
    CpuBackend cpu(w);
    Decoder cpu_decoder(cpu);
    GpuBackend gpu(w, make_device());
    Decoder gpu_decoder(gpu);
    const auto want = generate(cpu_decoder, prompts, budgets, g).tokens;
    const auto got = generate(gpu_decoder, prompts, budgets, g).tokens;
    EXPECT_EQ(got, want) << "top_p " << sampler.top_p;
    EXPECT_NE(want[0], want[1]) << "the sequences' draws differ";
  }
}

// Under knorm the keys are norms of rotated keys, and a token repeated at two positions has two
// norms equal to rounding: the backends' keys differ in rounding (their sums run in different
// orders), so such near-ties may go either way. Each (sequence, layer, head) stream of evictions
// must match the CPU's until it parts at a near-tie: at that step (a decode step's one eviction,
// or a cut's several) the positions only one backend evicts pair up, in key order, with keys
// within 1e-5. After a stream parts at step t in layer l, its layer's attention differs from step
// t + 1 on, and with it the keys of the layers above: those are compared only up to step t.
// `min_matched`: the share of the CPU's evictions that must match before the streams part.
inline void check_same_evictions_up_to_near_ties(const std::vector<EvictionRecord>& got,
                                                 const std::vector<EvictionRecord>& want, const std::string& policy_name,
                                                 double min_matched = 0.25) {
  using Stream = std::tuple<int, int, int>;
  using Step = std::tuple<int, int, int, int32_t>;  // sequence, layer, head, step: one cut or eviction
  auto by_step = [](const std::vector<EvictionRecord>& records) {
    std::map<Step, std::vector<const EvictionRecord*>> m;
    for (const EvictionRecord& r : records) m[Step(r.seq_idx, r.layer_idx, r.kv_head_idx, r.step)].push_back(&r);
    return m;
  };
  const auto g = by_step(got), w = by_step(want);
  ASSERT_EQ(g.size(), w.size()) << policy_name << ": evictions at other steps";
  std::set<Stream> parted;
  std::map<int, std::vector<std::pair<int32_t, int32_t>>> parted_at;  // per sequence: (step, layer)
  size_t matched = 0;
  for (const auto& [at, cpu] : w) {  // in order of sequence, layer, head, step
    const auto [seq, layer, head, step] = at;
    const auto it = g.find(at);
    ASSERT_TRUE(it != g.end() && it->second.size() == cpu.size())
        << policy_name << ": seq " << seq << " layer " << layer << " head " << head << " step " << step;
    if (parted.count(Stream(seq, layer, head))) continue;
    bool affected = false;
    for (auto [s, l] : parted_at[seq]) affected |= layer > l && step > s;
    if (affected) continue;
    std::map<int32_t, float> mine, theirs;
    for (const EvictionRecord* r : it->second) mine[r->evicted_pos] = r->score;
    for (const EvictionRecord* r : cpu) theirs[r->evicted_pos] = r->score;
    std::vector<float> only_mine, only_theirs;
    for (auto [pos, key] : mine) {
      if (theirs.count(pos)) {
        ++matched;
      } else {
        only_mine.push_back(key);
      }
    }
    for (auto [pos, key] : theirs) {
      if (!mine.count(pos)) only_theirs.push_back(key);
    }
    if (only_mine.empty()) continue;
    ASSERT_EQ(only_mine.size(), only_theirs.size());
    std::sort(only_mine.begin(), only_mine.end());
    std::sort(only_theirs.begin(), only_theirs.end());
    for (size_t i = 0; i < only_mine.size(); ++i) {
      ASSERT_NEAR(only_mine[i], only_theirs[i], 1e-5 * std::fabs(only_theirs[i]))
          << policy_name << ": a stream may part from the CPU's only at a near-tie: seq " << seq << " step " << step
          << " layer " << layer << " head " << head;
    }
    parted.insert(Stream(seq, layer, head));
    parted_at[seq].emplace_back(step, layer);
  }
  // Repeated tokens make near-ties common under knorm; a quarter still leaves hundreds of
  // evictions matched before the streams part.
  EXPECT_GE(static_cast<double>(matched), min_matched * static_cast<double>(want.size())) << policy_name;
}

// Under a plan (uniform budget below the sequence, so the prompt is cut and decode evicts): the
// same evictions as the CPU executor, record for record — sequence, step, layer, head and evicted
// position; keys to rounding — the same logits to rounding, and exactly the plan's KV bytes.
// `gpu_chunk` > 0: the GPU backend takes the prompts in chunks of that many rows (the CPU's in one
// step: its chunked prefill keeps the same tokens exactly, ChunkedPrefill.*).
// `evict_chunk` > 0: --prefill-evict with that chunk on both, each fed the prompt in chunks of it.
// `compression`: ThinK and Mustafar on the kept tokens, the same on both.
inline void check_same_evictions_as_cpu(const DeviceFactory& make_device, const std::string& policy_name,
                                        PolicyParams params, int gpu_chunk = 0, int evict_chunk = 0,
                                        const PlanCompression& compression = {}) {
  const ModelWeights& w = default_model().weights;
  const int budget = 40, n_seqs = 3;
  auto plan = uniform_plan(stories_model(), policy_name, params, budget, KvDtype::kF32, compression);
  ASSERT_TRUE(plan.ok()) << plan.error().message();
  const std::shared_ptr<const Policy> policy(std::move(make_policy(policy_name, params)).value());
  const std::vector<KvBudgets> budgets(n_seqs, plan->kv_budgets());
  const std::vector<std::vector<int32_t>> seqs = {sampled_story(160, 4), sampled_story(160, 5), sampled_story(160, 6)};
  CpuBackend cpu(w);
  GpuBackend gpu(w, make_device());
  if (evict_chunk > 0) gpu_chunk = evict_chunk;
  cpu.set_prefill_mode(PrefillMode{.evict_chunk = evict_chunk});
  gpu.set_prefill_mode(PrefillMode{.evict_chunk = evict_chunk});
  const Run want = teacher_forced(cpu, seqs, 64, budgets, policy, evict_chunk);
  const Run got = teacher_forced(gpu, seqs, 64, budgets, policy, gpu_chunk);
  if (gpu_chunk > 0) {  // the prompts' scratch while the third is prefilled: the memory model's peak
    EXPECT_EQ(gpu.peak_kv_bytes(),
              (plan->kv_bytes_per_sequence + plan->kv_budgets().prefill_scratch(64, evict_chunk).kv_bytes()) * n_seqs);
  }
  if (evict_chunk > 0) {  // cuts before the prompt's last row, at the same steps
    const auto before_last = [](const Run& r) {
      return std::count_if(r.evictions.begin(), r.evictions.end(), [](const EvictionRecord& e) { return e.step < 63; });
    };
    EXPECT_GT(before_last(want), 0);
    EXPECT_EQ(before_last(got), before_last(want));
  }
  EXPECT_EQ(got.kv_bytes, plan->kv_bytes_per_sequence * n_seqs);
  EXPECT_EQ(got.kv_bytes, want.kv_bytes);
  ASSERT_GT(want.evictions.size(), 1000u) << "the test must evict";
  ASSERT_EQ(got.evictions.size(), want.evictions.size());
  // --prefill-evict's first cut, at position 47, parts streams 16 positions earlier: a fifth matched.
  if (policy_name == "knorm") {
    return check_same_evictions_up_to_near_ties(got.evictions, want.evictions, policy_name,
                                                evict_chunk > 0 ? 0.2 : 0.25);
  }
  for (size_t i = 0; i < want.evictions.size(); ++i) {
    const EvictionRecord &g = got.evictions[i], &c = want.evictions[i];
    ASSERT_TRUE(g.seq_idx == c.seq_idx && g.step == c.step && g.layer_idx == c.layer_idx &&
                g.kv_head_idx == c.kv_head_idx && g.evicted_pos == c.evicted_pos)
        << policy_name << " eviction " << i << ": gpu (seq " << g.seq_idx << " step " << g.step << " layer "
        << g.layer_idx << " head " << g.kv_head_idx << " pos " << g.evicted_pos << ") cpu (seq " << c.seq_idx
        << " step " << c.step << " layer " << c.layer_idx << " head " << c.kv_head_idx << " pos " << c.evicted_pos
        << ") keys " << g.score << " " << c.score;
    ASSERT_NEAR(g.score, c.score, 1e-4 * (1 + std::fabs(c.score))) << policy_name << " eviction " << i;
  }
  EXPECT_LE(max_relative_logit_error(got.logits, want.logits, w.config().vocab_size), kGpuF32LogitTolerance);
}

// --prefill-evict: each KV head's scratch cut in place to budget 40 after positions 47 and 59
// (chunks of 12), then into the cache after 63, the CPU executor's cuts record for record for every
// policy (knorm up to near-ties).
inline void check_prefill_evict_matches_cpu(const DeviceFactory& make_device) {
  const PolicyParams params{.sinks = 4, .recent = 8};
  for (const char* name : {"vatp", "h2o", "tova", "window", "random", "knorm"}) {
    SCOPED_TRACE(name);
    check_same_evictions_as_cpu(make_device, name, params, 0, 12);
  }
  PolicyParams mean = params;
  mean.vatp_base = VatpBase::kMean;
  check_same_evictions_as_cpu(make_device, "vatp", mean, 0, 12);
  check_same_evictions_as_cpu(make_device, "snapkv",
                              PolicyParams{.sinks = 2, .recent = 8, .snap_window = 8, .snap_kernel = 5}, 0, 12);
}

// KVCrush over VATP, H2O, TOVA and SnapKV with each anchor, re-selecting every 6 decode steps: the
// CPU executor's evictions record for record (the cuts at decode included), in one step, in chunks
// and under --prefill-evict.
inline void check_kvcrush_evictions_match_cpu(const DeviceFactory& make_device) {
  const PolicyParams base{.sinks = 4, .recent = 8, .crush_ratio = 0.25, .crush_period = 6};
  for (const char* name : {"vatp", "h2o", "tova", "snapkv"}) {
    SCOPED_TRACE(name);
    PolicyParams p = base;
    p.crush_base = name;
    check_same_evictions_as_cpu(make_device, "kvcrush", p);
  }
  PolicyParams alternating = base, random = base, mean_base = base;
  alternating.crush_anchor = CrushAnchor::kAlternating;
  random.crush_anchor = CrushAnchor::kRandom, random.seed = 3, random.crush_ratio = 0.5;
  mean_base.vatp_base = VatpBase::kMean;
  check_same_evictions_as_cpu(make_device, "kvcrush", alternating);
  check_same_evictions_as_cpu(make_device, "kvcrush", random);
  check_same_evictions_as_cpu(make_device, "kvcrush", mean_base);
  check_same_evictions_as_cpu(make_device, "kvcrush", base, 24);
  check_same_evictions_as_cpu(make_device, "kvcrush", base, 0, 12);
}

// DELTA's roles (f s p s p; 2 pages of 8 and the last one, of 20 at 160 positions) over VATP, H2O,
// TOVA, SnapKV and KVCrush: the selection layers' pages (delta_select) and the sparse layers' masked
// attention give the CPU executor's evictions record for record — in one step, in chunks and under
// --prefill-evict — and DELTA changes what the policy alone evicts.
inline void check_delta_evictions_match_cpu(const DeviceFactory& make_device) {
  const DeltaParams delta{.layers = "fspsp", .pages = 2, .page_size = 8, .last = 1};
  const PolicyParams base{.sinks = 4, .recent = 8, .delta = delta};
  for (const char* name : {"vatp", "h2o", "tova", "snapkv"}) {
    SCOPED_TRACE(name);
    check_same_evictions_as_cpu(make_device, name, base);
  }
  PolicyParams crush = base;
  crush.crush_period = 6;
  check_same_evictions_as_cpu(make_device, "kvcrush", crush);
  check_same_evictions_as_cpu(make_device, "vatp", base, 24);
  check_same_evictions_as_cpu(make_device, "h2o", base, 0, 12);
  // The pages matter: the CPU's evictions with and without DELTA differ.
  auto evictions = [&](const PolicyParams& p) {
    CpuBackend cpu(default_model().weights);
    const std::shared_ptr<const Policy> policy(std::move(make_policy("h2o", p)).value());
    const std::vector<KvBudgets> budgets(1, uniform_plan(stories_model(), "h2o", p, 40, KvDtype::kF32)->kv_budgets());
    return teacher_forced(cpu, {sampled_story(160, 4)}, 64, budgets, policy, 0).evictions;
  };
  PolicyParams plain = base;
  plain.delta = {};
  const std::vector<EvictionRecord> with = evictions(base), without = evictions(plain);
  ASSERT_EQ(with.size(), without.size());
  size_t differ = 0;
  for (size_t i = 0; i < with.size(); ++i) differ += with[i].evicted_pos != without[i].evicted_pos;
  EXPECT_GT(differ, with.size() / 20);
}

// ThinK and Mustafar on the kept tokens (windows of 8 so that tokens age out of them within the
// run): the CPU executor's evictions record for record and its logits to rounding, with the plan's
// bytes — in one step, in chunks, and under --prefill-evict.
inline PlanCompression think_and_mustafar(double think, double keys, double values) {
  PlanCompression c{.think_window = 16, .think_recent = 8, .dense_recent = 8};
  if (think > 0) c.think_ratio = {think};
  if (keys > 0 || values > 0) c.key_sparsity = {keys}, c.value_sparsity = {values};
  return c;
}

inline void check_compressed_evictions_match_cpu(const DeviceFactory& make_device) {
  const PolicyParams params{.sinks = 4, .recent = 8};
  check_same_evictions_as_cpu(make_device, "vatp", params, 0, 0, think_and_mustafar(0.4, 0.5, 0.5));
  check_same_evictions_as_cpu(make_device, "vatp", params, 0, 0, think_and_mustafar(0.4, 0.0, 0.0));
  check_same_evictions_as_cpu(make_device, "vatp", params, 0, 0, think_and_mustafar(0.0, 0.5, 0.25));
  check_same_evictions_as_cpu(make_device, "h2o", params, 0, 0, think_and_mustafar(0.5, 0.4, 0.5));
  check_same_evictions_as_cpu(make_device, "tova", params, 0, 0, think_and_mustafar(0.4, 0.5, 0.5));
}

inline void check_compressed_chunked_prompts_match_cpu(const DeviceFactory& make_device) {
  const PolicyParams params{.sinks = 4, .recent = 8};
  check_same_evictions_as_cpu(make_device, "vatp", params, 24, 0, think_and_mustafar(0.4, 0.5, 0.5));
  check_same_evictions_as_cpu(make_device, "vatp", params, 0, 12, think_and_mustafar(0.4, 0.5, 0.5));
  check_same_evictions_as_cpu(make_device, "snapkv",
                              PolicyParams{.sinks = 2, .recent = 8, .snap_window = 8, .snap_kernel = 5}, 0, 12,
                              think_and_mustafar(0.4, 0.5, 0.0));
}

// binary16 weights and KV cache: logits within the half-precision tolerance of the f32 CPU
// backend's and the same greedy choice at nearly every position; the KV bytes are the f16 plan's.
inline void check_half_precision(const DeviceFactory& make_device) {
  const ModelWeights& w = default_model().weights;
  const PolicyParams params{.sinks = 4, .recent = 16};
  auto plan16 = uniform_plan(stories_model(), "vatp", params, 64, KvDtype::kF16);
  auto plan32 = uniform_plan(stories_model(), "vatp", params, 64, KvDtype::kF32);
  ASSERT_TRUE(plan16.ok() && plan32.ok());
  const std::shared_ptr<const Policy> policy(std::move(make_policy("vatp", params)).value());
  const std::vector<std::vector<int32_t>> seqs = {sampled_story(128, 7), sampled_story(128, 8)};
  CpuBackend cpu(w);
  GpuBackend gpu(w, make_device(), GpuBackendOptions{.weights = KvDtype::kF16});
  const Run want = teacher_forced(cpu, seqs, 32, std::vector<KvBudgets>(2, plan32->kv_budgets()), policy);
  const Run got = teacher_forced(gpu, seqs, 32, std::vector<KvBudgets>(2, plan16->kv_budgets()), policy);
  EXPECT_EQ(got.kv_bytes, plan16->kv_bytes_per_sequence * 2);
  EXPECT_LT(plan16->kv_bytes_per_sequence, plan32->kv_bytes_per_sequence);
  EXPECT_LE(max_relative_logit_error(got.logits, want.logits, w.config().vocab_size), kGpuF16LogitTolerance);
  const auto a = argmax_rows(got.logits, w.config().vocab_size), b = argmax_rows(want.logits, w.config().vocab_size);
  size_t same = 0;
  for (size_t i = 0; i < a.size(); ++i) same += a[i] == b[i] ? 1 : 0;
  EXPECT_GE(static_cast<double>(same) / a.size(), 0.95) << same << " of " << a.size();
}

// q8_0 weights through our device kernel: the same greedy story as the CPU backend on the same
// q8_0 model (both compute with the stored d·q values; measured identical for all 96 tokens on the
// emulated device), in under half of f32's weight bytes (q8_0 matrices hold 34/32 bytes a weight,
// ffn_down — 172 wide — binary16).
inline void check_q8_0_weights_match_cpu(const DeviceFactory& make_device) {
  const ModelWeights q8 = convert_weights(default_model().weights, WeightType::kQ8_0);
  auto story = [&](Backend& b) {
    Decoder decoder(b);
    GenerateOptions g{.steps = 96, .stop_at_eos = false};
    return generate(decoder, {{kBosToken}}, {full_cache_budgets(q8.config(), 96)}, g).tokens[0];
  };
  CpuBackend cpu(q8);
  GpuBackend gpu(q8, make_device(), GpuBackendOptions{.weights = KvDtype::kF16, .q8_0 = true});
  EXPECT_LT(gpu.weight_bytes(), 4 * q8.config().parameter_count() / 2);
  EXPECT_EQ(story(gpu), story(cpu));
}

// q4_0 and q4_1 matrices (the real model's types) reach the device widened to f32 on the host:
// the same story as the CPU's kernels over the same weights.
inline void check_q4_weights_match_cpu(const DeviceFactory& make_device) {
  for (WeightType type : {WeightType::kQ4_0, WeightType::kQ4_1}) {
    const ModelWeights q4 = convert_weights(default_model().weights, type);
    auto story = [&](Backend& b) {
      Decoder decoder(b);
      GenerateOptions g{.steps = 96, .stop_at_eos = false};
      return generate(decoder, {{kBosToken}}, {full_cache_budgets(q4.config(), 96)}, g).tokens[0];
    };
    CpuBackend cpu(q4);
    GpuBackend gpu(q4, make_device(), GpuBackendOptions{});
    EXPECT_EQ(story(gpu), story(cpu)) << weight_type_name(type);
  }
}

}  // namespace kvp::test
