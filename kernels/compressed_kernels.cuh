// The kernels of a compressed cache (ThinK's channels, Mustafar's magnitude sparsity), written once
// for nvcc and the emulation; included by kernels/decoder_kernels.cuh. The layout is
// kernels/compressed_layout.h's; the rules are the CPU's (planner/policy/kv_compression.cc), so both
// keep the same elements, the same channels and the same tokens:
//   - a vector of n keeps its `keep` largest magnitudes, the lower index first on ties
//     (magnitude_mask); the others go to the ring entry of its position;
//   - ThinK's channel c scores Σ q_c² (the last prompt queries) · Σ k_c² (the kept keys); the
//     key_channels highest are kept, the lower channel first on ties (think_channels);
//   - a slot attends at full width while its position is within the windows of the newest position
//     (think_recent for ThinK's dropped channels, dense_recent for Mustafar's dropped elements).

namespace kvp::KVP_KERNEL_NS {

KVP_HD inline bool mask_bit(const uint8_t* mask, int i) { return (mask[i / 8] >> (i % 8)) & 1u; }

// The set bits of `mask` below element i.
KVP_HD inline int bits_below(const uint8_t* mask, int i) {
  int c = 0;
  for (int b = 0; b < i / 8; ++b) {
    for (unsigned m = mask[b]; m != 0; m &= m - 1) ++c;
  }
  for (unsigned m = mask[i / 8] & ((1u << (i % 8)) - 1u); m != 0; m &= m - 1) ++c;
  return c;
}

// One head's block, its parts typed.
template <typename T>
struct CompressedHead {
  T* k;
  T* v;
  T* k_drop;
  T* k_resid;
  T* v_resid;
  int32_t* channels;  // null unless ThinK
  uint8_t* k_mask;
  uint8_t* v_mask;
  int cap;
  CompressedShape s;

  KVP_HD int channel(int i) const { return channels ? channels[i] : i; }
};

template <typename T>
KVP_DEVICE inline CompressedHead<T> compressed_head(const SlotCache<T>& cache, int entry) {
  const int cap = cache.capacity[entry];
  const CompressedParts p = compressed_parts(cache.shape, cap);
  uint8_t* b = cache.blocks + cache.block[entry];
  auto typed = [&](int64_t at) { return reinterpret_cast<T*>(b + at); };
  const CompressedShape& s = cache.shape;
  return CompressedHead<T>{typed(p.k),
                           typed(p.v),
                           s.thin() ? typed(p.k_drop) : nullptr,
                           s.sparse_keys() ? typed(p.k_resid) : nullptr,
                           s.sparse_values() ? typed(p.v_resid) : nullptr,
                           s.thin() ? reinterpret_cast<int32_t*>(b + p.channels) : nullptr,
                           s.sparse_keys() ? b + p.k_mask : nullptr,
                           s.sparse_values() ? b + p.v_mask : nullptr,
                           cap,
                           s};
}

// A compressed head's slots as decode_attention_body reads them. The query arrives in the key's
// channel order (kept channels, then dropped); slot j's key is its short form — dense kept channels
// [kc, cap], or `ke` packed elements under its mask — plus, inside the windows, ThinK's dropped
// channels and Mustafar's dropped elements from the rings. Sums in the CPU's order: the short form,
// then ThinK's ring, then Mustafar's.
template <typename T>
struct CompressedSlots {
  CompressedHead<T> h;
  const int32_t* pos;  // the head's slot positions
  int32_t newest;

  KVP_DEVICE int query_channel(int i) const { return h.channel(i); }

