// Shared by the emulated-kernel tests and the GPU kernel tests: random inputs over awkward shapes
// and the references' answers. `Target` runs the kernels on host vectors (emulated: directly; GPU:
// copying through device memory).
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "kernels/launch.h"
#include "kernels/score_rule.h"
#include "kernels/reference.h"
#include "planner/policy/policy.h"

namespace kvp::test {

inline std::vector<float> randoms(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> x(n);
  for (float& e : x) e = d(rng);
  return x;
}

// Threads per block tried: one warp, several warps, a block that covers the short rows.
inline const int kThreadCounts[] = {32, 96, 256};

// q8_0 weights with random scales (binary16) and int8 values, against the double reference: the
// kernel's f32 sums are within f32 rounding of Σ |d q x|.
template <typename Target>
void check_q8_0_gemv(Target& t) {
  std::mt19937 rng(11);
  for (int in : {32, 96, 2048}) {
    for (int out : {1, 5, 33}) {
      for (int threads : kThreadCounts) {
        const int rows = 3, blocks = in / 32;
        std::vector<uint8_t> w(static_cast<size_t>(out) * blocks * 34);
        std::vector<double> magnitude(static_cast<size_t>(rows) * out, 0.0);
        for (size_t b = 0; b < w.size() / 34; ++b) {
          const uint16_t d = static_cast<uint16_t>(0x2000 + rng() % 0x1800);  // scales around 2^-7..2^-1
          w[b * 34] = static_cast<uint8_t>(d & 0xff);
          w[b * 34 + 1] = static_cast<uint8_t>(d >> 8);
          for (int i = 0; i < 32; ++i) w[b * 34 + 2 + i] = static_cast<uint8_t>(rng() % 256);
        }
        const auto x = randoms(static_cast<size_t>(rows) * in, in + out);
        std::vector<double> want;
        ref::q8_0_gemv(w, out, in, x, rows, want);
        for (int r = 0; r < rows; ++r) {
          for (int o = 0; o < out; ++o) {
            for (int b = 0; b < blocks; ++b) {
              const uint8_t* blk = w.data() + (static_cast<size_t>(o) * blocks + b) * 34;
              const double d = ref::half_bits_to_float(blk[0] | blk[1] << 8);
              for (int i = 0; i < 32; ++i) magnitude[r * out + o] += std::fabs(d * static_cast<int8_t>(blk[2 + i]) * x[r * in + b * 32 + i]);
            }
          }
        }
        std::vector<float> got(static_cast<size_t>(rows) * out, 0.25f);
        t.q8_0_gemv(w, out, in, x, got, rows, /*accumulate=*/true, threads);
        for (size_t i = 0; i < got.size(); ++i) {
          ASSERT_NEAR(got[i], want[i] + 0.25, 1e-6 * magnitude[i] + 1e-7) << "in " << in << " out " << out << " " << i;
        }
      }
    }
  }
}

template <typename Target>
void check_rmsnorm(Target& t) {
  for (int n : {1, 31, 64, 257}) {
    for (int threads : kThreadCounts) {
      const int rows = 3;
      const auto x = randoms(size_t(rows) * n, n), w = randoms(n, n + 1);
      std::vector<float> want, got(x.size());
      ref::rmsnorm(x, w, n, 1e-5f, want);
      t.rmsnorm(x, w, got, rows, n, 1e-5f, threads);
      for (size_t i = 0; i < want.size(); ++i) ASSERT_NEAR(got[i], want[i], 1e-5f * (1 + std::fabs(want[i]))) << n << " " << i;
    }
  }
}

template <typename Target>
void check_rope_swiglu_embedding_argmax(Target& t) {
  const int n_heads = 3, head_dim = 10, half = head_dim / 2, seq_len = 20;
  std::vector<float> cos_t(seq_len * half), sin_t(seq_len * half);
  for (int p = 0; p < seq_len; ++p) {
    for (int i = 0; i < half; ++i) {
      const float a = p / std::pow(10000.0f, 2.0f * i / head_dim);
      cos_t[p * half + i] = std::cos(a), sin_t[p * half + i] = std::sin(a);
    }
  }
  const std::vector<int32_t> positions = {0, 7, 19};
  for (int threads : kThreadCounts) {
    auto x = randoms(positions.size() * n_heads * head_dim, 3), want = x;
    ref::rope(want, positions, cos_t, sin_t, n_heads, head_dim);
    t.rope(x, positions, cos_t, sin_t, n_heads, head_dim, threads);
    for (size_t i = 0; i < x.size(); ++i) ASSERT_FLOAT_EQ(x[i], want[i]) << "rope " << i;

    auto gate = randoms(1000, 4), up = randoms(1000, 5), want_g = gate;
    ref::swiglu(want_g, up);
    t.swiglu(gate, up, threads);
    for (size_t i = 0; i < gate.size(); ++i) ASSERT_FLOAT_EQ(gate[i], want_g[i]) << "swiglu " << i;

    const int dim = 13;
    const auto table = randoms(50 * dim, 6);
    const std::vector<int32_t> tokens = {49, 0, 7, 7};
    std::vector<float> want_e, got_e(tokens.size() * dim);
    ref::embedding(tokens, table, dim, want_e);
    t.embedding(tokens, table, got_e, dim, threads);
    EXPECT_EQ(got_e, want_e);

    for (int n : {1, 33, 300}) {
      auto logits = randoms(size_t(4) * n, n);
      logits[n - 1] = 50;              // row 0: the last element
      if (n > 2) logits[n + 1] = logits[n + 2] = 60;  // row 1: a tie, the lower index wins
      EXPECT_EQ(t.argmax(logits, n, threads), ref::argmax(logits, n)) << "argmax n " << n;
    }
  }
}

// Heads of different capacities and fill (a ragged, plan-shaped cache); insert then attend.
// The sampling kernel against the rule in double precision with a sort: the same token for every
// draw whose decisions are clear of float rounding (and most are). Logits on a 0.05 grid, so
// distinct tokens' probabilities are never within rounding of each other, with exact ties
// (duplicated logits, a flat row) that the lower id must win; draws at 0 and just below 1.
template <typename Target>
void check_sample(Target& t) {
  struct Setting {
    float temperature, top_p;
  };
  int decided = 0, total = 0;
  for (int n : {1, 7, 33, 512, 1000}) {
    for (int threads : kThreadCounts) {
      for (Setting s : {Setting{0.7f, 1.0f}, Setting{1.0f, 0.9f}, Setting{1.5f, 0.5f}, Setting{0.5f, 0.05f},
                        Setting{1.0f, 1.0f}, Setting{0.0f, 0.9f}}) {
        const int rows = 8;
        std::mt19937 rng(n * 131 + threads);
        std::vector<float> logits(size_t(rows) * n), uniform(rows);
        for (int r = 0; r < rows; ++r) {
          std::vector<int> grid(n);
          for (int i = 0; i < n; ++i) grid[i] = i - n / 2;
          std::shuffle(grid.begin(), grid.end(), rng);
          for (int i = 0; i < n; ++i) logits[size_t(r) * n + i] = r == 7 ? 1.0f : 0.05f * grid[i];
          if (n > 3 && r % 2 == 1) logits[size_t(r) * n + 2] = logits[size_t(r) * n + 1];  // an exact tie
          uniform[r] = r == 0 ? 0.0f : r == 1 ? 1.0f - 0x1.0p-24f : std::uniform_real_distribution<float>(0, 1)(rng);
        }
        const auto got = t.sample(logits, n, s.temperature, s.top_p, uniform, threads);
        if (s.temperature == 0.0f) {
          EXPECT_EQ(got, ref::argmax(logits, n)) << "temperature 0 is argmax, n " << n;
          continue;
        }
        for (int r = 0; r < rows; ++r) {
          const ref::SampleRef want = ref::sample(logits.data() + size_t(r) * n, n, s.temperature, s.top_p, uniform[r]);
          ++total;
          if (want.margin < 1e-4) continue;
          ++decided;
          EXPECT_EQ(got[r], want.token) << "n " << n << " threads " << threads << " T " << s.temperature << " top_p "
                                        << s.top_p << " row " << r << " u " << uniform[r];
        }
      }
    }
  }
  EXPECT_GE(decided, total * 9 / 10) << "too few draws clear of rounding to test";
}

template <typename Target>
void check_attention(Target& t) {
  struct Shape {
    int head_dim, group;
  };
  // Head sizes below, at and above the block's threads (one output element per thread, several, or
  // a share of the slots each), and groups from 1 to the largest the kernel takes.
  for (const Shape shape : {Shape{8, 2}, Shape{64, 1}, Shape{128, 4}, Shape{16, 8}})
  for (int threads : kThreadCounts) {
    const int head_dim = shape.head_dim, group = shape.group;
    const std::vector<int32_t> capacity = {4, 37, 130}, n_used = {0, 36, 129};
    std::vector<ref::HeadSlotsRef> heads;
    std::vector<int64_t> offset;
    int64_t total = 0;
    for (size_t h = 0; h < capacity.size(); ++h) {
      ref::HeadSlotsRef r;
      r.capacity = capacity[h], r.n_used = n_used[h];
      r.k = randoms(size_t(head_dim) * r.capacity, 10 + h);
      r.v = randoms(size_t(head_dim) * r.capacity, 20 + h);
      r.score = randoms(r.capacity, 30 + h, 0.1f);
      r.value_l1.assign(r.capacity, 0.0f);
      heads.push_back(r);
      offset.push_back(total);
      total += r.capacity;
    }
    const int H = static_cast<int>(heads.size());
    const auto q = randoms(size_t(H) * group * head_dim, 40), k_new = randoms(size_t(H) * head_dim, 41),
               v_new = randoms(size_t(H) * head_dim, 42);
    // The flat cache the kernels see.
    std::vector<float> k(total * head_dim), v(total * head_dim), score(total), l1(total);
    for (int h = 0; h < H; ++h) {
      std::copy(heads[h].k.begin(), heads[h].k.end(), k.begin() + offset[h] * head_dim);
      std::copy(heads[h].v.begin(), heads[h].v.end(), v.begin() + offset[h] * head_dim);
      std::copy(heads[h].score.begin(), heads[h].score.end(), score.begin() + offset[h]);
    }
    std::vector<float> out(size_t(H) * group * head_dim), self(H);
    t.attention(q, k, v, score, l1, offset, capacity, n_used, k_new, v_new, out, self, group, head_dim, threads);
    for (int h = 0; h < H; ++h) {
      std::vector<float> want_out;
      const std::vector<float> qh(q.begin() + size_t(h) * group * head_dim, q.begin() + size_t(h + 1) * group * head_dim);
      const std::vector<float> kn(k_new.begin() + h * head_dim, k_new.begin() + (h + 1) * head_dim);
      const std::vector<float> vn(v_new.begin() + h * head_dim, v_new.begin() + (h + 1) * head_dim);
      const float want_self = ref::decode_attention(qh, heads[h], kn, vn, group, head_dim, want_out);
      for (int i = 0; i < group * head_dim; ++i) {
        ASSERT_NEAR(out[size_t(h) * group * head_dim + i], want_out[i], 2e-5f)
            << "head " << h << " element " << i << " head_dim " << head_dim << " group " << group << " threads " << threads;
      }
      for (int j = 0; j < heads[h].n_used; ++j) ASSERT_NEAR(score[offset[h] + j], heads[h].score[j], 2e-6f) << h << " " << j;
      ASSERT_NEAR(self[h], want_self, 2e-6f) << "head " << h;
      // Then the new token goes into its slot (the last free one), with its value norm.
      const int slot = std::min(heads[h].n_used, heads[h].capacity - 1);
      ref::insert(heads[h], kn, vn, slot, head_dim);
    }
    std::vector<int32_t> slots;
    for (int h = 0; h < H; ++h) slots.push_back(std::min(n_used[h], capacity[h] - 1));
    t.insert(k, v, score, l1, offset, capacity, n_used, k_new, v_new, slots, head_dim, threads);
    for (int h = 0; h < H; ++h) {
      for (int d = 0; d < head_dim; ++d) {
        ASSERT_EQ(k[offset[h] * head_dim + size_t(d) * capacity[h] + slots[h]], heads[h].k[size_t(d) * capacity[h] + slots[h]]);
        ASSERT_EQ(v[offset[h] * head_dim + size_t(d) * capacity[h] + slots[h]], heads[h].v[size_t(d) * capacity[h] + slots[h]]);
      }
      ASSERT_NEAR(l1[offset[h] + slots[h]], heads[h].value_l1[slots[h]], 1e-6f * (1 + heads[h].value_l1[slots[h]]));
    }
  }
}

// Victims of many heads (ragged sizes, shuffled positions, frequent ties, all-+inf heads) against
// the CPU executor's own choice (choose_victim under h2o, whose eviction key is the score).
template <typename Target>
void check_victim(Target& t) {
  const int sinks = 2, recent = 3;
  auto h2o = std::move(make_policy("h2o", PolicyParams{.sinks = sinks, .recent = recent})).value();
  std::mt19937 rng(9);
  std::vector<float> keys;
  std::vector<int32_t> positions, n_used, newest;
  std::vector<int64_t> offset;
  std::vector<int> want;
  for (int h = 0; h < 24; ++h) {
    const int n = 1 + h * 7 % 90;
    offset.push_back(static_cast<int64_t>(keys.size()));
    std::vector<int32_t> pos(n);
    for (int j = 0; j < n; ++j) pos[j] = 2 * j + h % 2;
    std::shuffle(pos.begin(), pos.end(), rng);
    std::vector<float> k(n);
    for (float& e : k) e = h % 5 == 0 ? INFINITY : static_cast<float>(rng() % 4);
    const int32_t top = 2 * n + 1;
    std::vector<float> score = k;
    SlotArrays s{.n_used = n, .budget = n, .pos = pos.data(), .score = score.data(), .aux = nullptr};
    want.push_back(choose_victim(*h2o, s, top));
    keys.insert(keys.end(), k.begin(), k.end());
    positions.insert(positions.end(), pos.begin(), pos.end());
    n_used.push_back(n);
    newest.push_back(top);
  }
  for (int threads : kThreadCounts) {
    EXPECT_EQ(t.victim(keys, positions, offset, n_used, newest, sinks, recent, threads), want) << threads << " threads";
  }
}

// Prefill: each prompt key's accumulated attention against a double-precision reference, then the
// kept positions against the CPU executor's select_prefill_kept (h2o: the key is that score), with
// ties from rounded keys.
template <typename Target>
void check_prefill(Target& t) {
  const int P = 37, kvh = 2, group = 2, hd = 8;
  const auto q = randoms(size_t(P) * kvh * group * hd, 50), k = randoms(size_t(P) * kvh * hd, 51);
  std::vector<double> want(size_t(kvh) * P, 0.0);
  for (int h = 0; h < kvh; ++h) {
    for (int i = 0; i < P; ++i) {
      for (int g = 0; g < group; ++g) {
        std::vector<double> s(i + 1);
        for (int j = 0; j <= i; ++j) {
          double dot = 0;
          for (int d = 0; d < hd; ++d) dot += double(q[((size_t(i) * kvh + h) * group + g) * hd + d]) * k[(size_t(j) * kvh + h) * hd + d];
          s[j] = dot / std::sqrt(double(hd));
        }
        const double m = *std::max_element(s.begin(), s.end());
        double z = 0;
        for (double& e : s) z += (e = std::exp(e - m));
        for (int j = 0; j <= i; ++j) want[size_t(h) * P + j] += s[j] / z;
      }
    }
  }
  for (int threads : {32, 96}) {  // one block per (position, head): the emulation's costliest launch
    const std::vector<float> got = t.prefill_column_sums(q, k, P, kvh, group, hd, threads);
    for (size_t i = 0; i < want.size(); ++i) ASSERT_NEAR(got[i], want[i], 1e-5 * (1 + want[i])) << i;
  }
  auto h2o = std::move(make_policy("h2o", PolicyParams{.sinks = 2, .recent = 3})).value();
  std::vector<float> keys = t.prefill_column_sums(q, k, P, kvh, group, hd, 32);
  for (size_t i = 0; i < keys.size(); i += 3) keys[i] = std::round(keys[i] * 2) / 2;  // ties
  for (int budget : {5, 12, 30, 37, 50}) {
    const std::vector<int32_t> got = t.prefill_keep(keys, kvh, P, 2, 3, budget, 64);
    for (int h = 0; h < kvh; ++h) {
      std::vector<int32_t> pos(P);
      for (int j = 0; j < P; ++j) pos[j] = j;
      std::vector<float> score(keys.begin() + size_t(h) * P, keys.begin() + size_t(h + 1) * P);
      const SlotArrays s{.n_used = P, .budget = P, .pos = pos.data(), .score = score.data(), .aux = nullptr};
      std::vector<int32_t> want_kept;
      for (int j : select_prefill_kept(*h2o, std::span(&s, 1), P, budget)) want_kept.push_back(j);
      want_kept.resize(budget, -1);
      const std::vector<int32_t> head(got.begin() + size_t(h) * budget, got.begin() + size_t(h + 1) * budget);
      EXPECT_EQ(head, want_kept) << "budget " << budget << " head " << h;
    }
  }
}

}  // namespace kvp::test
