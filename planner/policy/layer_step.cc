#include "planner/policy/layer_step.h"

#include <algorithm>

namespace kvp {

StepScratch::StepScratch(int max_slots) : scores(max_slots + 17), weights(max_slots + 17) {}

int sparse_slot_attention(const float* q, int group, const HeadSlots& head, const float* k_new, const float* v_new,
                          const SlotAttentionOut& result, const DeltaRow& delta, StepScratch& sc) {
  KVP_CHECK(!head.compressed(), "DELTA's sparse layers attend dense caches only");
  const int n = *head.n_used, hd = head.head_dim;
  sc.gathered.clear();
  for (int j = 0; j < n; ++j) {
    if (page_chosen(delta, head.pos[j])) sc.gathered.push_back(j);
  }
  const int m = static_cast<int>(sc.gathered.size());
  if (m == n) {
    slot_attention(q, group, head.kv(), k_new, v_new, result);
    return n + 1;
  }
  const size_t elements = size_t(std::max(m, 1)) * hd;
  if (sc.gather_k.size() < elements) sc.gather_k.resize(elements), sc.gather_v.resize(elements);
  // Runs of consecutive slots that stay within one block of the source and one of the gathered
  // layout: each row d of a run is one copy of up to 16 floats (a page of 16 in a cache holding
  // positions in slot order is a whole block; eviction's reordered slots make shorter runs).
  for (int i = 0; i < m;) {
    const int j = sc.gathered[i];
    const int j0 = j / kSlotBlock * kSlotBlock, i0 = i / kSlotBlock * kSlotBlock;
    int run = 1;
    while (i + run < m && sc.gathered[i + run] == j + run && (j + run) % kSlotBlock != 0 &&
           (i + run) % kSlotBlock != 0) {
      ++run;
    }
    for (int d_i = 0; d_i < hd; ++d_i) {
      const size_t from = slot_block_row(head.budget, hd, d_i, j0) + (j - j0);
      const size_t to = slot_block_row(m, hd, d_i, i0) + (i - i0);
      std::copy_n(head.k + from, run, sc.gather_k.data() + to);
      std::copy_n(head.v + from, run, sc.gather_v.data() + to);
    }
    i += run;
  }
  if (result.weights && sc.gather_weights.size() < size_t(m) + 17) sc.gather_weights.resize(size_t(m) + 17);
  SlotAttentionOut sub = result;
  sub.weights = result.weights ? sc.gather_weights.data() : nullptr;
  const SlotKv gathered{.k = sc.gather_k.data(), .v = sc.gather_v.data(), .capacity = m, .n_used = m, .head_dim = hd};
  slot_attention(q, group, gathered, k_new, v_new, sub);
  if (result.weights) {
    std::fill_n(result.weights, n, 0.0f);
    for (int i = 0; i < m; ++i) result.weights[sc.gathered[i]] = sc.gather_weights[i];
    result.weights[n] = sc.gather_weights[m];
  }
  return m + 1;
}

void layer_step(const Policy& policy, std::span<const HeadSlots> heads, const TokenRow& row, int group,
                float* attn_out, float* softmax, StepScratch& sc, const EvictFn& on_evict,
                std::span<const ScoreObserver> observers) {
  const int n_kv_heads = static_cast<int>(heads.size());
  const int hd = heads[0].head_dim;
  bool want_weights = policy.uses_attention();
  for (const ScoreObserver& o : observers) want_weights = want_weights || o.policy->uses_attention();
  // An observer's view of head h's slots: the head's positions, its own scores.
  auto observed = [&](const ScoreObserver& o, int h) {
    return SlotArrays{.n_used = *heads[h].n_used, .budget = heads[h].budget, .pos = heads[h].pos,
                      .score = o.score[h], .aux = o.aux[h]};
  };
  sc.self_weight.assign(n_kv_heads, 0.0f);
  // DELTA at a decode row with a query: a selection layer scores the pages, a sparse one attends them.
  const DeltaParams& delta = policy.params().delta;
  const char role = row.delta && row.q && row.prompt_len == 0 ? delta.role(row.layer_idx) : kDeltaFull;
  if (role == kDeltaSelect) row.delta->pos_weight.assign(size_t(row.pos), 0.0f);
  for (int h = 0; row.q != nullptr && h < n_kv_heads; ++h) {
    const HeadSlots& head = heads[h];
    const size_t n = static_cast<size_t>(*head.n_used) + 1;
    if (sc.weights.size() < n + 16) {  // all written in whole 16-float packets
      sc.scores.resize(n + 16);
      sc.weights.resize(n + 16);
    }
    if (role == kDeltaSelect && sc.head_max.size() < n + 16) sc.head_max.resize(n + 16);
    const float* q = row.q + size_t(h) * group * hd;
    const SlotAttentionOut result{.out = attn_out + size_t(h) * group * hd,
                                  .weights = want_weights ? sc.weights.data() : nullptr,
                                  .softmax = softmax ? softmax + size_t(h) * group * 2 : nullptr,
                                  .scratch = sc.scores.data(),
                                  .head_max = role == kDeltaSelect ? sc.head_max.data() : nullptr};
    if (role == kDeltaSparse) {
      sc.attended += sparse_slot_attention(q, group, head, row.k + size_t(h) * hd, row.v + size_t(h) * hd, result,
                                           *row.delta, sc);
    } else if (head.compressed()) {
      compressed_slot_attention(q, group, head, row.pos, row.k + size_t(h) * hd, row.v + size_t(h) * hd, result);
    } else {
      slot_attention(q, group, head.kv(), row.k + size_t(h) * hd, row.v + size_t(h) * hd, result);
    }
    if (role == kDeltaSelect) {
      KVP_CHECK(!head.compressed(), "DELTA's selection layers attend dense caches only");
      float* pos_weight = row.delta->pos_weight.data();
      for (int j = 0; j < *head.n_used; ++j) {
        pos_weight[head.pos[j]] = std::max(pos_weight[head.pos[j]], sc.head_max[j]);
      }
    }
    if (role != kDeltaSparse && row.prompt_len == 0) sc.attended += *head.n_used + 1;
    // ThinK's channel scores: Σ q² over the group's queries of the prompt's last think_queries rows.
    if (head.query_sums && row.prompt_len > 0 && row.pos >= row.prompt_len - head.think_queries) {
      for (int g = 0; g < group; ++g) {
        for (int d = 0; d < hd; ++d) head.query_sums[d] += q[size_t(g) * hd + d] * q[size_t(g) * hd + d];
      }
    }
    if (want_weights) {
      SlotArrays s = head.slots();
      policy.observe(s, sc.weights.data(), row.pos, row.prompt_len);
      for (const ScoreObserver& o : observers) {
        SlotArrays os = observed(o, h);
        if (o.policy->uses_attention()) o.policy->observe(os, sc.weights.data(), row.pos, row.prompt_len);
      }
      sc.self_weight[h] = sc.weights[*head.n_used];
    }
  }
  if (role == kDeltaSelect) choose_pages(delta, policy.params().sinks, row.pos, *row.delta);
  if (const int period = policy.cut_period(); period > 0 && row.prompt_len == 0 && *heads[0].n_used == heads[0].budget) {
    // A policy that selects in one go (KVCrush): the full cache cut to budget − period slots, so
    // this token and the next period − 1 enter free slots.
    const std::vector<int32_t> budgets(n_kv_heads, heads[0].budget - period);
    cut_slots(policy, heads, heads, budgets, row.pos, false, on_evict);
  }
  sc.views.clear();
  for (const HeadSlots& head : heads) sc.views.push_back(head.slots());
  sc.slot.resize(n_kv_heads);
  sc.victim.resize(n_kv_heads);
  place_new_token(policy, sc.views, row.pos, sc.slot, sc.victim, row.unscored_from);
  for (int h = 0; h < n_kv_heads; ++h) {
    const HeadSlots& head = heads[h];
    if (sc.victim[h] < 0) {
      ++*head.n_used;
    } else if (on_evict) {
      on_evict(h, sc.victim[h], policy.eviction_key(sc.views[h], sc.slot[h], row.pos));
    }
    const float* k_new = row.k + size_t(h) * hd;
    const float* v_new = row.v + size_t(h) * hd;
    head.store(sc.slot[h], k_new, v_new, row.pos);
    SlotArrays s = head.slots();
    const NewToken token{.pos = row.pos, .layer_idx = row.layer_idx, .kv_head_idx = row.kv_head_first + h, .k = k_new,
                         .v = v_new, .head_dim = hd, .self_weight = sc.self_weight[h], .prompt_len = row.prompt_len};
    policy.init_slot(s, sc.slot[h], token);
    for (const ScoreObserver& o : observers) {
      KVP_CHECK(sc.victim[h] < 0, "a policy with score observers must keep every slot");
      SlotArrays os = observed(o, h);
      o.policy->init_slot(os, sc.slot[h], token);
    }
  }
}

std::vector<std::vector<int>> select_cut(const Policy& policy, std::span<SlotArrays> views,
                                         std::span<const int32_t> budgets, int32_t newest_pos, bool finish) {
  KVP_CHECK(budgets.size() == views.size() && !views.empty());
  if (finish) {
    for (SlotArrays& s : views) policy.finish_prefill(s, s.n_used);
  }
  std::vector<std::vector<int>> kept(views.size());
  if (policy.shared_per_layer()) {
    kept.assign(views.size(), select_kept(policy, views, newest_pos, budgets[0]));
  } else {
    for (size_t h = 0; h < views.size(); ++h) kept[h] = select_kept(policy, views.subspan(h, 1), newest_pos, budgets[h]);
  }
  for (size_t h = 0; h < views.size(); ++h) KVP_CHECK(static_cast<int>(kept[h].size()) <= budgets[h]);
  return kept;
}

void cut_slots(const Policy& policy, std::span<const HeadSlots> from, std::span<const HeadSlots> to,
               std::span<const int32_t> budgets, int32_t newest_pos, bool finish, const EvictFn& on_evict) {
  const int n_kv_heads = static_cast<int>(from.size());
  const int n = *from[0].n_used;
  const int hd = from[0].head_dim;
  KVP_CHECK(to.size() == from.size() && budgets.size() == from.size());
  std::vector<SlotArrays> views;
  for (const HeadSlots& p : from) views.push_back(p.slots());
  const std::vector<std::vector<int>> kept_per_head = select_cut(policy, views, budgets, newest_pos, finish);
  for (int h = 0; h < n_kv_heads; ++h) {
    const HeadSlots& src = from[h];
    const HeadSlots& dst = to[h];
    KVP_CHECK(budgets[h] <= dst.budget);
    const std::vector<int>& kept = kept_per_head[h];
    if (dst.compressed()) {
      // Into a compressed cache (the prompt's last cut): ThinK's channels from the kept keys, then
      // each kept token stored in its short forms, in position order (so a ring entry ends with the
      // newest position that maps to it).
      KVP_CHECK(finish && !src.compressed() && src.k != dst.k, "only a dense prompt is cut into a compressed cache");
      if (dst.compression.thin(hd)) think_channels(src, kept, dst.compression.key_channels, dst.channels);
    }
    // Kept slots in increasing order: slot `next` <= j, so a dense `to` may be `from` itself.
    float key[kMaxSlotHeadDim], value[kMaxSlotHeadDim];
    size_t next = 0;
    for (int j = 0; j < n; ++j) {
      if (next < kept.size() && kept[next] == j) {
        const int slot = static_cast<int>(next++);
        if (dst.compressed()) {
          for (int d = 0; d < hd; ++d) {
            key[d] = src.k[slot_element(src.budget, hd, d, j)];
            value[d] = src.v[slot_element(src.budget, hd, d, j)];
          }
          dst.store(slot, key, value, src.pos[j]);
        } else {
          if (src.k == dst.k && slot == j) continue;
          // In place, slot <= j: the elements written belong to slots already read (an earlier
          // block, or this block's row d at an earlier slot).
          for (int d = 0; d < hd; ++d) {
            const size_t to = slot_element(dst.budget, hd, d, slot), from = slot_element(src.budget, hd, d, j);
            dst.k[to] = src.k[from];
            dst.v[to] = src.v[from];
          }
          dst.pos[slot] = src.pos[j];
        }
        dst.score[slot] = src.score[j];
        if (dst.aux) dst.aux[slot] = src.aux[j];
      } else if (on_evict) {
        on_evict(h, src.pos[j], policy.eviction_key(views[h], j, newest_pos));
      }
    }
    *dst.n_used = static_cast<int32_t>(kept.size());
  }
}

void prefill_row(const Policy& policy, std::span<const HeadSlots> scratch, std::span<const HeadSlots> dest,
                 std::span<const int32_t> budgets, const TokenRow& row, int group, float* attn_out, StepScratch& sc,
                 int evict_chunk, const EvictFn& on_cut, std::span<const ScoreObserver> observers) {
  KVP_CHECK(row.prompt_len > 0 && row.pos < row.prompt_len);
  layer_step(policy, scratch, row, group, attn_out, nullptr, sc, {}, observers);
  if (row.pos == row.prompt_len - 1) {
    cut_slots(policy, scratch, dest, budgets, row.pos, true, on_cut);
  } else if (evict_chunk > 0 && (row.pos + 1) % evict_chunk == 0) {
    cut_slots(policy, scratch, scratch, budgets, row.pos, false, on_cut);
  }
}

void cut_prefill(const Policy& policy, std::span<const HeadSlots> prompt, std::span<const HeadSlots> dest,
                 const EvictFn& on_evict) {
  const int n = *prompt[0].n_used;
  for (int j = 0; j < n; ++j) KVP_CHECK(prompt[0].pos[j] == j, "prefill slots must hold positions in order");
  std::vector<int32_t> budgets;
  for (const HeadSlots& d : dest) budgets.push_back(d.budget);
  cut_slots(policy, prompt, dest, budgets, n - 1, true, on_evict);
}

}  // namespace kvp
