// KVCrush's selection and the in-place cut it needs at decode, written once for nvcc and the
// emulation; included by kernels/decoder_kernels.cuh. The rule is the CPU's
// (planner/policy/kvcrush.cc, KvCrushPolicy::choose_kept), by ranks instead of sorts:
//   - protected rows (sinks, recent by position) are kept; of the F = budget − protected others,
//     R = ⌊ratio · F⌋ go to representatives and F − R to the highest keys summed over the heads in
//     head order (the newer row first on ties);
//   - a row's bit for head h: its key among all n rows ranks in the top half (rank · 2 < n, the
//     newer row first on ties);
//   - the candidates (rows not yet kept) ordered by Hamming distance to the anchor, the older row
//     first on ties; candidate ⌊t · C / R⌋ of that order is kept for t = 0 .. R − 1.

namespace kvp::KVP_KERNEL_NS {

inline constexpr int kMaxCrushHeads = 32;  // head-behaviour bits in one 32-bit word

// keys: [heads, key_stride] each head's eviction keys of rows [0, n), in increasing position;
// positions: [n] the rows' positions (null: the row index); work: [2 n] workspace. Writes
// keep[0, budget): the kept rows in increasing order, -1 pads. One block.
KVP_GLOBAL void kvcrush_keep_kernel(const float* keys, int heads, int key_stride, int n, const int32_t* positions,
                                    int newest, int sinks, int recent, int budget, double ratio, int anchor_rule,
                                    uint64_t seed, int32_t* work, int32_t* keep) {
  int32_t* flag = work;                                     // 1: kept
  uint32_t* bits = reinterpret_cast<uint32_t*>(work + n);  // head-behaviour bits
  const int tid = static_cast<int>(threadIdx.x), threads = static_cast<int>(blockDim.x);
  auto is_protected = [&](int j) {
    const int p = positions ? positions[j] : j;
    return p < sinks || p > newest - recent;
  };
  auto summed = [&](int j) {
    float s = 0.0f;
    for (int h = 0; h < heads; ++h) s += keys[static_cast<int64_t>(h) * key_stride + j];
    return s;
  };
  KVP_SHARED int n_protected, n_candidates;
  KVP_SHARED uint32_t anchor;
  if (tid == 0) {
    n_protected = 0;
    for (int j = 0; j < n; ++j) n_protected += is_protected(j) ? 1 : 0;
  }
  gpu::sync_threads();
  const int selectable = budget - n_protected > 0 ? budget - n_protected : 0;
  const int reps = n > budget ? static_cast<int>(ratio * selectable) : 0;
  const int by_key = selectable - reps;
  // Protected rows and the highest summed keys.
  for (int j = tid; j < n; j += threads) {
    int f = 1;
    if (n > budget && !is_protected(j)) {
      const float kj = summed(j);
      int rank = 0;
      for (int c = 0; c < n; ++c) {
        if (c == j || is_protected(c)) continue;
        const float kc = summed(c);
        if (kc > kj || (kc == kj && c > j)) ++rank;
      }
      f = rank < by_key ? 1 : 0;
    }
    flag[j] = f;
  }
  if (reps > 0) {
    for (int j = tid; j < n; j += threads) {
      uint32_t b = 0;
      for (int h = 0; h < heads; ++h) {
        const float* key = keys + static_cast<int64_t>(h) * key_stride;
        int rank = 0;
        for (int c = 0; c < n; ++c) {
          if (c != j && (key[c] > key[j] || (key[c] == key[j] && c > j))) ++rank;
        }
        if (2 * rank < n) b |= 1u << h;
      }
      bits[j] = b;
    }
    gpu::sync_threads();
    if (tid == 0) {
      n_candidates = 0;
      int ones[kMaxCrushHeads] = {};
      for (int j = 0; j < n; ++j) {
        if (flag[j]) continue;
        ++n_candidates;
        for (int h = 0; h < heads; ++h) ones[h] += (bits[j] >> h) & 1u;
      }
      anchor = 0;
      for (int h = 0; h < heads; ++h) {
        bool bit = false;
        if (anchor_rule == 0) bit = 2 * ones[h] > n_candidates;                // mean
        if (anchor_rule == 1) bit = math::random_score(seed, 0, h, 0) >= 0.5f;  // random
        if (anchor_rule == 2) bit = h % 2 == 0;                                 // alternating
        if (bit) anchor |= 1u << h;
      }
    }
    gpu::sync_threads();
    auto distance = [&](int j) {
      int d = 0;
      for (uint32_t x = bits[j] ^ anchor; x != 0; x &= x - 1) ++d;
      return d;
    };
    const int64_t cands = n_candidates;
    for (int j = tid; j < n; j += threads) {
      if (flag[j]) continue;
      const int dj = distance(j);
      int64_t idx = 0;  // j's place in the candidates' order
      for (int i = 0; i < n; ++i) {
        if (i == j || flag[i] == 1) continue;
        const int di = distance(i);
        if (di < dj || (di == dj && i < j)) ++idx;
      }
      const int64_t t = (idx * reps + cands - 1) / cands;  // the first stride step at or after idx
      if (t < reps && t * cands / reps == idx) flag[j] = 2;
    }
  }
  gpu::sync_threads();
  if (tid == 0) {
    int slot = 0;
    for (int j = 0; j < n && slot < budget; ++j) {
      if (flag[j]) keep[slot++] = j;
    }
    while (slot < budget) keep[slot++] = -1;
  }
  gpu::sync_threads();
}

// Each launched head's eviction keys of its n slots, keys[h * key_stride + j] (math::eviction_key
// of the slot's score and position, the newest position `newest`). One block per head.
KVP_GLOBAL void slot_keys_kernel(const float* score, const int32_t* pos, const int64_t* offset, int n, int newest,
                                 int per_query_key, float* keys, int key_stride) {
  const int h = static_cast<int>(blockIdx.x);
  const int64_t off = offset[h];
  for (int j = static_cast<int>(threadIdx.x); j < n; j += static_cast<int>(blockDim.x)) {
    keys[static_cast<int64_t>(h) * key_stride + j] = math::eviction_key(score[off + j], pos[off + j], newest, per_query_key);
  }
}

// A cut in place of each launched head's dense slots: slot keep[s] moves to s for s < n_keep (keep
// increasing, so keep[s] >= s and the source is not yet overwritten). One block per head; each
// thread moves its own rows d of the transposed keys and values in increasing s, thread 0 the
// positions, scores and value norms.
template <typename T>
KVP_GLOBAL void slot_compact_kernel(SlotCache<T> cache, const int32_t* keep, int n_keep, int head_dim) {
  const int h = static_cast<int>(blockIdx.x);
  const int64_t off = cache.offset[h];
  const int cap = cache.capacity[h];
  T* k = cache.k + off * head_dim;
  T* v = cache.v + off * head_dim;
  for (int d = static_cast<int>(threadIdx.x); d < head_dim; d += static_cast<int>(blockDim.x)) {
    for (int s = 0; s < n_keep; ++s) {
      const int64_t p = keep[s];
      if (p == s) continue;
      k[static_cast<int64_t>(d) * cap + s] = k[static_cast<int64_t>(d) * cap + p];
      v[static_cast<int64_t>(d) * cap + s] = v[static_cast<int64_t>(d) * cap + p];
    }
  }
  if (threadIdx.x == 0) {
    for (int s = 0; s < n_keep; ++s) {
      const int64_t p = keep[s];
      cache.pos[off + s] = cache.pos[off + p];
      cache.score[off + s] = cache.score[off + p];
      if (cache.value_l1) cache.value_l1[off + s] = cache.value_l1[off + p];
    }
  }
}

}  // namespace kvp::KVP_KERNEL_NS
