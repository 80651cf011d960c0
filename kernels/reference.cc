#include "kernels/reference.h"

#include <algorithm>
#include <cmath>

#include "kernels/kernel_math.h"

namespace kvp::ref {

void embedding(const std::vector<int32_t>& tokens, const std::vector<float>& table, int dim, std::vector<float>& out) {
  out.resize(tokens.size() * dim);
  for (size_t r = 0; r < tokens.size(); ++r) {
    std::copy_n(table.begin() + static_cast<int64_t>(tokens[r]) * dim, dim, out.begin() + r * dim);
  }
}

void rmsnorm(const std::vector<float>& x, const std::vector<float>& w, int n, float eps, std::vector<float>& y) {
  y.resize(x.size());
  for (size_t base = 0; base < x.size(); base += n) {
    double ss = 0;
    for (int i = 0; i < n; ++i) ss += double(x[base + i]) * x[base + i];
    const float inv = math::inv_rms(static_cast<float>(ss), n, eps);
    for (int i = 0; i < n; ++i) y[base + i] = math::rmsnorm_element(x[base + i], w[i], inv);
  }
}

void rope(std::vector<float>& x, const std::vector<int32_t>& positions, const std::vector<float>& cos_table,
          const std::vector<float>& sin_table, int n_heads, int head_dim) {
  const int half = head_dim / 2;
  for (size_t r = 0; r < positions.size(); ++r) {
    for (int h = 0; h < n_heads; ++h) {
      for (int i = 0; i < half; ++i) {
        float* v = x.data() + (r * n_heads + h) * head_dim + 2 * i;
        math::rotate_pair(v[0], v[1], cos_table[size_t(positions[r]) * half + i], sin_table[size_t(positions[r]) * half + i]);
      }
    }
  }
}

void swiglu(std::vector<float>& gate, const std::vector<float>& up) {
  for (size_t i = 0; i < gate.size(); ++i) gate[i] = math::swiglu(gate[i], up[i]);
}

std::vector<int32_t> argmax(const std::vector<float>& x, int n) {
  std::vector<int32_t> out;
  for (size_t base = 0; base < x.size(); base += n) {
    out.push_back(static_cast<int32_t>(std::max_element(x.begin() + base, x.begin() + base + n) - (x.begin() + base)));
  }
  return out;
}

SampleRef sample(const float* logits, int n, float temperature, float top_p, float uniform) {
  const double m = *std::max_element(logits, logits + n);
  std::vector<double> p(n);
  double z = 0;
  for (int i = 0; i < n; ++i) z += (p[i] = std::exp((double(logits[i]) - m) / temperature));
  for (double& v : p) v /= z;
  std::vector<int32_t> order(n);
  for (int i = 0; i < n; ++i) order[i] = i;
  double margin = INFINITY;
  int walked = n;
  if (top_p < 1.0f) {
    std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return p[a] > p[b]; });
    double before = 0;
    for (int i = 0; i < n; ++i) {
      const double after = before + p[order[i]];
      if (after >= top_p) {
        walked = i + 1;
        margin = std::min(top_p - before, after - top_p);
        break;
      }
      before = after;
    }
  }
  double mass = 0;
  for (int i = 0; i < walked; ++i) mass += p[order[i]];
  const double r = double(uniform) * mass;
  double before = 0;
  for (int i = 0; i < walked; ++i) {
    const double after = before + p[order[i]];
    // The first token has no lower boundary (r >= 0) and the last no upper one (it is also taken
    // when rounding leaves r at the very top).
    if (r < after || i == walked - 1) {
      const double low = i == 0 ? INFINITY : r - before, high = i == walked - 1 ? INFINITY : after - r;
      return {order[i], std::min({margin, low, high}) / mass};
    }
    before = after;
  }
  return {order[walked - 1], 0.0};  // not reached
}

float decode_attention(const std::vector<float>& q, HeadSlotsRef& head, const std::vector<float>& k_new,
                       const std::vector<float>& v_new, int group, int head_dim, std::vector<float>& out) {
  const int n = head.n_used;
  out.assign(size_t(group) * head_dim, 0.0f);
  float self = 0;
  for (int g = 0; g < group; ++g) {
    std::vector<double> s(n + 1);
    for (int j = 0; j <= n; ++j) {
      double dot = 0;
      for (int d = 0; d < head_dim; ++d) {
        dot += double(q[size_t(g) * head_dim + d]) * (j < n ? head.k[size_t(d) * head.capacity + j] : k_new[d]);
      }
      s[j] = dot * math::attention_scale(head_dim);
    }
    const double m = *std::max_element(s.begin(), s.end());
    double z = 0;
    for (double& e : s) z += (e = std::exp(e - m));
    for (int j = 0; j <= n; ++j) {
      const double w = s[j] / z;
      for (int d = 0; d < head_dim; ++d) {
        out[size_t(g) * head_dim + d] += static_cast<float>(w * (j < n ? head.v[size_t(d) * head.capacity + j] : v_new[d]));
      }
      if (j < n) head.score[j] += static_cast<float>(w);
      else self += static_cast<float>(w);
    }
  }
  return self;
}

void insert(HeadSlotsRef& head, const std::vector<float>& k_new, const std::vector<float>& v_new, int slot,
            int head_dim) {
  float l1 = 0;
  for (int d = 0; d < head_dim; ++d) {
    head.k[size_t(d) * head.capacity + slot] = k_new[d];
    head.v[size_t(d) * head.capacity + slot] = v_new[d];
    l1 += std::fabs(v_new[d]);
  }
  head.value_l1[slot] = l1;
}

float half_bits_to_float(uint32_t h) { return math::half_bits_to_float(h); }

void q8_0_gemv(const std::vector<uint8_t>& w, int out, int in, const std::vector<float>& x, int rows,
               std::vector<double>& y) {
  y.assign(static_cast<size_t>(rows) * out, 0.0);
  const int blocks = in / 32;
  for (int r = 0; r < rows; ++r) {
    for (int o = 0; o < out; ++o) {
      double s = 0;
      for (int b = 0; b < blocks; ++b) {
        const uint8_t* blk = w.data() + (static_cast<size_t>(o) * blocks + b) * 34;
        const double d = math::half_bits_to_float(blk[0] | blk[1] << 8);
        for (int i = 0; i < 32; ++i) s += d * static_cast<int8_t>(blk[2 + i]) * x[static_cast<size_t>(r) * in + b * 32 + i];
      }
      y[static_cast<size_t>(r) * out + o] = s;
    }
  }
}

}  // namespace kvp::ref
