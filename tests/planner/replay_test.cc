// Replay: fed the executor's own attention (q, k, v recorded while it ran under a plan), the
// replay keeps exactly the tokens the executor kept, in the same slots, at every step; and its
// error measures behave (zero with a budget covering the sequence, growing as budgets shrink).
#include "planner/replay.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <map>

#include "executor/cpu/cpu_backend.h"
#include "executor/generator.h"
#include "executor/recorder.h"
#include "planner/plan/plan.h"
#include "planner/policy/kv_compression.h"
#include "tests/support/test_support.h"
#include "traces/trace_writer.h"

namespace kvp {
namespace {

using test::default_model;
using KeptLog = std::map<std::tuple<int, int, int32_t>, std::vector<int32_t>>;  // (layer, head, step) -> slots

// Captures q, k, v (and the residual norm) of every row of every pass, by position.
class ClosedLoopCapture final : public ForwardObserver {
 public:
  ClosedLoopCapture(const ModelConfig& c, int T) : c_(c) {
    layers_.resize(c.n_layers);
    for (auto& l : layers_) {
      l.q.resize(size_t(T) * c.q_dim());
      l.k.resize(size_t(T) * c.kv_dim());
      l.v.resize(size_t(T) * c.kv_dim());
      l.resid_norm.resize(T);
    }
  }
  void set_first_position(int p) { first_ = p; }
  void before_layer(int l, const Backend& b) override {
    std::vector<float> x(size_t(b.n_rows()) * c_.dim);
    b.read(Act::kX, x);
    for (int r = 0; r < b.n_rows(); ++r) {
      double ss = 0;
      for (int i = 0; i < c_.dim; ++i) ss += double(x[size_t(r) * c_.dim + i]) * x[size_t(r) * c_.dim + i];
      layers_[l].resid_norm[first_ + r] = static_cast<float>(std::sqrt(ss));
    }
  }
  void after_qkv(int l, const Backend& b) override {
    copy(b, Act::kQ, c_.q_dim(), layers_[l].q);
    copy(b, Act::kK, c_.kv_dim(), layers_[l].k);
    copy(b, Act::kV, c_.kv_dim(), layers_[l].v);
  }
  const TraceLayer& layer(int l) const { return layers_[l]; }