  KVP_DEVICE void logits(int j, const float* qs, int group, float* dot) const {
    const CompressedShape& s = h.s;
    const int hd = s.head_dim, kc = s.key_channels, ke = s.key_elements;
    for (int g = 0; g < group; ++g) dot[g] = 0;
    const uint8_t* mask = s.sparse_keys() ? h.k_mask + static_cast<int64_t>(j) * s.key_mask_bytes() : nullptr;
    if (!mask) {
      for (int i = 0; i < kc; ++i) {
        const float k_i = gpu::to_float(h.k[static_cast<int64_t>(i) * h.cap + j]);
        for (int g = 0; g < group; ++g) dot[g] += qs[g * hd + i] * k_i;
      }
    } else {
      const T* packed = h.k + static_cast<int64_t>(j) * ke;
      for (int i = 0, e = 0; i < kc; ++i) {
        if (!mask_bit(mask, i)) continue;
        const float k_i = gpu::to_float(packed[e++]);
        for (int g = 0; g < group; ++g) dot[g] += qs[g * hd + i] * k_i;
      }
    }
    const int32_t p = pos[j];
    if (s.thin() && p > newest - s.think_recent) {
      const T* drop = h.k_drop + static_cast<int64_t>(p % s.think_recent) * (hd - kc);
      for (int g = 0; g < group; ++g) {
        float a = 0;
        for (int i = kc; i < hd; ++i) a += qs[g * hd + i] * gpu::to_float(drop[i - kc]);
        dot[g] += a;
      }
    }
    if (mask && p > newest - s.dense_recent) {
      const T* rest = h.k_resid + static_cast<int64_t>(p % s.dense_recent) * (kc - ke);
      for (int g = 0; g < group; ++g) {
        float a = 0;
        for (int i = 0, e = 0; i < kc; ++i) {
          if (!mask_bit(mask, i)) a += qs[g * hd + i] * gpu::to_float(rest[e++]);
        }
        dot[g] += a;
      }
    }
  }

