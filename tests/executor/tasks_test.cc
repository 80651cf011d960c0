// kvplan tasks and eval --tasks on the embedded model: instances deterministic per seed with
// needles where the file says, RULER's scorer on hand-made answers, the tasks file's round trip
// and its refusals (each next to the valid file it breaks), the shared-prefill loop giving the
// answers of each configuration run alone, and the task trace it records: the replay cutting what
// the closed loop cut, recording alone writing the same arrays, and the answer attention against
// H2O's accumulated attention in a cache that never evicts.
#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include "executor/cpu/cpu_backend.h"
#include "executor/tasks/task_eval.h"
#include "executor/decoder.h"
#include "executor/tasks/tasks.h"
#include "planner/plan/plan.h"
#include "planner/task_trace.h"
#include "tests/support/test_support.h"

namespace kvp::tasks_test {
namespace {

using test::default_model;

std::vector<TaskInstance> make(uint64_t seed, std::vector<std::string> families = {}, int n = 2, int length = 440) {
  auto t = generate_tasks(default_model().tokenizer, "none",
                          TaskGenOptions{.length = length, .n = n, .seed = seed, .families = std::move(families)});
  EXPECT_TRUE(t.ok()) << t.error().message();
  return t.ok() ? std::move(t).value() : std::vector<TaskInstance>{};
}

TEST(Tasks, DeterministicPerSeedAndIndependentOfTheOtherFamilies) {
  // At 440 tokens of this model's 512: every family but niah_multivalue and niah_multiquery (their
  // four needles and questions need more).
  const std::vector<std::string> fit = {"niah_single", "niah_single_uuid", "niah_multikey", "vt", "cwe", "fwe"};
  const auto a = make(7, fit), b = make(7, fit), c = make(8, fit);
  ASSERT_EQ(a.size(), fit.size() * 2);
  for (size_t i = 0; i < a.size(); ++i) EXPECT_EQ(a[i].tokens, b[i].tokens) << a[i].id;
  int differ = 0;
  for (size_t i = 0; i < a.size(); ++i) differ += a[i].tokens != c[i].tokens;
  EXPECT_EQ(differ, static_cast<int>(a.size()));
  // The same vt instances whether or not the other families are made.
  const auto vt = make(7, {"vt"});
  for (const TaskInstance& t : a) {
    if (t.family == "vt") EXPECT_EQ(t.tokens, vt[std::stoi(t.id.substr(t.id.rfind('-') + 1))].tokens);
  }
}

TEST(Tasks, NeedlesLieWhereTheFileSaysAndPromptsFitTheirLength) {
  const Tokenizer& tok = default_model().tokenizer;
  const auto all = make(3, {"niah_single", "niah_single_uuid", "niah_multikey", "vt", "cwe", "fwe"}, 3);
  EXPECT_EQ(all.size(), 18u);
  for (const TaskInstance& t : all) {
    SCOPED_TRACE(t.id);
    EXPECT_LE(static_cast<int>(t.tokens.size()), 440);
    EXPECT_GT(static_cast<int>(t.tokens.size()), 300);  // filled toward the length
    EXPECT_GT(t.context_end, 0);
    EXPECT_LT(t.context_end, static_cast<int32_t>(t.tokens.size()));
    ASSERT_FALSE(t.needles.empty());
    for (const TaskNeedle& n : t.needles) {
      ASSERT_LT(n.begin, n.end);
      ASSERT_LE(n.end, t.context_end);
      const std::vector<int32_t> span(t.tokens.begin() + n.begin, t.tokens.begin() + n.end);
      EXPECT_EQ(span, tok.encode(n.text, false));
    }
    // Each answer is in the context: in a needle (niah, vt's names) or a listed word (cwe, fwe).
    for (const std::string& a : t.answers) {
      bool in_needle = false;
      for (const TaskNeedle& n : t.needles) in_needle = in_needle || n.text.find(a) != std::string::npos;
      EXPECT_TRUE(in_needle) << a;
      EXPECT_NE(t.context.find(a), std::string::npos) << a;
    }
    EXPECT_FALSE(t.question.empty());
  }
  // niah_single: one needle holding the one answer, a 7-digit number; uuid: 8-4-4-4-12 hex.
  for (const TaskInstance& t : all) {
    if (t.family == "niah_single") EXPECT_EQ(t.answers[0].size(), 7u);
    if (t.family == "niah_single_uuid") EXPECT_EQ(t.answers[0].size(), 36u);
    if (t.family == "niah_multikey") EXPECT_EQ(t.needles.size(), 4u);
    if (t.family == "vt") EXPECT_EQ(t.answers.size(), 5u);
    if (t.family == "cwe") EXPECT_EQ(t.answers.size(), 10u);
    if (t.family == "fwe") EXPECT_EQ(t.answers.size(), 3u);
  }
}

TEST(Tasks, RulersScoresOfHandMadeAnswers) {
  const std::vector<std::string> answers = {"1234567", "Apple-Pie"};
  EXPECT_DOUBLE_EQ(score_answer(TaskMetric::kMatchAll, answers, "The numbers are 1234567 and apple-pie."), 1.0);
  EXPECT_DOUBLE_EQ(score_answer(TaskMetric::kMatchAll, answers, "It is 1234567."), 0.5);
  EXPECT_DOUBLE_EQ(score_answer(TaskMetric::kMatchAll, answers, "123456 7"), 0.0);
  EXPECT_DOUBLE_EQ(score_answer(TaskMetric::kMatchPart, answers, "APPLE-PIE"), 1.0);
  EXPECT_DOUBLE_EQ(score_answer(TaskMetric::kMatchPart, answers, "none"), 0.0);
  EXPECT_DOUBLE_EQ(score_answer(TaskMetric::kMatchAll, {}, "anything"), 0.0);
  const Interval ci = wilson_interval(0.5, 20);
  EXPECT_NEAR(ci.low, 0.299, 0.001);  // Wilson 95% for 10 of 20, by hand
  EXPECT_NEAR(ci.high, 0.701, 0.001);
}

TEST(Tasks, FileRoundTripsAndRefusesBrokenInstancesByField) {
  const ModelConfig& config = default_model().weights.config();
  TaskFile file{.header = {.model_fingerprint = "abc", .length = 440, .n = 1, .seed = 3, .haystack = "filler",
                           .chat_template = "none", .families = {"niah_single"}},
                .instances = make(3, {"niah_single"}, 1)};
  const std::string text = tasks_text(file);
  auto back = parse_tasks(text, "t.jsonl", config, "abc");
  ASSERT_TRUE(back.ok()) << back.error().message();
  EXPECT_EQ(tasks_text(*back), text);
  // Each breakage of the valid instance line, and the field its error names.
  const std::string header = text.substr(0, text.find('\n') + 1);
  const nlohmann::json good = nlohmann::json::parse(text.substr(header.size()));
  auto broken = [&](const std::function<void(nlohmann::json&)>& edit) {
    nlohmann::json j = good;
    edit(j);
    auto r = parse_tasks(header + j.dump() + "\n", "t.jsonl", config, "abc");
    return r.ok() ? std::string("accepted") : r.error().message();
  };
  EXPECT_EQ(broken([](nlohmann::json&) {}), "accepted");
  EXPECT_EQ(broken([](nlohmann::json& j) { j.erase("answers"); }), "t.jsonl: line 2: field 'answers' is missing");
  EXPECT_EQ(broken([](nlohmann::json& j) { j["context_end"] = "x"; }).find("field 'context_end': expected an integer"),
            std::string("t.jsonl: line 2: ").size());
  const int ctx = good["context_end"].get<int>();
  EXPECT_EQ(broken([&](nlohmann::json& j) { j["needles"][0]["end"] = ctx + 1; }),
            fmt::format("t.jsonl: line 2: needles[0]: tokens [{}, {}) lie outside the context [0, {})",
                        good["needles"][0]["begin"].get<int>(), ctx + 1, ctx));
  EXPECT_NE(broken([&](nlohmann::json& j) { j["needles"][0].erase("begin"); }).find("needles[0]: field 'begin' is missing"),
            std::string::npos);
  EXPECT_NE(broken([&](nlohmann::json& j) { j["tokens"][5] = config.vocab_size; }).find("tokens[5] = 512 is outside"),
            std::string::npos);
  EXPECT_NE(broken([&](nlohmann::json& j) {
              for (int i = 0; i < 100; ++i) j["tokens"].push_back(1);
            }).find("exceed the model's 512 positions"),
            std::string::npos);
  EXPECT_NE(broken([&](nlohmann::json& j) { j["metric"] = "exact"; }).find("field 'metric': expected string_match_all"),
            std::string::npos);
  // Another model's file, and a file that is not one.
  EXPECT_NE(parse_tasks(text, "t.jsonl", config, "def").error().message().find("line 1: field 'model_fingerprint'"),
            std::string::npos);
  EXPECT_EQ(parse_tasks("{\"format\":\"kvplan-corpus\"}\n", "t.jsonl", config, "").error().message(),
            "t.jsonl: line 1: not a kvplan-tasks header (kvplan tasks writes one)");
  EXPECT_EQ(parse_tasks(header, "t.jsonl", config, "").error().message(), "t.jsonl: no instances after the header");
}

TEST(Tasks, GenerationRefusesWhatCannotBeMade) {
  const Tokenizer& tok = default_model().tokenizer;
  EXPECT_NE(generate_tasks(tok, "none", {.length = 440, .families = {"qa"}}).error().message().find("unknown family 'qa'"),
            std::string::npos);
  EXPECT_NE(generate_tasks(tok, "none", {.length = 200, .families = {"niah_multikey"}}).error().message().find("--length"),
            std::string::npos);
  EXPECT_NE(generate_tasks(tok, "none", {.length = 440, .haystack = "corpus"}).error().message().find("--corpus"),
            std::string::npos);
  EXPECT_NE(generate_tasks(tok, "chatml", {.length = 440}).error().message().find("<|im_start|>"), std::string::npos);
}

// The loop's answers against each configuration run alone: its own prefill of the context (cut
// to budget at the end), the question fed after the cut, then greedy tokens.
TEST(Tasks, SharedPrefillAnswersAsEachConfigurationAlone) {
  const ModelWeights& w = default_model().weights;
  const Tokenizer& tok = default_model().tokenizer;
  const auto instances = make(5, {"niah_single", "vt"}, 2);
  std::vector<TaskConfig> configs = {{.label = "full"},
                                     {.label = "vatp", .policy = "vatp", .keep = 0.5},
                                     {.label = "h2o", .policy = "h2o", .keep = 0.25},
                                     {.label = "snapkv aware", .policy = "snapkv", .keep = 0.3, .cut = CutPoint::kQuestion}};
  // ThinK and Mustafar caches, cut in prefills of their own rather than forked.
  const ModelConfig& mc = w.config();
  const PlanModel pm{.fingerprint = std::string(64, 'a'), .dim = mc.dim, .n_layers = mc.n_layers, .n_heads = mc.n_heads,
                     .n_kv_heads = mc.n_kv_heads, .head_dim = mc.head_dim(), .vocab_size = mc.vocab_size,
                     .seq_len = mc.seq_len};
  for (const auto& [label, compression] :
       {std::pair{"vatp think", PlanCompression{.think_ratio = std::vector<double>(mc.n_layers, 0.5), .think_window = 8,
                                                .think_recent = 8}},
        std::pair{"vatp mustafar", PlanCompression{.key_sparsity = std::vector<double>(mc.n_layers, 0.5),
                                                   .value_sparsity = std::vector<double>(mc.n_layers, 0.5),
                                                   .dense_recent = 8}}}) {
    auto plan = uniform_plan(pm, "vatp", published_defaults("vatp", 150), 150, KvDtype::kF32, compression);
    ASSERT_TRUE(plan.ok()) << plan.error().message();
    configs.push_back({.label = label, .policy = "vatp", .params = plan->params, .published_defaults = false,
                       .budgets = plan->kv_budgets()});
  }
  CpuBackend backend(w, 2);
  const auto out = evaluate_tasks(backend, tok, instances, configs, TaskEvalOptions{.prefill_chunk = 128, .batch = 3});
  const ModelConfig& c = w.config();
  for (size_t ci = 0; ci < configs.size(); ++ci) {
    for (size_t ii = 0; ii < instances.size(); ++ii) {
      const TaskInstance& t = instances[ii];
      const TaskOutcome& o = out[ci][ii];
      SCOPED_TRACE(configs[ci].label + " " + t.id);
      const int n = static_cast<int>(t.tokens.size());
      const int prefix = configs[ci].cut == CutPoint::kContext ? t.context_end : n - 1;
      CpuBackend own(w);
      if (configs[ci].policy == "full") {
        own.reset_sequences({full_cache_budgets(c, n + t.max_answer_tokens + 8)});
      } else if (configs[ci].budgets) {
        EXPECT_EQ(o.kv_bytes, configs[ci].budgets->kv_bytes());
        own.reset_sequences({*configs[ci].budgets},
                            std::shared_ptr<const Policy>(make_policy("vatp", configs[ci].params).value()));
      } else {
        const int budget = static_cast<int>(std::ceil(configs[ci].keep * prefix));
        auto policy = std::shared_ptr<const Policy>(make_policy(configs[ci].policy, published_defaults(configs[ci].policy, budget)).value());
        KvBudgets b = KvBudgets::uniform(c.n_layers, c.n_kv_heads, c.head_dim(), std::max(budget, policy->min_budget()));
        b.aux_floats_per_slot = policy->aux_floats_per_slot();
        EXPECT_EQ(o.kv_bytes, b.kv_bytes());
        own.reset_sequences({b}, policy);
      }
      Decoder d(own);
      StepRows rows;
      for (int p = 0; p < prefix; ++p) rows.add(t.tokens[p], p, 0);
      d.forward(rows, {}, nullptr);
      rows = StepRows{};
      for (int p = prefix; p < n; ++p) rows.add(t.tokens[p], p, 0);
      std::vector<int32_t> answer;
      std::vector<float> logits;
      int32_t last = static_cast<int32_t>(rows.size() - 1);
      for (int step = 0; step < t.max_answer_tokens; ++step) {
        d.forward(rows, std::span(&last, 1), &logits);
        const int32_t token = static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
        if (tok.is_end_token(token) || token == tok.bos()) break;
        answer.push_back(token);
        rows = StepRows{};
        rows.add(token, n + step, 0);
        last = 0;
      }
      EXPECT_EQ(o.prediction, tok.decode(answer));
      EXPECT_EQ(o.score, score_answer(t.metric, t.answers, o.prediction));
      if (configs[ci].policy == "full") {
        EXPECT_EQ(o.nll, o.nll_full);
        EXPECT_EQ(o.kl, 0.0);
      } else {
        EXPECT_GT(o.kl, 0.0);
        EXPECT_GE(o.needles_kept, 0.0);
        EXPECT_LE(o.needles_kept, 1.0);
      }
    }
  }
  // Keeping a quarter, h2o loses needle tokens somewhere.
  double kept = 0;
  for (const TaskOutcome& o : out[2]) kept += o.needles_kept;
  EXPECT_LT(kept, static_cast<double>(out[2].size()));
}


TEST(Tasks, TaskTraceReplaysTheClosedLoopsCuts) {
  const ModelWeights& w = default_model().weights;
  const Tokenizer& tok = default_model().tokenizer;
  const ModelConfig& c = w.config();
  const auto instances = make(9, {"niah_single", "niah_multikey", "vt"}, 2);
  std::vector<TaskConfig> configs = {{.label = "full"}};
  for (const char* p : {"window", "h2o", "vatp", "tova", "snapkv", "knorm"}) {
    for (double keep : {0.3, 0.6}) configs.push_back({.label = fmt::format("{} {}", p, keep), .policy = p, .keep = keep});
  }
  CpuBackend backend(w, 2);
  TaskTrace trace{.n_layers = c.n_layers, .n_kv_heads = c.n_kv_heads};
  const auto out = evaluate_tasks(backend, tok, instances, configs,
                                  TaskEvalOptions{.prefill_chunk = 128, .batch = 4, .trace = &trace});
  ASSERT_EQ(trace.instances.size(), instances.size());
  EXPECT_EQ(trace.scorers.size(), 6u);  // one per policy: none of these scores a prefill like another
  int with_needles_lost = 0;
  for (size_t ci = 1; ci < configs.size(); ++ci) {
    for (size_t ii = 0; ii < instances.size(); ++ii) {
      const TaskOutcome& o = out[ci][ii];
      SCOPED_TRACE(configs[ci].label + " " + o.id);
      const int prefix = instances[ii].context_end;
      const int budget = static_cast<int>(std::ceil(configs[ci].keep * prefix));
      auto policy = make_policy(configs[ci].policy, published_defaults(configs[ci].policy, budget));
      ASSERT_TRUE(policy.ok());
      const std::vector<int32_t> budgets(size_t(c.n_layers) * c.n_kv_heads, o.budget);
      auto f = replay_task(trace, trace.instances[ii], **policy, budgets);
      ASSERT_TRUE(f.ok()) << f.error().message();
      EXPECT_DOUBLE_EQ(f->needles, o.needles_kept);
      with_needles_lost += o.needles_kept < 1;
      EXPECT_GT(f->mass, 0.0);
      EXPECT_LE(f->mass, 1.0 + 1e-9);
    }
  }
  EXPECT_GT(with_needles_lost, 0);
  for (size_t ii = 0; ii < instances.size(); ++ii) {
    EXPECT_EQ(trace.instances[ii].full_score, out[0][ii].score);
    EXPECT_EQ(trace.instances[ii].cut, instances[ii].context_end);
  }
  // Recording alone, the same scorers asked for: the same arrays.
  TaskTrace alone{.n_layers = c.n_layers, .n_kv_heads = c.n_kv_heads};
  TaskEvalOptions options{.prefill_chunk = 128, .trace = &alone};
  for (const char* p : {"knorm", "tova", "window", "h2o", "vatp", "snapkv"}) {
    options.trace_scorers.push_back(std::shared_ptr<const Policy>(make_policy(p, published_defaults(p, 64)).value()));
  }
  evaluate_tasks(backend, tok, instances, {}, options);
  ASSERT_EQ(alone.instances.size(), instances.size());
  ASSERT_EQ(alone.scorers.size(), trace.scorers.size());
  for (size_t ii = 0; ii < instances.size(); ++ii) {
    EXPECT_EQ(alone.instances[ii].answer_attention, trace.instances[ii].answer_attention);
    for (size_t s = 0; s < alone.scorers.size(); ++s) {
      auto p = make_policy(alone.scorers[s].policy, alone.scorers[s].params);
      const int t = trace.scorer_for(**p);
      ASSERT_GE(t, 0);
      EXPECT_EQ(alone.instances[ii].score[s], trace.instances[ii].score[t]) << alone.scorers[s].policy;
      EXPECT_EQ(alone.instances[ii].aux[s], trace.instances[ii].aux[t]) << alone.scorers[s].policy;
    }
  }
  // The answer attention: what H2O accumulates, in a cache that never evicts, from the rows of the
  // prompt's last token and the reference answer's (all but its last token), per row and query head.
  const TaskInstance& t = instances[0];
  const int n = static_cast<int>(t.tokens.size()), prefix = t.context_end, rows_n = static_cast<int>(t.reference.size());
  CpuBackend own(w);
  auto h2o = std::shared_ptr<const Policy>(make_policy("h2o", PolicyParams{.sinks = 0, .recent = 1}).value());
  own.reset_sequences({KvBudgets::uniform(c.n_layers, c.n_kv_heads, c.head_dim(), n + rows_n + 1)}, h2o);
  Decoder d(own);
  StepRows rows;
  for (int p = 0; p < n - 1; ++p) rows.add(t.tokens[p], p, 0);
  d.forward(rows, {}, nullptr);
  std::vector<std::vector<float>> before;
  for (int l = 0; l < c.n_layers; ++l) {
    for (int h = 0; h < c.n_kv_heads; ++h) {
      const HeadSlots head = own.cache(0).head(l, h);
      before.emplace_back(head.score, head.score + prefix);
    }
  }
  rows = StepRows{};
  rows.add(t.tokens[n - 1], n - 1, 0);
  for (int r = 0; r + 1 < rows_n; ++r) rows.add(t.reference[r], n + r, 0);
  d.forward(rows, {}, nullptr);
  double total = 0;
  for (int l = 0; l < c.n_layers; ++l) {
    for (int h = 0; h < c.n_kv_heads; ++h) {
      const HeadSlots head = own.cache(0).head(l, h);
      const float* a = trace.instances[0].answer_attention.data() + trace.instances[0].head_offset(c.n_kv_heads, l, h);
      for (int j = 0; j < prefix; ++j) {
        ASSERT_EQ(head.pos[j], j);
        const double want = (head.score[j] - before[size_t(l) * c.n_kv_heads + h][j]) / (rows_n * c.group_size());
        EXPECT_NEAR(a[j], want, 0.01 * want + 1e-5) << l << " " << h << " " << j;
        total += a[j];
      }
    }
  }
  EXPECT_GT(total, 0.0);
}

}  // namespace
}  // namespace kvp::tasks_test