 private:
  void copy(const Backend& b, Act a, int width, std::vector<float>& dst) {
    std::vector<float> tmp(size_t(b.n_rows()) * width);
    b.read(a, tmp);
    std::copy(tmp.begin(), tmp.end(), dst.begin() + size_t(first_) * width);
  }
  const ModelConfig& c_;
  int first_ = 0;
  std::vector<TraceLayer> layers_;
};

struct ClosedLoop {
  std::string trace_dir;
  KeptLog kept;
};

// Runs the executor teacher-forced under `policy`/`budget` and writes what it computed as a trace.
ClosedLoop run_executor(const std::string& name, const PolicyParams& params, int budget, int T, int P,
                        int evict_chunk = 0, const std::vector<SlotCompression>& compression = {}) {
  const ModelConfig& c = default_model().weights.config();
  auto policy = std::shared_ptr<const Policy>(make_policy(name, params).value());
  KvBudgets budgets = KvBudgets::uniform(c.n_layers, c.n_kv_heads, c.head_dim(), budget);
  budgets.aux_floats_per_slot = policy->aux_floats_per_slot();
  budgets.compression = compression;
  std::vector<int32_t> tokens = default_model().tokenizer.encode(
      "Once upon a time, there was a little girl named Lily. She loved to play outside in the park with "
      "her friends. One day, she saw a big red ball in the tall green grass. She wanted to play with it.");
  CpuBackend backend(default_model().weights);
  Decoder decoder(backend);
  const GenerateOptions g{.steps = T - 1, .stop_at_eos = false};
  tokens = generate(decoder, {std::vector<int32_t>(tokens.begin(), tokens.begin() + 8)},
                    {full_cache_budgets(c, T)}, g).tokens[0];
  tokens.resize(T);

  ClosedLoop out;
  backend.set_prefill_mode(PrefillMode{.evict_chunk = evict_chunk});
  backend.reset_sequences({budgets}, policy);
  ClosedLoopCapture capture(c, T);
  std::vector<float> logits;
  const int32_t zero = 0;
  // The prompt in one step, or (--prefill-evict) in chunks, each cut to budget after it.
  for (int first = 0; first < P; first += evict_chunk > 0 ? evict_chunk : P) {
    StepRows rows;
    const int end = evict_chunk > 0 ? std::min(P, first + evict_chunk) : P;
    for (int t = first; t < end; ++t) rows.add(tokens[t], t, 0, evict_chunk > 0 ? P : 0);
    capture.set_first_position(first);
    const int32_t last = end - first - 1;
    decoder.forward(rows, std::span<const int32_t>(&last, 1), &logits, &capture);
  }
  for (int t = P; t < T; ++t) {
    StepRows one;
    one.add(tokens[t], t, 0);
    capture.set_first_position(t);
    decoder.forward(one, std::span<const int32_t>(&zero, 1), &logits, &capture);
    for (int l = 0; l < c.n_layers; ++l) {
      for (int h = 0; h < c.n_kv_heads; ++h) {
        HeadCache head = backend.cache(0).head(l, h);
        out.kept[{l, h, t}] = std::vector<int32_t>(head.pos, head.pos + *head.n_used);
      }
    }
  }

  out.trace_dir = test::make_temp_dir("closedloop") + "/trace";
  auto writer = TraceWriter::create(out.trace_dir, false);
  SafetensorsWriter proj, file;
  for (int l = 0; l < c.n_layers; ++l) {
    proj.add_f32(trace_tensor_name(l, "wo"), {c.dim, c.q_dim()},
                 dequantize(default_model().weights.layer(l).wo));
  }
  EXPECT_TRUE(writer->set_projections(proj).ok());
  file.add_i32("tokens", {T}, tokens);
  file.add_f32("ref_logprob", {T - 1}, std::vector<float>(T - 1, 0.0f));
  for (int l = 0; l < c.n_layers; ++l) {
    file.add_f32(trace_tensor_name(l, "q"), {T, c.n_heads, c.head_dim()}, capture.layer(l).q);
    file.add_f32(trace_tensor_name(l, "k"), {T, c.n_kv_heads, c.head_dim()}, capture.layer(l).k);
    file.add_f32(trace_tensor_name(l, "v"), {T, c.n_kv_heads, c.head_dim()}, capture.layer(l).v);
    file.add_f32(trace_tensor_name(l, "resid_norm"), {T}, capture.layer(l).resid_norm);
  }
  EXPECT_TRUE(writer->add_sequence(file, P, T).ok());
  TraceManifest m;
  m.model = TraceModelShape{.fingerprint = std::string(64, 'a'), .source = "test", .dim = c.dim,
                            .hidden_dim = c.hidden_dim, .n_layers = c.n_layers, .n_heads = c.n_heads,
                            .n_kv_heads = c.n_kv_heads, .head_dim = c.head_dim(), .vocab_size = c.vocab_size,
                            .seq_len = c.seq_len};
  m.recorder_backend = "cpu";
  for (int l = 0; l < c.n_layers; ++l) m.layers.push_back(l);
  m.tool_version = "test";
  m.corpus = "closed loop";
  EXPECT_TRUE(writer->finish(m).ok());
  return out;
}

class ReplayAgreement : public ::testing::TestWithParam<std::string> {};

// Replays `executor`'s trace under `name` at `budget` (cutting the prompt after every `chunk` rows
// when > 0) and expects the executor's kept tokens at every decode step; returns the steps compared.
int expect_replay_keeps_executor_tokens(const ClosedLoop& executor, const std::string& name,
                                        const PolicyParams& params, int budget, int chunk,
                                        const std::vector<SlotCompression>& compression = {}) {
  auto trace = Trace::open(executor.trace_dir);
  EXPECT_TRUE(trace.ok()) << trace.error().message();
  if (!trace.ok()) return 0;
  auto engine = ReplayEngine::create(*trace, 2);
  EXPECT_TRUE(engine.ok());
  if (!engine.ok()) return 0;
  const ModelConfig& c = default_model().weights.config();
  KeptLog replayed;
  const ReplayConfig config{
      .policy = std::shared_ptr<const Policy>(make_policy(name, params).value()),
      .budgets = std::vector<std::vector<int32_t>>(c.n_layers, std::vector<int32_t>(c.n_kv_heads, budget)),
      .prefill_evict_chunk = chunk,
      .compression = compression};
  (*engine)->run(config, [&](int, int l, int h, int32_t step, std::span<const int32_t> kept) {
    replayed[{l, h, step}] = std::vector<int32_t>(kept.begin(), kept.end());
  });
  EXPECT_EQ(replayed.size(), executor.kept.size());
  int compared = 0;
  for (const auto& [key, slots] : executor.kept) {
    const auto it = replayed.find(key);
    EXPECT_TRUE(it != replayed.end() && it->second == slots)
        << name << " layer " << std::get<0>(key) << " head " << std::get<1>(key) << " step " << std::get<2>(key);
    if (it == replayed.end() || it->second != slots) return compared;
    ++compared;
  }
  return compared;
}

TEST_P(ReplayAgreement, KeepsTheExecutorsTokensInTheSameSlotsAtEveryStep) {
  const std::string name = GetParam();
  const PolicyParams params{.sinks = 2, .recent = 5, .snap_window = 6};
  const int budget = 24, T = 140, P = 40;
  const ClosedLoop executor = run_executor(name, params, budget, T, P);
  const ModelConfig& c = default_model().weights.config();
  EXPECT_EQ(expect_replay_keeps_executor_tokens(executor, name, params, budget, 0), c.n_layers * c.n_kv_heads * (T - P));
}

// --prefill-evict: the prompt of 60 cut to budget 24 after every chunk of 16, in the executor and in
// the replay alike; the same kept tokens at every decode step.
TEST_P(ReplayAgreement, CutsThePromptAsTheExecutorDoesUnderPrefillEvict) {
  const std::string name = GetParam();
  const PolicyParams params{.sinks = 2, .recent = 5, .snap_window = 6};
  const int budget = 24, T = 120, P = 60, chunk = 16;
  const ClosedLoop executor = run_executor(name, params, budget, T, P, chunk);
  const ClosedLoop whole = run_executor(name, params, budget, T, P);
  const ModelConfig& c = default_model().weights.config();
  EXPECT_EQ(expect_replay_keeps_executor_tokens(executor, name, params, budget, chunk),
            c.n_layers * c.n_kv_heads * (T - P));
  // Attention-scored policies cut the prompt differently when they see it in chunks.
  if (name == "h2o" || name == "vatp" || name == "tova") {
    EXPECT_NE(executor.kept, whole.kept) << name;
  }
}

// ThinK and Mustafar on every layer, with windows short enough that tokens age out of them: the
// executor's attention over the compressed slots drives its scores, and the replay, computing the
// same, keeps the same tokens; the compression changes what the scored policies keep.
TEST_P(ReplayAgreement, KeepsTheExecutorsTokensUnderThinkAndMustafar) {
  const std::string name = GetParam();
  const PolicyParams params{.sinks = 2, .recent = 5, .snap_window = 6};
  const int budget = 24, T = 120, P = 40;
  const ModelConfig& c = default_model().weights.config();
  SlotCompression layer = slot_compression(c.head_dim(), 0.4, 0.5, 0.5, "t", "k", "v").value();
  layer.think_recent = 8, layer.think_queries = 8, layer.dense_recent = 6;
  const std::vector<SlotCompression> compression(c.n_layers, layer);
  const ClosedLoop executor = run_executor(name, params, budget, T, P, 0, compression);
  EXPECT_EQ(expect_replay_keeps_executor_tokens(executor, name, params, budget, 0, compression),
            c.n_layers * c.n_kv_heads * (T - P));
  if (name == "h2o" || name == "vatp" || name == "tova") {
    EXPECT_NE(executor.kept, run_executor(name, params, budget, T, P).kept) << name;
  }
}

INSTANTIATE_TEST_SUITE_P(Policies, ReplayAgreement, ::testing::Values("window", "h2o", "vatp", "tova", "snapkv", "knorm", "random"),
                         [](const auto& info) { return info.param; });

// KVCrush on VATP and on H2O, re-selecting every 4 decode steps: the replay keeps the executor's
// tokens at every step (a whole prompt, and cut in chunks under --prefill-evict); after each step
// the layer's heads hold one set of budget − period + 1 .. budget tokens; and the representatives
// change what the base alone keeps.
TEST(ReplayAgreementKvCrush, KeepsTheExecutorsTokensAtEveryStep) {
  const ModelConfig& c = default_model().weights.config();
  const int budget = 24, period = 4;
  for (const std::string base : {"vatp", "h2o"}) {
    const PolicyParams params{.sinks = 2, .recent = 5, .crush_base = base, .crush_ratio = 0.25, .crush_period = period};
    const int T = 140, P = 40;
    const ClosedLoop executor = run_executor("kvcrush", params, budget, T, P);
    EXPECT_EQ(expect_replay_keeps_executor_tokens(executor, "kvcrush", params, budget, 0),
              c.n_layers * c.n_kv_heads * (T - P));
    for (const auto& [key, kept] : executor.kept) {
      const auto [l, h, t] = key;
      EXPECT_GE(static_cast<int>(kept.size()), budget - period + 1) << base << " layer " << l << " step " << t;
      EXPECT_LE(static_cast<int>(kept.size()), budget);
      EXPECT_EQ(kept, executor.kept.at({l, 0, t})) << base << " head " << h;
    }
    EXPECT_NE(executor.kept, run_executor(base, params, budget, T, P).kept) << base;
    const ClosedLoop chunked = run_executor("kvcrush", params, budget, 120, 60, 16);
    EXPECT_EQ(expect_replay_keeps_executor_tokens(chunked, "kvcrush", params, budget, 16),
              c.n_layers * c.n_kv_heads * (120 - 60));
  }
}

// DELTA over h2o and over VATP (roles f s p s p; 2 pages of 8 and the last one): the replay, which
// steps a sequence's layers together, keeps the executor's tokens at every step, the sparse layers'
// scores coming from the pages their selection layer chose; and DELTA changes what h2o keeps.
TEST(ReplayAgreementDelta, KeepsTheExecutorsTokensAtEveryStep) {
  const ModelConfig& c = default_model().weights.config();
  ASSERT_EQ(c.n_layers, 5);
  const int budget = 48, T = 140, P = 40;
  for (const std::string name : {"h2o", "vatp"}) {
    const PolicyParams params{.sinks = 2, .recent = 5,
                              .delta = {.layers = "fspsp", .pages = 2, .page_size = 8, .last = 1}};
    const ClosedLoop executor = run_executor(name, params, budget, T, P);
    EXPECT_EQ(expect_replay_keeps_executor_tokens(executor, name, params, budget, 0), c.n_layers * c.n_kv_heads * (T - P));
    PolicyParams plain = params;
    plain.delta = {};
    EXPECT_NE(executor.kept, run_executor(name, plain, budget, T, P).kept) << name;
  }
}

// A replay engine over the executor's full-cache recording of 140 positions, 24 of them prompt.
std::unique_ptr<ReplayEngine> full_cache_engine() {
  static const Trace trace = [] {
    const ClosedLoop recorded = run_executor("full", {.sinks = 0, .recent = 0}, 140, 140, 24);
    auto opened = Trace::open(recorded.trace_dir);
    KVP_CHECK(opened.ok(), "{}", opened.error().message());
    return std::move(opened).value();
  }();
  auto engine = ReplayEngine::create(trace, 2);
  KVP_CHECK(engine.ok());
  return std::move(engine).value();
}

TEST(Replay, ErrorsVanishWithAFullBudgetAndGrowAsItShrinks) {
  const std::unique_ptr<ReplayEngine> engine = full_cache_engine();
  const ModelConfig& c = default_model().weights.config();
  auto run = [&](int budget) {
    const PolicyParams p{.sinks = 2, .recent = 4};
    return engine->run({.policy = std::shared_ptr<const Policy>(make_policy("h2o", p).value()),
                           .budgets = std::vector<std::vector<int32_t>>(c.n_layers, std::vector<int32_t>(c.n_kv_heads, budget))});
  };
  const ReplayResult full = run(140), mid = run(48), small = run(12);

  // A budget covering the sequence keeps every token in position order: the same arithmetic as
  // the full-cache pass, wherever its buffers are, so the same bits.
  EXPECT_EQ(full.mean_rel_error(), 0.0);
  EXPECT_EQ(full.total_resid_energy(), 0.0);
  EXPECT_NEAR(full.mean_retained_mass(), 1.0, 1e-6);
  EXPECT_GT(mid.mean_rel_error(), 0.0);
  EXPECT_LT(mid.mean_rel_error(), small.mean_rel_error());
  EXPECT_LT(mid.total_resid_energy(), small.total_resid_energy());
  EXPECT_GT(mid.mean_retained_mass(), small.mean_retained_mass());
  EXPECT_LT(small.mean_retained_mass(), 1.0);
  EXPECT_EQ(full.head_steps, int64_t{140 - 24} * c.n_heads * c.n_layers);
  // The same configuration twice, and with one thread, gives the same bits.
  EXPECT_EQ(run(48).rel_error, mid.rel_error);
}

// DELTA over the full cache: the full and selection layers attend every token (no error, every key),
// the sparse layers only the chosen pages (error, fewer keys); with more pages than the sequence
// has, no layer has error.
TEST(Replay, DeltaErrsOnlyInTheSparseLayersAndCountsTheirKeys) {
  const std::unique_ptr<ReplayEngine> engine = full_cache_engine();
  const ModelConfig& c = default_model().weights.config();
  auto run = [&](int pages) {
    const PolicyParams p{.sinks = 0, .recent = 0, .delta = {.layers = "fsppp", .pages = pages, .page_size = 8, .last = 1}};
    return engine->run({.policy = std::shared_ptr<const Policy>(make_policy("full", p).value()),
                        .budgets = std::vector<std::vector<int32_t>>(c.n_layers, std::vector<int32_t>(c.n_kv_heads, 140))});
  };
  const ReplayResult sparse = run(3), all = run(64);
  // Decode steps 24..139 attend 24..139 cached keys and the new one: 82.5 on average.
  for (int l = 0; l < c.n_layers; ++l) {
    EXPECT_DOUBLE_EQ(all.attended[l], 82.5) << l;
    EXPECT_EQ(all.resid_energy[l], 0.0) << l;
    if (l < 2) {
      EXPECT_EQ(sparse.resid_energy[l], 0.0) << l;
      EXPECT_DOUBLE_EQ(sparse.attended[l], 82.5) << l;
    } else {
      EXPECT_GT(sparse.resid_energy[l], 0.0) << l;
      // Pages 0, the last and 3 chosen of 8 positions each: at most 40 keys and the new one.
      EXPECT_LE(sparse.attended[l], 41.0) << l;
      EXPECT_GT(sparse.attended[l], 30.0) << l;
    }
  }
}

// A layer's replay depends only on that layer's configuration, so the engine takes a layer it has
// already replayed at the same policy and budgets from its memo: a mixed plan after a uniform one
// gives the bits a fresh engine computes, and another policy setting is replayed anew.
TEST(Replay, LayersAlreadyReplayedGiveTheSameBitsFromTheMemo) {
  const ModelConfig& c = default_model().weights.config();
  const PolicyParams p{.sinks = 2, .recent = 4};
  auto config = [&](std::vector<int32_t> layer_budgets, const PolicyParams& params) {
    std::vector<std::vector<int32_t>> budgets;
    for (int32_t b : layer_budgets) budgets.push_back(std::vector<int32_t>(c.n_kv_heads, b));
    return ReplayConfig{.policy = std::shared_ptr<const Policy>(make_policy("h2o", params).value()), .budgets = budgets};
  };
  const std::unique_ptr<ReplayEngine> warm = full_cache_engine(), fresh = full_cache_engine();
  warm->run(config({48, 48, 48, 48, 48}, p));
  const ReplayResult memo = warm->run(config({48, 16, 48, 16, 48}, p));
  const ReplayResult computed = fresh->run(config({48, 16, 48, 16, 48}, p));
  EXPECT_EQ(memo.rel_error, computed.rel_error);
  EXPECT_EQ(memo.resid_energy, computed.resid_energy);
  EXPECT_EQ(memo.retained_mass, computed.retained_mass);
  EXPECT_EQ(memo.attended, computed.attended);
  PolicyParams wider = p;
  wider.recent = 8;
  const ReplayResult other = warm->run(config({48, 16, 48, 16, 48}, wider));
  EXPECT_NE(other.resid_energy, memo.resid_energy);
  EXPECT_EQ(other.resid_energy, fresh->run(config({48, 16, 48, 16, 48}, wider)).resid_energy);
  // Twice in one batch on an engine that never saw it: the second takes the first's sums.
  const std::vector<ReplayResult> twice =
      full_cache_engine()->run_batch({config({48, 16, 48, 16, 48}, p), config({48, 16, 48, 16, 48}, p)});
  EXPECT_EQ(twice[0].resid_energy, computed.resid_energy);
  EXPECT_EQ(twice[1].resid_energy, computed.resid_energy);
  EXPECT_EQ(twice[1].rel_error, computed.rel_error);
}

// Each decode step's energy, kept on request: one value per sequence, layer and step, summing per
// layer (over sequences and steps, divided by the steps) to the layer's mean energy; zero where
// the budget held every token so far; kept even for a layer the engine has memoised.
TEST(Replay, StepEnergiesSumToEachLayersEnergy) {
  const std::unique_ptr<ReplayEngine> engine = full_cache_engine();
  const ModelConfig& c = default_model().weights.config();
  auto config = [&](int budget) {
    return ReplayConfig{.policy = std::shared_ptr<const Policy>(make_policy("h2o", {.sinks = 2, .recent = 4}).value()),
                        .budgets = std::vector<std::vector<int32_t>>(c.n_layers, std::vector<int32_t>(c.n_kv_heads, budget)),
                        .step_energies = std::make_shared<StepEnergies>()};
  };
  ReplayConfig plain = config(32);
  plain.step_energies = nullptr;
  engine->run(plain);  // memoises every layer at 32
  const ReplayConfig asked = config(32);
  const ReplayResult r = engine->run(asked);
  const std::vector<std::vector<std::vector<float>>>& e = asked.step_energies->values;
  ASSERT_EQ(e.size(), size_t(engine->n_sequences()));
  const int64_t steps = engine->decode_steps();
  for (int l = 0; l < c.n_layers; ++l) {
    double sum = 0;
    int64_t n = 0;
    for (const auto& seq : e) {
      ASSERT_EQ(seq.size(), size_t(c.n_layers));
      for (float v : seq[l]) sum += v, ++n;
    }
    EXPECT_EQ(n, steps) << "layer " << l;
    EXPECT_GT(r.resid_energy[l], 0.0) << "layer " << l;
    EXPECT_NEAR(sum / double(steps), r.resid_energy[l], 1e-6 * r.resid_energy[l]) << "layer " << l;
  }
  // The trace's prompt is 24 tokens: at budget 32 nothing is evicted before position 32, so the
  // first 8 decode steps attend every token and err nowhere.
  for (int m = 0; m < 8; ++m) EXPECT_EQ(e[0][0][m], 0.0f) << "step " << m;
  EXPECT_GT(*std::max_element(e[0][0].begin(), e[0][0].end()), 0.0f);
}

// Each KV head's own residual energy: zero for a head holding every token, and when one head
// alone is cut, the layer's energy is that head's (no other head adds error or cross terms).
TEST(Replay, HeadEnergyIsEachHeadsShareOfTheLayersEnergy) {
  const std::unique_ptr<ReplayEngine> engine = full_cache_engine();
  const ModelConfig& c = default_model().weights.config();
  ASSERT_GE(c.n_kv_heads, 2);
  std::vector<std::vector<int32_t>> budgets(c.n_layers, std::vector<int32_t>(c.n_kv_heads, 140));
  budgets[1][1] = 16;  // layer 1, KV head 1 only
  const ReplayResult r = engine->run({.policy = std::shared_ptr<const Policy>(make_policy("h2o", {.sinks = 2, .recent = 4}).value()),
                                         .budgets = budgets,
                                         .head_energy = true});
  ASSERT_EQ(r.head_resid_energy.size(), size_t(c.n_layers));
  for (int l = 0; l < c.n_layers; ++l) {
    for (int h = 0; h < c.n_kv_heads; ++h) {
      if (l == 1 && h == 1) continue;
      EXPECT_EQ(r.head_resid_energy[l][h], 0.0) << l << " " << h;
    }
    if (l != 1) {
      EXPECT_EQ(r.resid_energy[l], 0.0);
    }
  }
  EXPECT_GT(r.head_resid_energy[1][1], 0.0);
  EXPECT_NEAR(r.head_resid_energy[1][1], r.resid_energy[1], 1e-6 * r.resid_energy[1]);
}

}  // namespace
}  // namespace kvp