  // Element d of slot j's value: stored, from the ring inside the window, else 0.
  KVP_DEVICE float value(int j, int d) const {
    const CompressedShape& s = h.s;
    if (!s.sparse_values()) return gpu::to_float(h.v[static_cast<int64_t>(d) * h.cap + j]);
    const uint8_t* mask = h.v_mask + static_cast<int64_t>(j) * s.value_mask_bytes();
    const int below = bits_below(mask, d);
    if (mask_bit(mask, d)) return gpu::to_float(h.v[static_cast<int64_t>(j) * s.value_elements + below]);
    const int32_t p = pos[j];
    if (p <= newest - s.dense_recent) return 0.0f;
    return gpu::to_float(h.v_resid[static_cast<int64_t>(p % s.dense_recent) * (s.head_dim - s.value_elements) + d - below]);
  }
};

// x (n floats in block-shared memory) into slot j: with keep < n (Mustafar) its mask, the kept
// elements packed at store + j × keep and the others, in order, to `ring`; else whole, at
// store[i × cap + j]. `kept`: a block-shared workspace of n ints. Block-wide.
template <typename T>
KVP_DEVICE inline void store_vector(const float* x, int n, int keep, int cap, int j, T* store, uint8_t* masks,
                                    T* ring, int* kept) {
  const int tid = static_cast<int>(threadIdx.x), nt = static_cast<int>(blockDim.x);
  if (keep >= n) {
    for (int i = tid; i < n; i += nt) store[static_cast<int64_t>(i) * cap + j] = gpu::from_float<T>(x[i]);
    return;
  }
  for (int i = tid; i < n; i += nt) {  // i's rank by magnitude, the lower index first on ties
    const float a = fabsf(x[i]);
    int rank = 0;
    for (int c = 0; c < n; ++c) {
      const float b = fabsf(x[c]);
      rank += (b > a || (b == a && c < i)) ? 1 : 0;
    }
    kept[i] = rank < keep ? 1 : 0;
  }
  gpu::sync_threads();
  const int mask_bytes = (n + 7) / 8;
  for (int i = tid; i < n; i += nt) {
    int before = 0;
    for (int c = 0; c < i; ++c) before += kept[c];
    if (kept[i]) {
      store[static_cast<int64_t>(j) * keep + before] = gpu::from_float<T>(x[i]);
    } else {
      ring[i - before] = gpu::from_float<T>(x[i]);
    }
  }
  for (int b = tid; b < mask_bytes; b += nt) {
    unsigned m = 0;
    for (int l = 0; l < 8 && 8 * b + l < n; ++l) m |= static_cast<unsigned>(kept[8 * b + l]) << l;
    masks[static_cast<int64_t>(j) * mask_bytes + b] = static_cast<uint8_t>(m);
  }
  gpu::sync_threads();  // `kept` may be reused
}

// A token (key and value of head_dim floats, post-RoPE) into slot j of a compressed head at
// position p: the key in channel order, ThinK's dropped channels to their ring, then key and value
// through store_vector. Block-wide; the CPU's HeadSlots::store_compressed.
template <typename T>
KVP_DEVICE inline void store_token(const CompressedHead<T>& h, int j, int32_t p, const float* key, const float* value) {
  KVP_SHARED float x[kMaxHeadDim];
  KVP_SHARED int kept[kMaxHeadDim];
  const CompressedShape& s = h.s;
  const int tid = static_cast<int>(threadIdx.x), nt = static_cast<int>(blockDim.x);
  const int hd = s.head_dim, kc = s.key_channels;
  for (int i = tid; i < hd; i += nt) x[i] = key[h.channel(i)];
  gpu::sync_threads();
  if (s.thin()) {
    T* drop = h.k_drop + static_cast<int64_t>(p % s.think_recent) * (hd - kc);
    for (int i = kc + tid; i < hd; i += nt) drop[i - kc] = gpu::from_float<T>(x[i]);
  }
  const int ring = p % s.dense_recent;
  store_vector(x, kc, s.key_elements, h.cap, j, h.k, h.k_mask,
               s.sparse_keys() ? h.k_resid + static_cast<int64_t>(ring) * (kc - s.key_elements) : nullptr, kept);
  gpu::sync_threads();
  for (int i = tid; i < hd; i += nt) x[i] = value[i];
  gpu::sync_threads();
  store_vector(x, hd, s.value_elements, h.cap, j, h.v, h.v_mask,
               s.sparse_values() ? h.v_resid + static_cast<int64_t>(ring) * (hd - s.value_elements) : nullptr, kept);
  gpu::sync_threads();  // `x` may be reused
}

// insert_kernel for a compressed cache: the new token in its short forms.
template <typename T>
KVP_GLOBAL void compressed_insert_kernel(SlotCache<T> cache, const float* k_new, const float* v_new, const int32_t* slot,
                                         const int32_t* position, const float* self_weight,
                                         math::ScoreArgs score_args, int n_kv_heads, int head_dim) {
  const int rh = static_cast<int>(blockIdx.x);
  const int j = slot[rh];
  if (j < 0) return;  // the whole block
  store_token(compressed_head(cache, rh), j, position[rh], k_new + static_cast<int64_t>(rh) * head_dim,
              v_new + static_cast<int64_t>(rh) * head_dim);
  insert_metadata(cache, rh, j, k_new, v_new, position, self_weight, score_args, n_kv_heads, head_dim);
}

// decode_attention_kernel for a compressed cache.
template <typename T>
KVP_GLOBAL void compressed_decode_attention_kernel(SlotCache<T> cache, const float* q, const float* k_new,
                                                   const float* v_new, float* out, float* self_weight, float* weights,
                                                   int weights_stride, int rule, int group, int head_dim) {
  const int rh = static_cast<int>(blockIdx.x);
  const CompressedSlots<T> slots{compressed_head(cache, rh), cache.pos + cache.offset[rh], cache.newest[rh]};
  decode_attention_body(q, cache, slots, k_new, v_new, out, self_weight, weights, weights_stride, rule, group,
                        head_dim);
}

// prefill_gather_kernel for a compressed cache: the kept rows of each launched head stored in slot
// order — the keep list is in position order, so a ring entry ends with the newest position that
// maps to it, as on the CPU.
template <typename T>
KVP_GLOBAL void compressed_gather_kernel(SlotCache<T> cache, const float* k, const float* v, const float* score,
                                         const float* value_l1, const int32_t* keep, int keep_stride, int prompt_len,
                                         int head_dim, int64_t k_row, const int32_t* positions, int column_stride) {
  const int h = static_cast<int>(blockIdx.x);
  const int64_t off = cache.offset[h];
  const CompressedHead<T> head = compressed_head(cache, h);
  const int n_keep = head.cap < keep_stride ? head.cap : keep_stride;
  for (int slot = 0; slot < n_keep; ++slot) {
    const int32_t row = keep[static_cast<int64_t>(h) * keep_stride + slot];
    if (row < 0) continue;  // the whole block
    const int32_t p = positions ? positions[static_cast<int64_t>(h) * column_stride + row] : row;
    const int64_t src = row * k_row + static_cast<int64_t>(h) * head_dim;
    store_token(head, slot, p, k + src, v + src);
    if (threadIdx.x == 0) {
      const int64_t at = static_cast<int64_t>(h) * prompt_len + row;
      cache.pos[off + slot] = p;
      cache.score[off + slot] = score[at];
      if (cache.value_l1) cache.value_l1[off + slot] = value_l1[at];
    }
  }
}

// out[hl, d] (+)= Σ over rows r with first_pos + r >= from_pos, in row order, of Σ_g q[r, h, g, d]².
// One block per launched head hl (h = first_head + hl), threads over d.
KVP_GLOBAL void query_sums_kernel(const float* q, int rows, int n_kv_heads, int group, int head_dim, int first_head,
                                  int first_pos, int from_pos, int replace, float* out) {
  const int hl = static_cast<int>(blockIdx.x), h = first_head + hl;
  for (int d = static_cast<int>(threadIdx.x); d < head_dim; d += static_cast<int>(blockDim.x)) {
    float acc = replace ? 0.0f : out[static_cast<int64_t>(hl) * head_dim + d];
    for (int r = first_pos < from_pos ? from_pos - first_pos : 0; r < rows; ++r) {
      for (int g = 0; g < group; ++g) {
        const float x = q[((static_cast<int64_t>(r) * n_kv_heads + h) * group + g) * head_dim + d];
        acc += x * x;
      }
    }
    out[static_cast<int64_t>(hl) * head_dim + d] = acc;
  }
}

// ThinK's channels of each launched head hl into its block (cache entry hl): the kept channels
// ascending, then the dropped ones ascending. One block per head, threads over channels.
KVP_GLOBAL void think_channels_kernel(const float* k, const float* query_sums, uint8_t* blocks, const int64_t* block,
                                      const int32_t* capacity, CompressedShape shape, const int32_t* keep,
                                      int keep_stride, int head_dim, int64_t k_row) {
  const int hl = static_cast<int>(blockIdx.x);
  const int tid = static_cast<int>(threadIdx.x), nt = static_cast<int>(blockDim.x);
  const int kc = shape.key_channels;
  KVP_SHARED float score[kMaxHeadDim];
  KVP_SHARED int kept[kMaxHeadDim];
  const int n_keep = capacity[hl] < keep_stride ? capacity[hl] : keep_stride;
  for (int c = tid; c < head_dim; c += nt) {
    float k2 = 0;
    for (int s = 0; s < n_keep; ++s) {
      const int32_t row = keep[static_cast<int64_t>(hl) * keep_stride + s];
      if (row < 0) continue;
      const float x = k[row * k_row + static_cast<int64_t>(hl) * head_dim + c];
      k2 += x * x;
    }
    score[c] = query_sums[static_cast<int64_t>(hl) * head_dim + c] * k2;
  }
  gpu::sync_threads();
  for (int c = tid; c < head_dim; c += nt) {
    int rank = 0;
    for (int o = 0; o < head_dim; ++o) rank += (score[o] > score[c] || (score[o] == score[c] && o < c)) ? 1 : 0;
    kept[c] = rank < kc ? 1 : 0;
  }
  gpu::sync_threads();
  int32_t* channels = reinterpret_cast<int32_t*>(blocks + block[hl] + compressed_parts(shape, capacity[hl]).channels);
  for (int c = tid; c < head_dim; c += nt) {
    int kept_below = 0;
    for (int o = 0; o < c; ++o) kept_below += kept[o];
    channels[kept[c] ? kept_below : kc + (c - kept_below)] = c;
  }
  gpu::sync_threads();  // the shared arrays may be reused by the next block
}

}  // namespace kvp::KVP_KERNEL_NS
