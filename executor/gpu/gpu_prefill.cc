// The GPU backend's prefill: a prompt in one step, in chunks held whole, or cut per KV head after
// every chunk (--prefill-evict), and the cut of each into the cache (executor/gpu/gpu_backend.h).
#include <algorithm>

#include "executor/gpu/gpu_backend.h"
#include "kernels/score_rule.h"

namespace kvp {
namespace {

// Positions a prefill of `prompt_len` protects (sinks and the recent window of its last position).
int protected_count(const PolicyParams& params, int prompt_len) {
  int n = 0;
  for (int p = 0; p < prompt_len; ++p) n += is_protected(params, p, prompt_len - 1) ? 1 : 0;
  return n;
}

}  // namespace

void GpuBackend::open_prompt(int seq, int prompt_len) {
  PromptScratch& p = prompts_[seq];
  KVP_CHECK(n_used_[head_index(seq, 0, 0)] == 0 && p.prompt_len == 0,
            "sequence {}: a new prompt while one is being prefilled", seq);
  KVP_CHECK(prompt_len <= 8192, "prefill of {} positions: the GPU backend prefills at most 8192", prompt_len);
  p.prompt_len = prompt_len;
  const int L = config_.n_layers, H = config_.n_kv_heads, hd = config_.head_dim();
  // The predicted bytes hold it for an f32 cache; an f16 cache's prediction counts 2-byte keys
  // and values, while the scratch keeps the activations' f32.
  const size_t predicted = static_cast<size_t>(budgets_[seq].prefill_scratch(prompt_len, evict_chunk_).kv_bytes());
  // ThinK's layers also sum their queries, head_dim floats per KV head.
  if (evict_chunk_ == 0) {
    const size_t kv = static_cast<size_t>(prompt_len) * config_.kv_dim();
    const size_t per_layer = 2 * kv + static_cast<size_t>(prompt_len) * H;  // floats
    size_t floats = 0;
    for (int l = 0; l < L; ++l) floats += per_layer + (thin(l) ? static_cast<size_t>(H) * hd : 0);
    p.arena = DeviceBuffer(*device_, std::max(predicted, floats * sizeof(float)));
    float* base = p.arena.as<float>();
    for (int l = 0; l < L; ++l) {
      p.k.push_back(base);
      p.v.push_back(base + kv);
      p.column_sum.push_back(base + 2 * kv);
      base += per_layer;
      p.query_sums.push_back(thin(l) ? base : nullptr);
      if (thin(l)) base += static_cast<size_t>(H) * hd;
    }
  } else {
    // Each head's rows: keys and values of head_dim floats, a position and a column sum.
    std::vector<int> caps;
    size_t floats = 0;
    for (int l = 0; l < L; ++l) {
      for (int h = 0; h < H; ++h) {
        caps.push_back(std::min(prompt_len, budgets_[seq].budget(l, h) + evict_chunk_));
        floats += static_cast<size_t>(caps.back()) * (2 * hd + 2) + (thin(l) ? hd : 0);
      }
    }
    p.arena = DeviceBuffer(*device_, std::max(predicted, floats * sizeof(float)));
    float* next = p.arena.as<float>();
    for (size_t e = 0; e < caps.size(); ++e) {
      const int cap = caps[e];
      const bool sums = thin(static_cast<int>(e) / H);
      PromptScratch::Head head{.k = next, .v = next + static_cast<size_t>(cap) * hd, .pos = nullptr,
                               .column_sum = next + static_cast<size_t>(cap) * (2 * hd),
                               .query_sums = sums ? next + static_cast<size_t>(cap) * (2 * hd + 2) : nullptr,
                               .cap = cap, .rows = 0};
      head.pos = reinterpret_cast<int32_t*>(head.column_sum + cap);
      p.heads.push_back(head);
      next += static_cast<size_t>(cap) * (2 * hd + 2) + (sums ? hd : 0);
    }
  }
  note_kv_bytes();
}

void GpuBackend::add_query_sums(int seq, const PrefillRows& chunk, int layer_idx, int first_pos, int prompt_len,
                                float* sums) {
  const int window = budgets_[seq].layer_compression(layer_idx).think_queries;
  device_->kernels().query_sums(chunk, first_pos, prompt_len - window, first_pos == 0, sums, threads_);
}

void GpuBackend::prefill(const Work& w, int layer_idx) {
  const int seq = rows_.seq_idx[w.first], c0 = rows_.positions[w.first], c1 = c0 + w.n;
  const int P = rows_.prompt_len[w.first] > 0 ? rows_.prompt_len[w.first] : w.n;
  const int H = config_.n_kv_heads, hd = config_.head_dim(), group = config_.group_size();
  for (int i = 0; i < w.n; ++i) {
    KVP_CHECK(rows_.positions[w.first + i] == c0 + i, "a prefill starts at position 0 and runs in order");
  }
  KVP_CHECK(P <= 8192, "prefill of {} positions: the GPU backend prefills at most 8192", P);
  Device& d = *device_;
  if (P > prefill_capacity_) {
    prefill_capacity_ = P;
    const size_t stats = static_cast<size_t>(P) * config_.n_heads, per_head = static_cast<size_t>(P) * H;
    row_max_ = DeviceBuffer(d, stats * sizeof(float));
    row_sum_ = DeviceBuffer(d, stats * sizeof(float));
    column_sum_ = DeviceBuffer(d, per_head * sizeof(float));
    prompt_score_ = DeviceBuffer(d, per_head * sizeof(float));
    prompt_l1_ = DeviceBuffer(d, per_head * sizeof(float));
    prompt_key_ = DeviceBuffer(d, per_head * sizeof(float));
    shared_key_ = DeviceBuffer(d, static_cast<size_t>(P) * sizeof(float));
  }
  const float* q = act(Act::kQ) + static_cast<size_t>(w.first) * config_.q_dim();
  const float* k = act(Act::kK) + static_cast<size_t>(w.first) * config_.kv_dim();
  const float* v = act(Act::kV) + static_cast<size_t>(w.first) * config_.kv_dim();
  float* column_sum = math::prefill_uses_attention(score_args_.rule) ? column_sum_.as<float>() : nullptr;
  const bool chunked = w.n < P;
  if (chunked && evict_chunk_ > 0) return prefill_evicting(w, layer_idx);
  if (chunked) {
    // This chunk's keys and values join the prompt's so far; its queries attend all of them, and
    // their attention adds to the earlier keys' column sums.
    PromptScratch& p = prompts_[seq];
    const size_t row_bytes = static_cast<size_t>(config_.kv_dim()) * sizeof(float);
    d.copy(p.k[layer_idx] + static_cast<size_t>(c0) * config_.kv_dim(), k, w.n * row_bytes);
    d.copy(p.v[layer_idx] + static_cast<size_t>(c0) * config_.kv_dim(), v, w.n * row_bytes);
    k = p.k[layer_idx];
    v = p.v[layer_idx];
    if (column_sum) column_sum = p.column_sum[layer_idx];
  }
  const PrefillRows rows{.q = q,
                         .k = k,
                         .v = v,
                         .row_max = row_max_.as<float>(),
                         .row_sum = row_sum_.as<float>(),
                         .prompt_len = c1,
                         .n_kv_heads = H,
                         .group = group,
                         .head_dim = hd,
                         .first_query = c0,
                         .column_stride = P};
  float* out = act(Act::kAttn) + static_cast<size_t>(w.first) * config_.q_dim();
  device_->kernels().prefill_attention(rows, out, column_sum,
                                       ColumnSpan{.first_row = math::prefill_first_row(score_args_, P),
                                                  .own_row = math::prefill_counts_own_row(score_args_.rule)},
                                       threads_);
  float* query_sums = nullptr;
  if (thin(layer_idx)) {
    const size_t floats = static_cast<size_t>(H) * hd;
    if (chunked) {
      query_sums = prompts_[seq].query_sums[layer_idx];
    } else {
      query_sums_.grow(d, floats * sizeof(float));
      query_sums = query_sums_.as<float>();
    }
    add_query_sums(seq, rows, layer_idx, c0, P, query_sums);
  }
  if (c1 < P) return;  // more chunks to come
  PrefillRows prompt = rows;
  prompt.first_query = 0;
  prompt.column_stride = 0;
  cut_prompt(seq, layer_idx, prompt, column_sum, query_sums);
  if (chunked && layer_idx == config_.n_layers - 1) prompts_[seq] = PromptScratch{};  // the scratch is freed
}

void GpuBackend::prefill_evicting(const Work& w, int layer_idx) {
  const int seq = rows_.seq_idx[w.first], c0 = rows_.positions[w.first], c1 = c0 + w.n;
  const int P = rows_.prompt_len[w.first];
  const int H = config_.n_kv_heads, hd = config_.head_dim();
  Device& d = *device_;
  const Launchers& K = d.kernels();
  PromptScratch& p = prompts_[seq];
  const float* q = act(Act::kQ) + static_cast<size_t>(w.first) * config_.q_dim();
  const float* k = act(Act::kK) + static_cast<size_t>(w.first) * config_.kv_dim();
  const float* v = act(Act::kV) + static_cast<size_t>(w.first) * config_.kv_dim();
  float* out = act(Act::kAttn) + static_cast<size_t>(w.first) * config_.q_dim();
  const bool scored = math::prefill_uses_attention(score_args_.rule);
  const bool last_row = score_args_.rule == math::kScoreLastAttention;
  const int window_from = math::prefill_first_row(score_args_, P);  // a position
  std::vector<int32_t> positions(static_cast<size_t>(w.n));
  for (int i = 0; i < w.n; ++i) positions[i] = c0 + i;
  for (int h = 0; h < H; ++h) {
    PromptScratch::Head& s = p.heads[static_cast<size_t>(layer_idx) * H + h];
    KVP_CHECK(s.rows + w.n <= s.cap, "sequence {}: layer {} head {}: {} rows past a scratch of {}", seq, layer_idx, h,
              s.rows + w.n, s.cap);
    // The chunk's keys, values and positions join the head's kept rows.
    K.copy_rows(k + static_cast<size_t>(h) * hd, config_.kv_dim(), s.k + static_cast<size_t>(s.rows) * hd, hd, w.n, hd,
                threads_);
    K.copy_rows(v + static_cast<size_t>(h) * hd, config_.kv_dim(), s.v + static_cast<size_t>(s.rows) * hd, hd, w.n, hd,
                threads_);
    d.upload(s.pos + s.rows, positions.data(), positions.size() * sizeof(int32_t));
    const PrefillRows rows{.q = q, .k = s.k, .v = s.v, .row_max = row_max_.as<float>(), .row_sum = row_sum_.as<float>(),
                           .prompt_len = s.rows + w.n, .n_kv_heads = H, .group = config_.group_size(), .head_dim = hd,
                           .first_query = s.rows, .column_stride = s.cap, .first_head = h, .heads = 1, .k_row = hd,
                           .positions = s.pos};
    // The queries the policy's scores count, as rows of this scratch: tova's the chunk's last (it
    // replaces the scores at every row), snapkv's those of its window, the others every one.
    const ColumnSpan span =
        last_row ? ColumnSpan{.first_row = rows.prompt_len - 1, .own_row = true, .replace = true}
                 : ColumnSpan{.first_row = std::max(0, s.rows + window_from - c0),
                              .own_row = math::prefill_counts_own_row(score_args_.rule)};
    K.prefill_attention(rows, out, scored ? s.column_sum : nullptr, span, threads_);
    if (s.query_sums) add_query_sums(seq, rows, layer_idx, c0, P, s.query_sums);
    s.rows += w.n;
  }
  if (c1 == P) {
    cut_scratch(seq, layer_idx, c1 - 1, true);
    if (layer_idx == config_.n_layers - 1) prompts_[seq] = PromptScratch{};  // the scratch is freed
  } else if (c1 % evict_chunk_ == 0) {
    cut_scratch(seq, layer_idx, c1 - 1, false);
  }
}

void GpuBackend::cut_scratch(int seq, int layer_idx, int32_t newest, bool finish) {
  const int H = config_.n_kv_heads, hd = config_.head_dim();
  Device& d = *device_;
  const Launchers& K = d.kernels();
  PromptScratch& p = prompts_[seq];
  PromptScratch::Head* heads = &p.heads[static_cast<size_t>(layer_idx) * H];
  int stride = 0, keep_stride = 1;
  bool cuts = finish;
  for (int h = 0; h < H; ++h) {
    const int budget = head_capacity_[head_index(seq, layer_idx, h)];
    stride = std::max(stride, heads[h].rows);
    keep_stride = std::max(keep_stride, budget);
    cuts = cuts || heads[h].rows > budget;
    check_cut(seq, heads[h].rows, newest, budget);
  }
  if (!cuts) return;  // every head's rows fit its budget: the CPU keeps them all too
  math::ScoreArgs score_args = score_args_;
  score_args.layer_idx = layer_idx;
  if (!finish) score_args.snap_kernel = 0;  // snapkv pools its scores only at the prompt's last cut
  const bool scored = math::prefill_uses_attention(score_args_.rule);
  auto rows_of = [&](int h) {
    const PromptScratch::Head& s = heads[h];
    return PrefillRows{.q = nullptr, .k = s.k, .v = s.v, .row_max = nullptr, .row_sum = nullptr, .prompt_len = s.rows,
                       .n_kv_heads = H, .group = config_.group_size(), .head_dim = hd, .column_stride = s.cap,
                       .first_head = h, .heads = 1, .k_row = hd, .positions = s.pos};
  };
  auto at = [&](const DeviceBuffer& b, int h) { return b.as<float>() + static_cast<size_t>(h) * stride; };
  int32_t* keep = keep_rows(keep_stride);
  for (int h = 0; h < H; ++h) {
    K.prefill_scores(rows_of(h), scored ? heads[h].column_sum : nullptr, at(prompt_score_, h), at(prompt_l1_, h),
                     at(prompt_key_, h), score_args, threads_);
  }
  if (crush_period_ > 0) {
    crush_keep(prompt_key_.as<float>(), stride, heads[0].rows, heads[0].pos, newest,
               head_capacity_[head_index(seq, layer_idx, 0)], keep, keep_stride);
  } else if (shared_) {
    // One kept set for the layer (equal budgets, so equal rows), from the heads' keys summed per row.
    K.sum_rows(prompt_key_.as<float>(), H, stride, shared_key_.as<float>(), threads_);
    K.prefill_keep(shared_key_.as<float>(), 1, stride, sinks_, recent_, head_capacity_[head_index(seq, layer_idx, 0)],
                   keep, threads_);
    for (int h = 1; h < H; ++h) {
      d.copy(keep + static_cast<size_t>(h) * keep_stride, keep, static_cast<size_t>(keep_stride) * sizeof(int32_t));
    }
  } else {
    for (int h = 0; h < H; ++h) {
      K.prefill_keep(at(prompt_key_, h), 1, heads[h].rows, sinks_, recent_,
                     head_capacity_[head_index(seq, layer_idx, h)], keep + static_cast<size_t>(h) * keep_stride,
                     threads_);
    }
  }
  // What each head drops, for the eviction log, read before the cut moves the rows.
  std::vector<std::vector<int32_t>> dropped_pos(H);
  std::vector<std::vector<float>> dropped_key(H);
  if (eviction_log_) {
    for (int h = 0; h < H; ++h) {
      const int rows = heads[h].rows, budget = head_capacity_[head_index(seq, layer_idx, h)];
      if (rows <= budget) continue;
      std::vector<float> keys(rows);
      std::vector<int32_t> pos(rows), kept_rows(budget);
      d.download(keys.data(), at(prompt_key_, h), keys.size() * sizeof(float));
      d.download(pos.data(), heads[h].pos, pos.size() * sizeof(int32_t));
      d.download(kept_rows.data(), keep + static_cast<size_t>(h) * keep_stride, kept_rows.size() * sizeof(int32_t));
      std::vector<bool> kept(rows, false);
      for (int32_t r : kept_rows) {
        if (r >= 0) kept[r] = true;
      }
      for (int j = 0; j < rows; ++j) {
        if (kept[j]) continue;
        dropped_pos[h].push_back(pos[j]);
        dropped_key[h].push_back(keys[j]);
      }
    }
  }
  for (int h = 0; h < H; ++h) {
    PromptScratch::Head& s = heads[h];
    const size_t i = head_index(seq, layer_idx, h);
    const int budget = head_capacity_[i];
    if (finish) {
      const SlotCacheView head = prompt_view(seq, layer_idx, h);
      if (thin(layer_idx)) {
        K.think_channels(rows_of(h), s.query_sums, head, keep + static_cast<size_t>(h) * keep_stride, keep_stride,
                         threads_);
      }
      K.prefill_gather(rows_of(h), head, at(prompt_score_, h), at(prompt_l1_, h),
                       keep + static_cast<size_t>(h) * keep_stride, keep_stride, threads_);
      n_used_[i] = std::min(s.rows, budget);
    } else if (s.rows > budget) {
      K.prefill_compact(s.k, s.v, s.pos, s.column_sum, keep + static_cast<size_t>(h) * keep_stride, budget, hd,
                        threads_);
      s.rows = budget;
    }
  }
  for (int h = 0; eviction_log_ && h < H; ++h) {
    for (size_t e = 0; e < dropped_pos[h].size(); ++e) {
      eviction_log_->push_back(EvictionRecord{.seq_idx = seq, .step = newest, .layer_idx = layer_idx, .kv_head_idx = h,
                                              .evicted_pos = dropped_pos[h][e], .score = dropped_key[h][e]});
    }
  }
}

void GpuBackend::check_cut(int seq, int rows, int32_t newest, int budget) const {
  if (!evicts_) {
    KVP_CHECK(rows <= budget, "sequence {}: a prompt of {} positions does not fit a full cache of {} slots", seq,
              newest + 1, budget);
  } else if (rows > budget) {
    const int protected_positions = protected_count(policy_->params(), newest + 1);
    KVP_CHECK(protected_positions <= budget, "budget {} below the {} protected positions", budget,
              protected_positions);
  }
}

void GpuBackend::crush_keep(const float* keys, int key_stride, int n, const int32_t* positions, int32_t newest,
                            int budget, int32_t* keep, int keep_stride) {
  Device& d = *device_;
  const PolicyParams& p = policy_->params();
  const size_t work = 2 * static_cast<size_t>(n) * sizeof(int32_t);
  crush_work_.grow(d, work);
  d.kernels().kvcrush_keep(keys, config_.n_kv_heads, key_stride, n, positions,
                           CrushRule{.newest = newest, .sinks = sinks_, .recent = recent_, .ratio = p.crush_ratio,
                                     .anchor = static_cast<int>(p.crush_anchor), .seed = p.seed},
                           budget, crush_work_.as<int32_t>(), keep, threads_);
  for (int h = 1; h < config_.n_kv_heads; ++h) {
    d.copy(keep + static_cast<size_t>(h) * keep_stride, keep, static_cast<size_t>(budget) * sizeof(int32_t));
  }
}

int32_t* GpuBackend::keep_rows(int keep_stride) {
  const size_t bytes = static_cast<size_t>(keep_stride) * config_.n_kv_heads * sizeof(int32_t);
  keep_.grow(*device_, bytes);
  return keep_.as<int32_t>();
}

void GpuBackend::cut_prompt(int seq, int layer_idx, const PrefillRows& rows, const float* column_sum,
                            const float* query_sums) {
  const int P = rows.prompt_len, H = config_.n_kv_heads;
  Device& d = *device_;
  int keep_stride = 1;
  for (int h = 0; h < H; ++h) {
    const int budget = head_capacity_[head_index(seq, layer_idx, h)];
    keep_stride = std::max(keep_stride, budget);
    check_cut(seq, P, P - 1, budget);
  }
  keep_rows(keep_stride);
  const Launchers& K = d.kernels();
  math::ScoreArgs score_args = score_args_;
  score_args.layer_idx = layer_idx;
  K.prefill_scores(rows, column_sum, prompt_score_.as<float>(), prompt_l1_.as<float>(), prompt_key_.as<float>(),
                   score_args, threads_);
  if (crush_period_ > 0) {
    crush_keep(prompt_key_.as<float>(), P, P, nullptr, P - 1, head_capacity_[head_index(seq, layer_idx, 0)],
               keep_.as<int32_t>(), keep_stride);
  } else if (shared_) {
    // One kept set for the layer, from the heads' keys summed per position (equal budgets).
    K.sum_rows(prompt_key_.as<float>(), H, P, shared_key_.as<float>(), threads_);
    K.prefill_keep(shared_key_.as<float>(), 1, P, sinks_, recent_, head_capacity_[head_index(seq, layer_idx, 0)],
                   keep_.as<int32_t>(), threads_);
    for (int h = 1; h < H; ++h) {
      d.copy(keep_.as<int32_t>() + static_cast<size_t>(h) * keep_stride, keep_.as<int32_t>(),
             static_cast<size_t>(keep_stride) * sizeof(int32_t));
    }
  } else {
    for (int h = 0; h < H; ++h) {
      K.prefill_keep(prompt_key_.as<float>() + static_cast<size_t>(h) * P, 1, P, sinks_, recent_,
                     head_capacity_[head_index(seq, layer_idx, h)],
                     keep_.as<int32_t>() + static_cast<size_t>(h) * keep_stride, threads_);
    }
  }
  const SlotCacheView heads = prompt_view(seq, layer_idx, 0);
  if (thin(layer_idx)) K.think_channels(rows, query_sums, heads, keep_.as<int32_t>(), keep_stride, threads_);
  K.prefill_gather(rows, heads, prompt_score_.as<float>(), prompt_l1_.as<float>(), keep_.as<int32_t>(), keep_stride,
                   threads_);
  for (int h = 0; h < H; ++h) {
    int32_t& used = n_used_[head_index(seq, layer_idx, h)];
    used = std::min(P, head_capacity_[head_index(seq, layer_idx, h)]);
  }
  if (eviction_log_ && P > 1) {
    std::vector<float> keys(static_cast<size_t>(P) * H);
    std::vector<int32_t> keep(static_cast<size_t>(keep_stride) * H);
    d.download(keys.data(), prompt_key_.get(), keys.size() * sizeof(float));
    d.download(keep.data(), keep_.get(), keep.size() * sizeof(int32_t));
    const int32_t step = P - 1;
    for (int h = 0; h < H; ++h) {
      std::vector<bool> kept(P, false);
      const int budget = head_capacity_[head_index(seq, layer_idx, h)];
      for (int s = 0; s < std::min(budget, keep_stride); ++s) {
        const int32_t p = keep[static_cast<size_t>(h) * keep_stride + s];
        if (p >= 0) kept[p] = true;
      }
      for (int j = 0; j < P; ++j) {
        if (kept[j]) continue;
        eviction_log_->push_back(EvictionRecord{.seq_idx = seq, .step = step, .layer_idx = layer_idx,
                                                .kv_head_idx = h, .evicted_pos = j,
                                                .score = keys[static_cast<size_t>(h) * P + j]});
      }
    }
  }
}

}  // namespace kvp
