#include "planner/policy/kv_compression.h"

#include <Eigen/Core>
#ifdef __AVX2__
#include <immintrin.h>
#endif
#include <algorithm>
#include <cmath>
#include <numeric>

#include "planner/policy/lanes.h"
#include "planner/policy/layer_step.h"

namespace kvp {

Result<SlotCompression> slot_compression(int head_dim, double think_ratio, double key_sparsity, double value_sparsity,
                                         const std::string& think_field, const std::string& keys_field,
                                         const std::string& values_field) {
  const std::pair<const std::string*, double> ratios[] = {
      {&think_field, think_ratio}, {&keys_field, key_sparsity}, {&values_field, value_sparsity}};
  for (const auto& [field, r] : ratios) {
    if (!(r >= 0.0 && r < 1.0)) return make_error("{}: expected a ratio in [0, 1), found {}", *field, r);
  }
  if (think_ratio == 0.0 && key_sparsity == 0.0 && value_sparsity == 0.0) return SlotCompression{};
  // ⌊ratio · n⌋ dropped; the epsilon keeps 0.29 · 100 from rounding down to 28.
  auto dropped = [](double r, int n) { return static_cast<int>(std::floor(r * n + 1e-9)); };
  SlotCompression c;
  c.key_channels = head_dim - dropped(think_ratio, head_dim);
  if (c.key_channels < 1) return make_error("{}: {} drops every one of {} key channels", think_field, think_ratio, head_dim);
  c.key_elements = c.key_channels - dropped(key_sparsity, c.key_channels);
  if (c.key_elements < 1) {
    return make_error("{}: {} leaves no element of a key of {} channels", keys_field, key_sparsity, c.key_channels);
  }
  c.value_elements = head_dim - dropped(value_sparsity, head_dim);
  if (c.value_elements < 1) {
    return make_error("{}: {} leaves no element of a value of {}", values_field, value_sparsity, head_dim);
  }
  return c;
}

HeadLayout head_layout(const HeadShape& shape) {
  HeadLayout l;
  const size_t B = shape.budget, hd = shape.head_dim, eb = shape.elem_bytes;
  if (B == 0) return l;
  const SlotCompression& c = shape.compression;
  const bool thin = c.thin(shape.head_dim), sk = c.sparse_keys(), sv = c.sparse_values(shape.head_dim);
  const size_t kc = c.compressed() ? c.key_channels : hd;
  size_t at = 0;
  auto part = [&](size_t bytes) {
    const size_t offset = at;
    at += (bytes + 3) / 4 * 4;
    return offset;
  };
  l.k = part(B * (sk ? c.key_elements : kc) * eb);
  l.v = part(B * (sv ? c.value_elements : hd) * eb);
  if (thin) l.k_drop = part(size_t(c.think_recent) * (hd - kc) * eb);
  if (sk) l.k_resid = part(size_t(c.dense_recent) * (kc - c.key_elements) * eb);
  if (sv) l.v_resid = part(size_t(c.dense_recent) * (hd - c.value_elements) * eb);
  l.pos = part(4 * B);
  l.score = part(4 * B);
  l.aux = part(4 * B * shape.aux_floats);
  if (thin) l.channels = part(4 * hd);
  if (shape.query_sums) l.query_sums = part(4 * hd);
  if (sk) l.k_mask = part(B * ((kc + 7) / 8));
  if (sv) l.v_mask = part(B * ((hd + 7) / 8));
  l.bytes = at;
  return l;
}

CompressedShape compressed_shape(const SlotCompression& c, int head_dim, int elem_bytes) {
  if (!c.compressed()) return CompressedShape{head_dim, head_dim, head_dim, head_dim, 1, 1, elem_bytes};
  return CompressedShape{head_dim, c.key_channels, c.key_elements, c.value_elements, c.think_recent, c.dense_recent,
                         elem_bytes};
}

HeadSlots carve_head(std::byte* base, const HeadShape& shape, int32_t* n_used) {
  KVP_CHECK(shape.elem_bytes == 4, "a host cache stores f32");
  const HeadLayout l = head_layout(shape);
  const SlotCompression& c = shape.compression;
  auto f32 = [&](size_t offset) { return reinterpret_cast<float*>(base + offset); };
  HeadSlots h{.k = f32(l.k), .v = f32(l.v), .pos = reinterpret_cast<int32_t*>(base + l.pos), .score = f32(l.score),
              .aux = shape.aux_floats > 0 ? f32(l.aux) : nullptr, .budget = shape.budget, .n_used = n_used,
              .head_dim = shape.head_dim};
  if (shape.budget == 0) return h;
  h.compression = c;
  if (c.thin(shape.head_dim)) h.k_drop = f32(l.k_drop), h.channels = reinterpret_cast<int32_t*>(base + l.channels);
  if (c.sparse_keys()) h.k_resid = f32(l.k_resid), h.k_mask = reinterpret_cast<uint8_t*>(base + l.k_mask);
  if (c.sparse_values(shape.head_dim)) {
    h.v_resid = f32(l.v_resid), h.v_mask = reinterpret_cast<uint8_t*>(base + l.v_mask);
  }
  if (shape.query_sums) h.query_sums = f32(l.query_sums), h.think_queries = c.think_queries;
  return h;
}

void reset_compression_state(const HeadSlots& head) {
  if (head.channels) std::iota(head.channels, head.channels + head.head_dim, 0);
  if (head.query_sums) std::fill_n(head.query_sums, head.head_dim, 0.0f);
}

void magnitude_mask(const float* x, int n, int keep, uint8_t* mask) {
  KVP_CHECK(n <= kMaxSlotHeadDim && keep >= 0 && keep <= n);
  int order[kMaxSlotHeadDim];
  std::iota(order, order + n, 0);
  std::partial_sort(order, order + keep, order + n, [&](int a, int b) {
    const float fa = std::fabs(x[a]), fb = std::fabs(x[b]);
    return fa != fb ? fa > fb : a < b;
  });
  std::fill_n(mask, (n + 7) / 8, uint8_t{0});
  for (int i = 0; i < keep; ++i) mask[order[i] / 8] |= uint8_t(1u << (order[i] % 8));
}

namespace {

bool bit(const uint8_t* mask, int i) { return (mask[i / 8] >> (i % 8)) & 1u; }

// x split by `mask`: the set elements to `kept` in order, the others to `rest` in order.
void split_by_mask(const float* x, int n, const uint8_t* mask, float* kept, float* rest) {
  for (int i = 0, a = 0, b = 0; i < n; ++i) {
    if (bit(mask, i)) {
      kept[a++] = x[i];
    } else {
      rest[b++] = x[i];
    }
  }
}

// One key or value of n elements into `slot`: with `kept` < n (Mustafar) its magnitude mask into
// `masks`, the kept elements packed into `store` and the others into `ring_entry`; else whole, in
// slot_attention's blocked layout.
void store_vector(const float* x, int n, int kept, int budget, int slot, float* store, uint8_t* masks,
                  float* ring_entry) {
  if (kept < n) {
    uint8_t* mask = masks + size_t(slot) * ((n + 7) / 8);
    magnitude_mask(x, n, kept, mask);
    split_by_mask(x, n, mask, store + size_t(slot) * kept, ring_entry);
  } else {
    for (int d = 0; d < n; ++d) store[slot_element(budget, n, d, slot)] = x[d];
  }
}

}  // namespace

void HeadSlots::store_compressed(int slot, const float* key, const float* value, int32_t position) const {
  const SlotCompression& c = compression;
  const int hd = head_dim;
  KVP_CHECK(hd <= kMaxSlotHeadDim && slot >= 0 && slot < budget && position >= 0);
  float thin_key[kMaxSlotHeadDim];
  const int kc = c.key_channels;
  if (c.thin(hd)) {
    float* drop = k_drop + size_t(position % c.think_recent) * (hd - kc);
    for (int i = 0; i < kc; ++i) thin_key[i] = key[channels[i]];
    for (int i = kc; i < hd; ++i) drop[i - kc] = key[channels[i]];
  } else {
    std::copy_n(key, hd, thin_key);
  }
  const int ring = position % c.dense_recent;
  store_vector(thin_key, kc, c.key_elements, budget, slot, k, k_mask, k_resid + size_t(ring) * (kc - c.key_elements));
  store_vector(value, hd, c.value_elements, budget, slot, v, v_mask, v_resid + size_t(ring) * (hd - c.value_elements));
  pos[slot] = position;
}

void think_channels(const HeadSlots& from, std::span<const int> kept, int key_channels, int32_t* channels) {
  const int hd = from.head_dim;
  KVP_CHECK(!from.compressed() && from.query_sums != nullptr, "ThinK scores channels on a dense prefill scratch");
  KVP_CHECK(key_channels >= 1 && key_channels <= hd && hd <= kMaxSlotHeadDim);
  float score[kMaxSlotHeadDim];
  for (int c = 0; c < hd; ++c) {
    float k2 = 0.0f;
    for (int j : kept) {
      const float x = from.k[slot_element(from.budget, hd, c, j)];
      k2 += x * x;
    }
    score[c] = from.query_sums[c] * k2;
  }
  std::iota(channels, channels + hd, 0);
  std::stable_sort(channels, channels + hd, [&](int32_t a, int32_t b) { return score[a] > score[b]; });
  std::sort(channels, channels + key_channels);
  std::sort(channels + key_channels, channels + hd);
}

namespace {

// The sparse parts' two operations, over the elements of a vector of n that a mask selects (or,
// inverted, leaves out: a ring entry holds those, in order): Σ x[i] · packed[e] over the selected
// i, and acc[i] += w · packed[e]. `packed` holds the selected elements in order.
//
// ScalarSparse tests each bit: the reference. VectorSparse (AVX2) expands each mask byte's packed
// elements into an 8-lane register through a permutation table — the x86 form of AVX-512's
// expand-load and of the Mustafar kernel's bitmap decode — so a key or value of 128 elements is 16
// loads, permutations and multiply-adds, with no branch on its data.
struct ScalarSparse {
  static float dot(const uint8_t* mask, int n, bool invert, const float* packed, const float* x) {
    float a = 0.0f;
    for (int i = 0, e = 0; i < n; ++i) {
      if (bit(mask, i) != invert) a += x[i] * packed[e++];
    }
    return a;
  }
  static void axpy(const uint8_t* mask, int n, bool invert, const float* packed, float w, float* acc) {
    for (int i = 0, e = 0; i < n; ++i) {
      if (bit(mask, i) != invert) acc[i] += w * packed[e++];
    }
  }
};

#ifdef __AVX2__
struct ExpandTable {
  alignas(32) int32_t perm[256][8];  // lane l takes packed element perm[m][l]
  alignas(32) int32_t lanes[256][8]; // all ones in the lanes that bit l of m selects
  alignas(32) int32_t first[9][8];   // all ones in the first c lanes: a load of c packed elements
  ExpandTable() {
    for (int m = 0; m < 256; ++m) {
      for (int l = 0, e = 0; l < 8; ++l) {
        const bool set = (m >> l) & 1;
        perm[m][l] = set ? e : 0;
        lanes[m][l] = set ? -1 : 0;
        e += set;
      }
    }
    for (int c = 0; c <= 8; ++c) {
      for (int l = 0; l < 8; ++l) first[c][l] = l < c ? -1 : 0;
    }
  }
};
const ExpandTable kExpand;

// Mask byte b of a vector of n elements, inverted when asked, and only its first n − 8b bits.
inline unsigned mask_byte(const uint8_t* mask, int b, int n, bool invert) {
  unsigned m = invert ? ~mask[b] & 0xffu : mask[b];
  const int valid = n - 8 * b;
  return valid >= 8 ? m : m & ((1u << valid) - 1);
}

// The packed elements of byte m, expanded to their lanes (zeros in the others); reads only those.
inline __m256 expand(unsigned m, const float* packed) {
  const int c = __builtin_popcount(m);
  const __m256 loaded =
      _mm256_maskload_ps(packed, _mm256_load_si256(reinterpret_cast<const __m256i*>(kExpand.first[c])));
  const __m256 spread =
      _mm256_permutevar8x32_ps(loaded, _mm256_load_si256(reinterpret_cast<const __m256i*>(kExpand.perm[m])));
  return _mm256_and_ps(spread, _mm256_castsi256_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(kExpand.lanes[m]))));
}

