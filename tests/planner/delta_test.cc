// DELTA: the role list's checks, the page choice against hand-computed sets, and the selection and
// sparse attention of layer_step against a plain reference (softmax in double over the chosen
// tokens, pages chosen from the per-query weights).
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <random>
#include <set>

#include "planner/policy/delta.h"
#include "planner/policy/layer_step.h"
#include "planner/policy/policy.h"

namespace kvp {
namespace {

TEST(Delta, RoleListsAreCheckedAgainstTheLayersNextToAcceptedOnes) {
  for (const char* ok : {"fsppp", "sssss", "fffff", "fspsp", "ffspp"}) {
    EXPECT_FALSE(delta_param_error({.layers = ok}, 5)) << ok;
  }
  EXPECT_FALSE(delta_param_error({}, 5));  // off
  auto message = [](const DeltaParams& d) {
    const auto e = delta_param_error(d, 5);
    return e ? e->field + ": " + e->message : std::string("accepted");
  };
  EXPECT_EQ(message({.layers = "fspp"}), "layers: expected one role per layer (5 letters of f, s, p), found 4 in 'fspp'");
  EXPECT_EQ(message({.layers = "fsxpp"}),
            "layers: expected f (full), s (select) or p (sparse) per layer, found 'x' at layer 2 of 'fsxpp'");
  EXPECT_EQ(message({.layers = "fpspp"}), "layers: layer 1 is sparse (p) before any selection layer (s) in 'fpspp'");
  EXPECT_EQ(message({.layers = "fsppp", .pages = 0}), "pages: expected at least 1 page, found 0");
  EXPECT_EQ(message({.layers = "fsppp", .page_size = 0}), "page_size: expected 1..4096 positions, found 0");
  EXPECT_EQ(message({.layers = "fsppp", .last = -1}), "last: expected 0 or more pages, found -1");
  EXPECT_EQ(message({.layers = "fsppp", .pages = 1, .page_size = 1, .last = 0}), "accepted");
}

std::vector<int> chosen_pages(const DeltaRow& row) {
  std::vector<int> out;
  for (size_t p = 0; p < row.chosen.size(); ++p) {
    if (row.chosen[p]) out.push_back(static_cast<int>(p));
  }
  return out;
}

// Pages of 4 over positions 0..22 (the newest, 23, on page 5): page scores 1.0, 0.9, 0.2, 0.9,
// 0.5, 0.1. Page 0 (the sinks') and the last page are forced; K = 2 of pages 1..4 by score takes 1
// and 3, tied at 0.9 (both in); K = 1 takes the newer of the tie, 3.
TEST(Delta, ChoosesTheTopPagesThePagesOfTheSinksAndTheLastPages) {
  DeltaRow row;
  row.pos_weight.assign(23, 0.0f);
  const float page_sums[6] = {1.0f, 0.9f, 0.2f, 0.9f, 0.5f, 0.1f};
  for (int p = 0; p < 6; ++p) {
    for (int i = 0; i < 4 && p * 4 + i < 23; ++i) row.pos_weight[p * 4 + i] = i == 0 ? page_sums[p] : 0.0f;
  }
  const DeltaParams d{.layers = "fsp", .pages = 2, .page_size = 4, .last = 1};
  choose_pages(d, 4, 23, row);
  EXPECT_EQ(chosen_pages(row), (std::vector<int>{0, 1, 3, 5}));
  choose_pages({.layers = "fsp", .pages = 1, .page_size = 4, .last = 1}, 4, 23, row);
  EXPECT_EQ(chosen_pages(row), (std::vector<int>{0, 3, 5}));
  // Two last pages and five sinks (pages 0 and 1 forced): K = 1 of pages 2, 3 takes 3.
  choose_pages({.layers = "fsp", .pages = 1, .page_size = 4, .last = 2}, 5, 23, row);
  EXPECT_EQ(chosen_pages(row), (std::vector<int>{0, 1, 3, 4, 5}));
  // More pages asked for than there are: all of them.
  choose_pages({.layers = "fsp", .pages = 64, .page_size = 4, .last = 8}, 4, 23, row);
  EXPECT_EQ(chosen_pages(row), (std::vector<int>{0, 1, 2, 3, 4, 5}));
}

TEST(Delta, SparseKeysAreTheChosenPagesShareOfTheSlots) {
  const DeltaParams d{.layers = "fsp", .pages = 8, .page_size = 16, .last = 2};
  // 11 pages (K 8 + L 2 + page 0) of a full 1,024-position cache: 176 keys and the new one.
  EXPECT_EQ(delta_sparse_keys(d, 4, 1024, 1024), 177);
  // A cache of half the positions: half of that.
  EXPECT_EQ(delta_sparse_keys(d, 4, 512, 1024), 89);
  // A context shorter than the pages: every slot.
  EXPECT_EQ(delta_sparse_keys(d, 4, 100, 100), 101);
}

// A layer of `kv_heads` heads over `n` slots holding positions in a shuffled slot order.
struct Layer {
  int kv_heads, group, hd, n;
  std::vector<std::vector<float>> k, v;  // blocked
  std::vector<std::vector<int32_t>> pos;
  std::vector<std::vector<float>> score;
  std::vector<int32_t> n_used;
  std::vector<float> q, k_new, v_new;
  Layer(int kv_heads_, int group_, int hd_, int n_, uint32_t seed, bool shuffle = true)
      : kv_heads(kv_heads_), group(group_), hd(hd_), n(n_), k(kv_heads_), v(kv_heads_), pos(kv_heads_),
        score(kv_heads_), n_used(kv_heads_, n_) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (int h = 0; h < kv_heads; ++h) {
      k[h].resize(size_t(n + 1) * hd), v[h].resize(size_t(n + 1) * hd);
      for (float& x : k[h]) x = normal(rng) * 1.5f;
      for (float& x : v[h]) x = normal(rng);
      pos[h].resize(n + 1);
      for (int j = 0; j < n; ++j) pos[h][j] = j;
      if (shuffle) std::shuffle(pos[h].begin(), pos[h].begin() + n, rng);
      score[h].assign(n + 1, 0.0f);
    }
    q.resize(size_t(kv_heads) * group * hd), k_new.resize(size_t(kv_heads) * hd), v_new.resize(size_t(kv_heads) * hd);
    for (float& x : q) x = normal(rng);
    for (float& x : k_new) x = normal(rng);
    for (float& x : v_new) x = normal(rng);
  }
  std::vector<HeadSlots> heads() {
    std::vector<HeadSlots> out;
    for (int h = 0; h < kv_heads; ++h) {
      out.push_back(HeadSlots{.k = k[h].data(), .v = v[h].data(), .pos = pos[h].data(), .score = score[h].data(),
                              .aux = nullptr, .budget = n + 1, .n_used = &n_used[h], .head_dim = hd});
    }
    return out;
  }
  float key(int h, int j, int d) const { return k[h][slot_element(n + 1, hd, d, j)]; }
  float value(int h, int j, int d) const { return v[h][slot_element(n + 1, hd, d, j)]; }
  // Query head g of KV head h's softmax weights over its slots (the new token last), in double.
  std::vector<double> weights(int h, int g, const std::function<bool(int32_t)>& attended) const {
    std::vector<double> logit(n + 1, -INFINITY);
    const float* qg = q.data() + (size_t(h) * group + g) * hd;
    double top = -INFINITY;
    for (int j = 0; j <= n; ++j) {
      if (j < n && !attended(pos[h][j])) continue;
      double dot = 0;
      for (int d = 0; d < hd; ++d) dot += double(qg[d]) * (j < n ? key(h, j, d) : k_new[size_t(h) * hd + d]);
      logit[j] = dot / std::sqrt(double(hd));
      top = std::max(top, logit[j]);
    }
    double z = 0;
    for (double& l : logit) z += l = std::exp(l - top);
    for (double& l : logit) l /= z;
    return logit;
  }
};

// slot_attention's head_max is, slot by slot, the largest of the group's per-query weights: the
// same bits as the weights of each query alone (the unrolled head_dim 8 path and the general one).
TEST(Delta, HeadMaxIsTheLargestPerQueryWeight) {
  for (int hd : {8, 24}) {
    Layer layer(1, 3, hd, 37, 7);
    const int n = layer.n;
    std::vector<float> scratch(n + 32), out(size_t(3) * hd), weights(n + 32), head_max(n + 32), one(n + 32);
    alignas(64) static float aligned[256];
    const SlotKv kv{.k = layer.k[0].data(), .v = layer.v[0].data(), .capacity = n + 1, .n_used = n, .head_dim = hd};
    slot_attention(layer.q.data(), 3, kv, layer.k_new.data(), layer.v_new.data(),
                   {.out = out.data(), .weights = weights.data(), .softmax = nullptr, .scratch = aligned,
                    .head_max = head_max.data()});
    std::vector<float> expect(n + 1, 0.0f);
    for (int g = 0; g < 3; ++g) {
      slot_attention(layer.q.data() + size_t(g) * hd, 1, kv, layer.k_new.data(), layer.v_new.data(),
                     {.out = out.data(), .weights = one.data(), .softmax = nullptr, .scratch = aligned});
      for (int j = 0; j <= n; ++j) expect[j] = std::max(expect[j], one[j]);
    }
    for (int j = 0; j <= n; ++j) EXPECT_EQ(head_max[j], expect[j]) << "hd " << hd << " slot " << j;
  }
}

// A selection layer and a sparse layer through layer_step (h2o, which scores from the weights),
// against the reference: the pages from the selection layer's per-query weights (largest over all
// query heads of the layer, summed per page), then the sparse layer's attention in double over the
// tokens on those pages and the new token; its unattended tokens score nothing.
// Slots in a shuffled order with pages of 8 (gathered slot by slot), and in position order with
// pages of 16 (whole blocks copied).
void expect_sparse_layer_attends_the_chosen_pages(int page_size, bool shuffle) {
  const int kv_heads = 2, group = 2, hd = 8, n = 90;
  const DeltaParams d{.layers = "sp", .pages = 2, .page_size = page_size, .last = 1};
  auto policy = make_policy("h2o", {.sinks = 2, .recent = 4, .delta = d}).value();
  Layer select(kv_heads, group, hd, n, 11, shuffle), sparse(kv_heads, group, hd, n, 12, shuffle);
  // The selection, by the reference.
  std::vector<double> pos_max(n, 0.0);
  for (int h = 0; h < kv_heads; ++h) {
    for (int g = 0; g < group; ++g) {
      const std::vector<double> w = select.weights(h, g, [](int32_t) { return true; });
      for (int j = 0; j < n; ++j) pos_max[select.pos[h][j]] = std::max(pos_max[select.pos[h][j]], w[j]);
    }
  }
  const int n_pages = n / d.page_size + 1;  // the new token (position 90) on the last
  std::vector<double> page(n_pages, 0.0);
  for (int p = 0; p < n; ++p) page[p / d.page_size] += pos_max[p];
  std::vector<int> candidates;
  for (int p = 1; p < n_pages - 1; ++p) candidates.push_back(p);
  std::sort(candidates.begin(), candidates.end(), [&](int a, int b) { return page[a] > page[b]; });
  const std::set<int> expect_pages = {0, candidates[0], candidates[1], n_pages - 1};

  DeltaRow row;
  StepScratch sc(n + 1);
  std::vector<float> attn(size_t(kv_heads) * group * hd), sparse_attn(attn.size());
  const std::vector<HeadSlots> select_heads = select.heads(), sparse_heads = sparse.heads();
  layer_step(*policy, select_heads,
             TokenRow{.q = select.q.data(), .k = select.k_new.data(), .v = select.v_new.data(), .pos = n, .layer_idx = 0,
                      .prompt_len = 0, .delta = &row},
             group, attn.data(), nullptr, sc, {});
  std::set<int> chosen;
  for (size_t p = 0; p < row.chosen.size(); ++p) {
    if (row.chosen[p]) chosen.insert(static_cast<int>(p));
  }
  EXPECT_EQ(chosen, expect_pages);
  ASSERT_EQ(row.page_score.size(), size_t(n_pages));
  for (int p = 0; p < n_pages; ++p) EXPECT_NEAR(row.page_score[p], page[p], 1e-6) << "page " << p;
  EXPECT_EQ(sc.attended, int64_t{kv_heads} * (n + 1));

  const std::vector<std::vector<int32_t>> sparse_pos = sparse.pos;  // before the new token's insertion
  layer_step(*policy, sparse_heads,
             TokenRow{.q = sparse.q.data(), .k = sparse.k_new.data(), .v = sparse.v_new.data(), .pos = n, .layer_idx = 1,
                      .prompt_len = 0, .delta = &row},
             group, sparse_attn.data(), nullptr, sc, {});
  auto on_page = [&](int32_t p) { return expect_pages.count(p / d.page_size) > 0; };
  int64_t attended = 0;
  for (int h = 0; h < kv_heads; ++h) {
    std::vector<double> summed(n + 1, 0.0);
    for (int g = 0; g < group; ++g) {
      const std::vector<double> w = sparse.weights(h, g, on_page);
      for (int dd = 0; dd < hd; ++dd) {
        double o = w[n] * sparse.v_new[size_t(h) * hd + dd];
        for (int j = 0; j < n; ++j) o += w[j] * sparse.value(h, j, dd);
        EXPECT_NEAR(sparse_attn[(size_t(h) * group + g) * hd + dd], o, 1e-5) << "head " << h << " query " << g;
      }
      for (int j = 0; j <= n; ++j) summed[j] += w[j];
    }
    for (int j = 0; j < n; ++j) {
      // h2o's score is the summed weight; slots off the chosen pages scored nothing.
      if (!on_page(sparse_pos[h][j])) {
        EXPECT_EQ(sparse.score[h][j], 0.0f);
      } else {
        EXPECT_NEAR(sparse.score[h][j], summed[j], 1e-6);
        ++attended;
      }
    }
    ++attended;  // the new token
  }
  EXPECT_EQ(sc.attended - int64_t{kv_heads} * (n + 1), attended);
  EXPECT_LT(attended, int64_t{kv_heads} * (n + 1));
}

TEST(Delta, SparseLayerAttendsThePagesTheSelectionLayerChose) {
  expect_sparse_layer_attends_the_chosen_pages(8, true);
  expect_sparse_layer_attends_the_chosen_pages(16, false);
}

// With every page chosen the sparse layer is a full one, bit for bit.
TEST(Delta, EveryPageChosenGivesTheFullLayersBits) {
  const int kv_heads = 2, group = 2, hd = 8, n = 50;
  auto delta = make_policy("h2o", {.sinks = 2, .recent = 4, .delta = {.layers = "sp", .pages = 64}}).value();
  auto plain = make_policy("h2o", {.sinks = 2, .recent = 4}).value();
  Layer a(kv_heads, group, hd, n, 3), b(kv_heads, group, hd, n, 3), s(kv_heads, group, hd, n, 4);
  DeltaRow row;
  StepScratch sc(n + 1);
  std::vector<float> out_a(size_t(kv_heads) * group * hd), out_b(out_a.size()), out_s(out_a.size());
  const std::vector<HeadSlots> sh = s.heads(), ah = a.heads(), bh = b.heads();
  layer_step(*delta, sh, TokenRow{.q = s.q.data(), .k = s.k_new.data(), .v = s.v_new.data(), .pos = n, .layer_idx = 0,
                                  .prompt_len = 0, .delta = &row}, group, out_s.data(), nullptr, sc, {});
  layer_step(*delta, ah, TokenRow{.q = a.q.data(), .k = a.k_new.data(), .v = a.v_new.data(), .pos = n, .layer_idx = 1,
                                  .prompt_len = 0, .delta = &row}, group, out_a.data(), nullptr, sc, {});
  layer_step(*plain, bh, TokenRow{.q = b.q.data(), .k = b.k_new.data(), .v = b.v_new.data(), .pos = n, .layer_idx = 1,
                                  .prompt_len = 0}, group, out_b.data(), nullptr, sc, {});
  EXPECT_EQ(out_a, out_b);
  EXPECT_EQ(a.score, b.score);
}

}  // namespace
}  // namespace kvp
