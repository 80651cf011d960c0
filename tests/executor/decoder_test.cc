// The decoder on the CPU backend: the model README's greedy oracle token for token, agreement
// with a plain from-scratch reference in double precision, and batches that equal single runs.
#include <gtest/gtest.h>

#include <cmath>

#include "executor/cpu/cpu_backend.h"
#include "executor/generator.h"
#include "tests/support/test_support.h"

namespace kvp {
namespace {

using test::default_model;
using test::default_model_oracle;

// f32 decoder against the double-precision reference, relative to the largest logit.
constexpr double kMaxRelErrF32VsF64 = 2e-4;

std::vector<int32_t> greedy(const std::vector<int32_t>& prompt, int steps) {
  CpuBackend backend(default_model().weights);
  Decoder decoder(backend);
  const GenerateOptions options{.steps = steps};
  auto result = generate(decoder, {prompt},
                         {full_cache_budgets(default_model().weights.config(), steps)}, options);
  return result.tokens[0];
}

TEST(Decoder, GreedyFromBosReproducesTheOracle) {
  const std::vector<int32_t> tokens = greedy({kBosToken}, 256);
  const test::Oracle& oracle = default_model_oracle();
  ASSERT_GE(tokens.size(), oracle.first_ids.size() + 1);
  EXPECT_EQ(std::vector<int32_t>(tokens.begin() + 1, tokens.begin() + 1 + oracle.first_ids.size()),
            oracle.first_ids);
  EXPECT_EQ(default_model().tokenizer.decode(tokens), oracle.text);
  EXPECT_EQ(tokens.size(), 257u) << "256 positions, each yielding a token";
}

TEST(Decoder, GreedyFromOnceUponATimeReproducesTheOracle) {
  const std::vector<int32_t> prompt = default_model().tokenizer.encode("Once upon a time");
  const std::vector<int32_t> tokens = greedy(prompt, 256);
  EXPECT_EQ(default_model().tokenizer.decode(tokens), default_model_oracle().text);
  // The prompt is the oracle's own first tokens, so the whole sequence is the same.
  EXPECT_EQ(tokens, greedy({kBosToken}, 256));
}

// Plain reference: every position recomputed from the token ids, no cache, doubles throughout.
std::vector<std::vector<double>> reference_logits(const ModelWeights& w,
                                                  const std::vector<int32_t>& tokens) {
  const ModelConfig& c = w.config();
  const int T = static_cast<int>(tokens.size()), D = c.dim, H = c.n_heads, hd = c.head_dim();
  using Mat = std::vector<std::vector<double>>;
  auto linear = [](const WeightTensor& t, int out, int in, const std::vector<double>& x,
                   const float* bias = nullptr) {
    EXPECT_EQ(t.rows, out);
    EXPECT_EQ(t.cols, in);
    const std::vector<float> W = dequantize(t);
    std::vector<double> y(out, 0.0);
    for (int o = 0; o < out; ++o) {
      for (int i = 0; i < in; ++i) y[o] += double(W[size_t(o) * in + i]) * x[i];
      if (bias) y[o] += bias[o];
    }
    return y;
  };
  auto rmsnorm = [&](const std::vector<double>& x, const float* g) {
    double ss = 0;
    for (double v : x) ss += v * v;
    const double inv = 1.0 / std::sqrt(ss / x.size() + c.norm_eps);
    std::vector<double> y(x.size());
    for (size_t i = 0; i < x.size(); ++i) y[i] = g[i] * x[i] * inv;
    return y;
  };
  // RoPE in the model's layout: pairs (2i, 2i+1), or (i, i + hd/2) for rotate-half checkpoints.
  const bool half = c.rope_style == RopeStyle::kHalf;
  auto rope = [&](std::vector<double>& v, int pos) {
    for (size_t h = 0; h < v.size() / hd; ++h) {
      for (int i = 0; i < hd / 2; ++i) {
        const double divisor = c.rope_freq_divisors.empty() ? 1.0 : c.rope_freq_divisors[i];
        const double angle = pos * std::pow(double(c.rope_theta), -2.0 * i / hd) / divisor;
        double& a = v[h * hd + (half ? i : 2 * i)];
        double& b = v[h * hd + (half ? i + hd / 2 : 2 * i + 1)];
        const double a0 = a, b0 = b;
        a = a0 * std::cos(angle) - b0 * std::sin(angle);
        b = a0 * std::sin(angle) + b0 * std::cos(angle);
      }
    }
  };
  Mat x(T, std::vector<double>(D));
  const std::vector<float> embedding = dequantize(w.token_embedding());
  for (int t = 0; t < T; ++t)
    for (int i = 0; i < D; ++i) x[t][i] = embedding[size_t(tokens[t]) * D + i];
  for (int l = 0; l < c.n_layers; ++l) {
    const LayerWeights& L = w.layer(l);
    Mat q(T), k(T), v(T);
    for (int t = 0; t < T; ++t) {
      const auto xb = rmsnorm(x[t], L.rms_att);
      q[t] = linear(L.wq, c.q_dim(), D, xb, L.bq);
      k[t] = linear(L.wk, c.kv_dim(), D, xb, L.bk);
      v[t] = linear(L.wv, c.kv_dim(), D, xb, L.bv);
      rope(q[t], t);
      rope(k[t], t);
    }
    for (int t = 0; t < T; ++t) {
      std::vector<double> att(c.q_dim(), 0.0);
      for (int h = 0; h < H; ++h) {
        const int kvh = h / c.group_size();
        std::vector<double> s(t + 1);
        double mx = -1e300;
        for (int j = 0; j <= t; ++j) {
          double dot = 0;
          for (int d = 0; d < hd; ++d) dot += q[t][h * hd + d] * k[j][kvh * hd + d];
          s[j] = dot / std::sqrt(double(hd));
          mx = std::max(mx, s[j]);
        }
        double sum = 0;
        for (double& e : s) sum += (e = std::exp(e - mx));
        for (int j = 0; j <= t; ++j)
          for (int d = 0; d < hd; ++d) att[h * hd + d] += s[j] / sum * v[j][kvh * hd + d];
      }
      const auto o = linear(L.wo, D, c.q_dim(), att);
      for (int i = 0; i < D; ++i) x[t][i] += o[i];
      const auto xb = rmsnorm(x[t], L.rms_ffn);
      auto g = linear(L.w1, c.hidden_dim, D, xb);
      const auto u = linear(L.w3, c.hidden_dim, D, xb);
      for (int i = 0; i < c.hidden_dim; ++i) g[i] = g[i] / (1.0 + std::exp(-g[i])) * u[i];
      const auto down = linear(L.w2, D, c.hidden_dim, g);
      for (int i = 0; i < D; ++i) x[t][i] += down[i];
    }
  }
  Mat logits(T);
  for (int t = 0; t < T; ++t) {
    logits[t] = linear(w.classifier(), c.vocab_size, D, rmsnorm(x[t], w.rms_final()));
  }
  return logits;
}

// Teacher-forced logits of every position from the CPU backend: all rows in one pass, or one
// row per pass (the decode path).
std::vector<float> backend_logits(const ModelWeights& w, const std::vector<int32_t>& tokens,
                                  bool one_row_per_pass) {
  const ModelConfig& c = w.config();
  CpuBackend backend(w);
  Decoder decoder(backend);
  backend.reset_sequences({full_cache_budgets(c, static_cast<int>(tokens.size()))});
  std::vector<float> all, logits;
  if (one_row_per_pass) {
    for (size_t t = 0; t < tokens.size(); ++t) {
      StepRows rows;
      rows.add(tokens[t], static_cast<int32_t>(t), 0);
      const int32_t first = 0;
      decoder.forward(rows, std::span<const int32_t>(&first, 1), &logits);
      all.insert(all.end(), logits.begin(), logits.end());
    }
    return all;
  }
  StepRows rows;
  std::vector<int32_t> logit_rows;
  for (size_t t = 0; t < tokens.size(); ++t) {
    rows.add(tokens[t], static_cast<int32_t>(t), 0);
    logit_rows.push_back(static_cast<int32_t>(t));
  }
  decoder.forward(rows, logit_rows, &all);
  return all;
}

void expect_matches_reference(const ModelWeights& w, const std::vector<int32_t>& tokens) {
  const auto ref = reference_logits(w, tokens);
  const std::vector<float> got = backend_logits(w, tokens, false);
  const int V = w.config().vocab_size;
  for (size_t t = 0; t < tokens.size(); ++t) {
    double scale = 0, err = 0;
    for (int i = 0; i < V; ++i) {
      scale = std::max(scale, std::abs(ref[t][i]));
      err = std::max(err, std::abs(ref[t][i] - got[t * V + i]));
    }
    ASSERT_LE(err, kMaxRelErrF32VsF64 * scale) << "position " << t;
  }
}

TEST(Decoder, MatchesThePlainReferenceOnStories260K) {
  const auto tokens = default_model().tokenizer.encode(
      "Once upon a time, there was a little dog named Max. He liked to run.");
  expect_matches_reference(default_model().weights, tokens);
}

TEST(Decoder, MatchesThePlainReferenceWithUnsharedClassifierAndGroupOf3) {
  const ModelConfig config{.dim = 48, .hidden_dim = 100, .n_layers = 3, .n_heads = 6,
                           .n_kv_heads = 2, .vocab_size = 300, .seq_len = 64,
                           .shared_classifier = false};
  const ModelWeights w = random_weights(config, 11);
  std::vector<int32_t> tokens;
  for (int i = 0; i < 37; ++i) tokens.push_back((i * 97 + 13) % config.vocab_size);
  expect_matches_reference(w, tokens);
}

std::vector<int32_t> some_tokens(int n, int vocab) {
  std::vector<int32_t> tokens;
  for (int i = 0; i < n; ++i) tokens.push_back((i * 97 + 13) % vocab);
  return tokens;
}

// Weights kept in each stored type: the backend computes with exactly the stored values (the
// reference widens them the same way), so the typed kernels meet the f32 reference tolerance.
TEST(Decoder, MatchesThePlainReferenceWithF16Bf16AndQ8_0Weights) {
  const ModelConfig config{.dim = 64, .hidden_dim = 96, .n_layers = 2, .n_heads = 4, .n_kv_heads = 2,
                           .vocab_size = 300, .seq_len = 64, .shared_classifier = false};
  const ModelWeights f32 = random_weights(config, 5);
  for (WeightType type : {WeightType::kF16, WeightType::kBF16, WeightType::kQ8_0}) {
    SCOPED_TRACE(std::string(weight_type_name(type)));
    const ModelWeights w = convert_weights(f32, type);
    EXPECT_EQ(w.layer(1).w2.type, type);
    EXPECT_EQ(w.token_embedding().type, type);
    expect_matches_reference(w, some_tokens(29, config.vocab_size));
  }
}

// qwen2's shape: q/k/v biases, rotate-half RoPE, a head_dim the file states (q_dim != dim), and
// scaled RoPE frequencies.
TEST(Decoder, MatchesThePlainReferenceForQkvBiasRotateHalfAndExplicitHeadDim) {
  ModelConfig config{.dim = 48, .hidden_dim = 80, .n_layers = 2, .n_heads = 4, .n_kv_heads = 2,
                     .vocab_size = 200, .seq_len = 64, .shared_classifier = true};
  config.architecture = "qwen2";
  config.head_size = 16;
  config.qkv_bias = true;
  config.rope_style = RopeStyle::kHalf;
  config.rope_theta = 1e6f;
  config.rope_freq_divisors = {1.0f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 8.0f, 8.0f};
  ASSERT_TRUE(config.validate().ok());
  const ModelWeights w = random_weights(config, 3);
  ASSERT_NE(w.layer(0).bq, nullptr);
  expect_matches_reference(w, some_tokens(23, config.vocab_size));
}

// The two RoPE conventions are one rotation in two layouts: permuting each head's q and k rows
// from (2i, 2i+1) pairs to (i, i + half) pairs — as a Hugging Face checkpoint stores them — and
// running rotate-half gives the interleaved model's logits.
TEST(Decoder, RotateHalfOfPermutedQkRowsEqualsInterleavedRope) {
  const ModelWeights& original = default_model().weights;
  const ModelConfig& c = original.config();
  NamedTensors tensors = original.tensors();
  std::vector<std::shared_ptr<const void>> storage;
  const int hd = c.head_dim();
  for (int l = 0; l < c.n_layers; ++l) {
    for (const char* what : {"attn_q.weight", "attn_k.weight"}) {
      const WeightTensor t = tensors.at(fmt::format("blk.{}.{}", l, what));
      auto permuted = std::make_shared<std::vector<float>>(size_t(t.rows * t.cols));
      for (int64_t r = 0; r < t.rows; ++r) {
        const int64_t head = r / hd, i = r % hd;
        // Interleaved row 2j (pair j, first) goes to j; row 2j+1 to j + hd/2.
        const int64_t to = head * hd + (i % 2 == 0 ? i / 2 : i / 2 + hd / 2);
        std::copy_n(t.f32() + r * t.cols, t.cols, permuted->data() + to * t.cols);
      }
      tensors[fmt::format("blk.{}.{}", l, what)] =
          WeightTensor{.type = WeightType::kF32, .data = reinterpret_cast<const std::byte*>(permuted->data()),
                       .rows = t.rows, .cols = t.cols};
      storage.push_back(permuted);
    }
  }
  ModelConfig half = c;
  half.rope_style = RopeStyle::kHalf;
  auto w = ModelWeights::from_tensors(half, tensors, storage, "permuted");
  ASSERT_TRUE(w.ok()) << w.error().message();
  const auto tokens = default_model().tokenizer.encode("Once upon a time, there was a little dog named Max.");
  const std::vector<float> a = backend_logits(original, tokens, false), b = backend_logits(*w, tokens, false);
  ASSERT_EQ(a.size(), b.size());
  double err = 0, scale = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    err = std::max(err, double(std::abs(a[i] - b[i])));
    scale = std::max(scale, double(std::abs(a[i])));
  }
  EXPECT_LE(err, kMaxRelErrF32VsF64 * scale);  // the same rotation, summed in another order
  // And not trivially: the unpermuted rows under rotate-half give other logits.
  auto wrong = ModelWeights::from_tensors(half, original.tensors(), {}, "unpermuted");
  ASSERT_TRUE(wrong.ok());
  const std::vector<float> x = backend_logits(*wrong, tokens, false);
  double diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff = std::max(diff, double(std::abs(a[i] - x[i])));
  EXPECT_GT(diff, 100 * kMaxRelErrF32VsF64 * scale);
}

TEST(Decoder, TwoThreadsGiveTheBitsOfOne) {
  const ModelWeights w = convert_weights(default_model().weights, WeightType::kQ8_0);
  const auto tokens = default_model().tokenizer.encode("The cat sat on the mat.");
  EXPECT_EQ(test::one_pass_logits(w, tokens, 1), test::one_pass_logits(w, tokens, 2));
}

TEST(Decoder, OnePassOverAllRowsEqualsOneRowPerPassBitForBit) {
  const auto tokens = default_model().tokenizer.encode("The cat sat on the mat and looked at the sun.");
  EXPECT_EQ(backend_logits(default_model().weights, tokens, false),
            backend_logits(default_model().weights, tokens, true));
}

std::vector<std::vector<int32_t>> four_prompts() {
  const Tokenizer& t = default_model().tokenizer;
  return {t.encode("Once upon a time"), t.encode("The dog"), {kBosToken},
          t.encode("Tom and Sue went to the big park to play with a red ball")};
}

std::vector<std::vector<int32_t>> run_batch(const std::vector<std::vector<int32_t>>& prompts,
                                            const GenerateOptions& options) {
  CpuBackend backend(default_model().weights);
  Decoder decoder(backend);
  std::vector<KvBudgets> budgets(prompts.size(),
                                 full_cache_budgets(default_model().weights.config(), options.steps));
  return generate(decoder, prompts, budgets, options).tokens;
}

TEST(Decoder, GreedyBatchOfFourEqualsFourSingleRuns) {
  const GenerateOptions options{.steps = 120};
  const auto prompts = four_prompts();
  const auto batch = run_batch(prompts, options);
  ASSERT_EQ(batch.size(), 4u);
  for (size_t s = 0; s < prompts.size(); ++s) {
    EXPECT_EQ(batch[s], run_batch({prompts[s]}, options)[0]) << "sequence " << s;
  }
  EXPECT_NE(batch[0], batch[1]);
}

TEST(Decoder, SampledBatchMemberEqualsSingleRunWithSeedPlusIndex) {
  GenerateOptions options{.steps = 100, .sampler = {.temperature = 1.0f, .top_p = 0.9f, .seed = 42}};
  const auto prompts = four_prompts();
  const auto batch = run_batch(prompts, options);
  for (size_t s = 0; s < prompts.size(); ++s) {
    GenerateOptions single = options;
    single.sampler.seed = options.sampler.seed + s;
    EXPECT_EQ(batch[s], run_batch({prompts[s]}, single)[0]) << "sequence " << s;
  }
  // Same seed, same text; another seed, other text.
  EXPECT_EQ(batch, run_batch(prompts, options));
  options.sampler.seed = 43;
  EXPECT_NE(batch[2], run_batch(prompts, options)[2]);
}

}  // namespace
}  // namespace kvp