struct VectorSparse {
  // REQUIRES: x readable (and finite) up to n rounded up to 8.
  static float dot(const uint8_t* mask, int n, bool invert, const float* packed, const float* x) {
    __m256 a = _mm256_setzero_ps();
    for (int b = 0; 8 * b < n; ++b) {
      const unsigned m = mask_byte(mask, b, n, invert);
      a = _mm256_add_ps(a, _mm256_mul_ps(expand(m, packed), _mm256_loadu_ps(x + 8 * b)));
      packed += __builtin_popcount(m);
    }
    const __m128 h = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    const __m128 q = _mm_add_ps(h, _mm_movehl_ps(h, h));
    return _mm_cvtss_f32(_mm_add_ss(q, _mm_shuffle_ps(q, q, 1)));
  }
  // REQUIRES: acc writable up to n rounded up to 8 (the lanes past n get zeros added).
  static void axpy(const uint8_t* mask, int n, bool invert, const float* packed, float w, float* acc) {
    const __m256 wv = _mm256_set1_ps(w);
    for (int b = 0; 8 * b < n; ++b) {
      const unsigned m = mask_byte(mask, b, n, invert);
      float* at = acc + 8 * b;
      _mm256_storeu_ps(at, _mm256_add_ps(_mm256_loadu_ps(at), _mm256_mul_ps(wv, expand(m, packed))));
      packed += __builtin_popcount(m);
    }
  }
};
#else
using VectorSparse = ScalarSparse;
#endif

