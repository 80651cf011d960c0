// Top-p sampling on the device, written once for nvcc and the emulation; included by
// kernels/decoder_kernels.cuh (its block reductions).

namespace kvp::KVP_KERNEL_NS {

// Sampling (executor/sampler.h's rule) of row r's next token, drawn with uniform[r] in [0, 1):
// p = softmax(logits / temperature). When top_p < 1 the tokens are walked in decreasing p (the
// lower id first on ties) and the walk is cut where its mass first reaches top_p (the nucleus);
// otherwise every token is walked in id order. The token is where the walk's cumulative mass
// passes uniform[r] × the mass of the whole walk (the last one walked if rounding never gets there).
//
// No sort: each "where the walk's mass reaches x" is a bisection over the bits of a probability
// threshold (non-negative floats order as their bits) — the mass at or above a threshold is one
// block-wide sum — and, for the tokens tied at the threshold, a bisection over ids. Every thread
// runs the same bisections on block-wide results, so the barriers inside are uniform.
// probs: workspace [rows, n]. REQUIRES temperature > 0, n < 2^24.
struct Walked {  // the tokens kept: p > t, or p == t with id <= cut
  float t;
  int cut;
  KVP_HD bool operator()(int i, float p) const { return p > t || (p == t && i <= cut); }
};

template <typename Pred>
KVP_DEVICE inline float masked_mass(const float* p, int n, Pred keep) {
  float s = 0;
  for (int i = static_cast<int>(threadIdx.x); i < n; i += static_cast<int>(blockDim.x)) {
    if (keep(i, p[i])) s += p[i];
  }
  return block_sum(s);
}

template <typename Pred>
KVP_DEVICE inline int masked_count(const float* p, int n, Pred keep) {
  float c = 0;  // exact below 2^24
  for (int i = static_cast<int>(threadIdx.x); i < n; i += static_cast<int>(blockDim.x)) {
    if (keep(i, p[i])) c += 1.0f;
  }
  return static_cast<int>(block_sum(c));
}

// The largest threshold t (one of the p of `walked`) whose walked tokens at or above it have mass
// passing `x` (reaching it when `reach`, exceeding it otherwise), or -1 when not even all of them
// (`walked_mass`) do.
KVP_DEVICE inline float threshold_for(const float* p, int n, Walked walked, float walked_mass, float p_max, float x,
                                      bool reach) {
  auto passes = [&](float mass) { return reach ? mass >= x : mass > x; };
  uint32_t lo = 0, hi = math::same_bits<uint32_t>(p_max) + 1;  // passes at lo, not at hi
  if (!passes(walked_mass)) return -1.0f;
  while (hi - lo > 1) {
    const uint32_t mid = lo + (hi - lo) / 2;
    const float t = math::same_bits<float>(mid);
    if (passes(masked_mass(p, n, [&](int i, float v) { return walked(i, v) && v >= t; }))) {
      lo = mid;
    } else {
      hi = mid;
    }
  }
  return math::same_bits<float>(lo);
}

// The id of the k-th (from 1) walked token with p == t, in id order.
KVP_DEVICE inline int kth_tied(const float* p, int n, Walked walked, float t, int k) {
  int lo = -1, hi = n - 1;  // fewer than k at or below lo, k at or below hi
  while (hi - lo > 1) {
    const int mid = lo + (hi - lo) / 2;
    if (masked_count(p, n, [&](int i, float v) { return walked(i, v) && v == t && i <= mid; }) >= k) {
      hi = mid;
    } else {
      lo = mid;
    }
  }
  return hi;
}

// The walk in decreasing p up to threshold t, continued through the tokens tied at t in id order:
// how many of those it takes until its mass (starting from `above`) passes x.
KVP_DEVICE inline int tied_taken(float above, float t, int tied, float x, bool reach) {
  float c = above;
  int k = 0;
  while (k < tied) {
    c += t;
    ++k;
    if (reach ? c >= x : x < c) break;
  }
  return k;
}

KVP_GLOBAL void sample_kernel(const float* logits, int n, float temperature, float top_p, const float* uniform,
                              float* probs, int32_t* out) {
  const int64_t base = static_cast<int64_t>(blockIdx.x) * n;
  const float* x = logits + base;
  float* p = probs + base;
  const int tid = static_cast<int>(threadIdx.x), threads = static_cast<int>(blockDim.x);
  float m = -INFINITY;
  for (int i = tid; i < n; i += threads) m = fmaxf(m, x[i]);
  m = block_max(m);
  float z = 0;
  for (int i = tid; i < n; i += threads) z += (p[i] = expf((x[i] - m) / temperature));
  z = block_sum(z);
  float p_max = 0;
  for (int i = tid; i < n; i += threads) p_max = fmaxf(p_max, p[i] /= z);
  p_max = block_max(p_max);
  const Walked everything{-1.0f, n};
  Walked walked = everything;
  const bool sorted = top_p < 1.0f;
  if (sorted) {
    // The nucleus: the highest threshold whose tokens reach top_p, and of those tied at it the
    // lowest ids the walk takes.
    const float t = threshold_for(p, n, everything, masked_mass(p, n, everything), p_max, top_p, true);
    if (t >= 0.0f) {
      const Walked above{t, -1};
      const int tied = masked_count(p, n, [&](int, float v) { return v == t; });
      const int k = tied_taken(masked_mass(p, n, above), t, tied, top_p, true);
      walked = Walked{t, k == tied ? n : kth_tied(p, n, everything, t, k)};
    }
  }
  const float walked_mass = masked_mass(p, n, walked);
  const float r = uniform[blockIdx.x] * walked_mass;
  int pick;
  if (sorted) {
    const float t = threshold_for(p, n, walked, walked_mass, p_max, r, false);
    if (t >= 0.0f) {
      const int tied = masked_count(p, n, [&](int i, float v) { return walked(i, v) && v == t; });
      const int k = tied_taken(masked_mass(p, n, [&](int i, float v) { return walked(i, v) && v > t; }), t, tied, r,
                               false);
      pick = kth_tied(p, n, walked, t, k);
    } else {  // the walk's last token: the lowest p walked, its highest id
      float low = INFINITY;
      for (int i = tid; i < n; i += threads) {
        if (walked(i, p[i])) low = fminf(low, p[i]);
      }
      low = -block_max(-low);
      float last = -1;
      for (int i = tid; i < n; i += threads) {
        if (walked(i, p[i]) && p[i] == low) last = fmaxf(last, static_cast<float>(i));
      }
      pick = static_cast<int>(block_max(last));
    }
  } else {
    // In id order: the first id whose cumulative mass passes r, else the last id.
    int lo = -1, hi = n - 1;
    if (walked_mass > r) {
      while (hi - lo > 1) {
        const int mid = lo + (hi - lo) / 2;
        if (masked_mass(p, n, [&](int i, float v) { return walked(i, v) && i <= mid; }) > r) {
          hi = mid;
        } else {
          lo = mid;
        }
      }
    }
    pick = hi;
  }
  if (tid == 0) out[blockIdx.x] = pick;
}

}  // namespace kvp::KVP_KERNEL_NS