template <typename Sparse>
void attend_compressed(const float* q, int group, const HeadSlots& head, int32_t newest_pos, const float* k_new,
                       const float* v_new, const SlotAttentionOut& r) {
  using lanes::F16;
  constexpr int W = lanes::kWidth;
  const SlotCompression& c = head.compression;
  const int n = *head.n_used, hd = head.head_dim, B = head.budget;
  KVP_CHECK(hd <= kMaxSlotHeadDim);
  const bool thin = c.thin(hd), sk = c.sparse_keys(), sv = c.sparse_values(hd);
  const int kc = c.key_channels, ke = c.key_elements, ve = c.value_elements;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  float* s = r.scratch;  // [n + 1] logits, then exps, padded to whole packets
  const int padded = (n + 1 + W - 1) / W * W;
  // The query in the key's channel order (kept channels, then dropped) and the output's sums, with
  // zeros to a whole 8 for the sparse routines.
  float qt[kMaxSlotHeadDim + 8];
  float acc[kMaxSlotHeadDim + 8];
  for (int g = 0; g < group; ++g) {
    const float* qg = q + size_t(g) * hd;
    for (int i = 0; i < hd; ++i) qt[i] = thin ? qg[head.channels[i]] : qg[i];
    std::fill_n(qt + hd, 8, 0.0f);
    // The short forms: dense keys of kc channels 16 slots at a time, or each sparse key's elements.
    if (!sk) {
      int j0 = 0;
      for (; j0 + W <= n; j0 += W) {
        F16 a{};
        const float* block = head.k + size_t(j0) * kc;
        for (int d = 0; d < kc; ++d) a += lanes::load(block + size_t(d) * W) * qt[d];
        lanes::store(s + j0, a);
      }
      for (int j = j0; j < n; ++j) {
        float a = 0.0f;
        for (int d = 0; d < kc; ++d) a += head.k[slot_block_row(B, kc, d, j0) + (j - j0)] * qt[d];
        s[j] = a;
      }
    } else {
      const int mask_bytes = (kc + 7) / 8;
      for (int j = 0; j < n; ++j) {
        s[j] = Sparse::dot(head.k_mask + size_t(j) * mask_bytes, kc, false, head.k + size_t(j) * ke, qt);
      }
    }
    // What the newest tokens' short forms lack, from the rings.
    for (int j = 0; j < n; ++j) {
      const int32_t p = head.pos[j];
      if (thin && p > newest_pos - c.think_recent) {
        const float* drop = head.k_drop + size_t(p % c.think_recent) * (hd - kc);
        float a = 0.0f;
        for (int i = kc; i < hd; ++i) a += qt[i] * drop[i - kc];
        s[j] += a;
      }
      if (sk && p > newest_pos - c.dense_recent) {
        s[j] += Sparse::dot(head.k_mask + size_t(j) * ((kc + 7) / 8), kc, true,
                            head.k_resid + size_t(p % c.dense_recent) * (kc - ke), qt);
      }
    }
    float self = 0.0f;
    for (int d = 0; d < hd; ++d) self += qg[d] * k_new[d];
    s[n] = self;
    for (int j = n + 1; j < padded; ++j) s[j] = -INFINITY;
    float max_score = -INFINITY;
    for (int j = 0; j <= n; ++j) max_score = std::max(max_score, s[j] *= scale);
    F16 lane_sum{};
    for (int j = 0; j < padded; j += W) {
      Eigen::Map<Eigen::Array<float, W, 1>> e(s + j);
      e = (e - max_score).exp();
      lane_sum += lanes::load(s + j);
    }
    const float sum = lanes::reduce_add(lane_sum);
    if (r.softmax) r.softmax[2 * g] = max_score, r.softmax[2 * g + 1] = sum;
    // Σ exp · value over the slots: dense values 16 slots at a time, or each sparse value's elements.
    std::fill_n(acc, hd + 8, 0.0f);
    if (!sv) {
      int j0 = 0;
      for (; j0 + W <= n; j0 += W) {
        const F16 e = lanes::load(s + j0);
        const float* block = head.v + size_t(j0) * hd;
        for (int d = 0; d < hd; ++d) acc[d] += lanes::reduce_add(lanes::load(block + size_t(d) * W) * e);
      }
      for (int d = 0; j0 < n && d < hd; ++d) {
        const float* row = head.v + slot_block_row(B, hd, d, j0);
        for (int j = j0; j < n; ++j) acc[d] += row[j - j0] * s[j];
      }
    } else {
      const int mask_bytes = (hd + 7) / 8;
      for (int j = 0; j < n; ++j) {
        Sparse::axpy(head.v_mask + size_t(j) * mask_bytes, hd, false, head.v + size_t(j) * ve, s[j], acc);
      }
      for (int j = 0; j < n; ++j) {
        const int32_t p = head.pos[j];
        if (p <= newest_pos - c.dense_recent) continue;
        Sparse::axpy(head.v_mask + size_t(j) * mask_bytes, hd, true,
                     head.v_resid + size_t(p % c.dense_recent) * (hd - ve), s[j], acc);
      }
    }
    const float inv_sum = 1.0f / sum;
    float* out = r.out + size_t(g) * hd;
    for (int d = 0; d < hd; ++d) out[d] = (acc[d] + s[n] * v_new[d]) * inv_sum;
    if (r.weights) {
      for (int j = 0; j <= n; ++j) r.weights[j] = (g == 0 ? 0.0f : r.weights[j]) + s[j] * inv_sum;
    }
  }
}


}  // namespace

void compressed_slot_attention(const float* q, int group, const HeadSlots& head, int32_t newest_pos,
                               const float* k_new, const float* v_new, const SlotAttentionOut& r) {
  attend_compressed<VectorSparse>(q, group, head, newest_pos, k_new, v_new, r);
}

void compressed_slot_attention_reference(const float* q, int group, const HeadSlots& head, int32_t newest_pos,
                                         const float* k_new, const float* v_new, const SlotAttentionOut& r) {
  attend_compressed<ScalarSparse>(q, group, head, newest_pos, k_new, v_new, r);
}

}  // namespace kvp
