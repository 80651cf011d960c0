#include "planner/trace_stats.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <mutex>
#include <thread>

namespace kvp {
namespace {

struct Accumulator {
  std::vector<float> vnorms;
  double vnorm_first_sum = 0, vnorm_first4_sum = 0;
  int64_t n_first = 0, n_first4 = 0;
  double mass_sum = 0, entropy_sum = 0, entropy_norm_sum = 0;
  int64_t n_queries = 0;

  void merge(const Accumulator& o) {
    vnorms.insert(vnorms.end(), o.vnorms.begin(), o.vnorms.end());
    vnorm_first_sum += o.vnorm_first_sum;
    vnorm_first4_sum += o.vnorm_first4_sum;
    n_first += o.n_first;
    n_first4 += o.n_first4;
    mass_sum += o.mass_sum;
    entropy_sum += o.entropy_sum;
    entropy_norm_sum += o.entropy_norm_sum;
    n_queries += o.n_queries;
  }
};

double percentile(std::vector<float>& sorted, double p) {
  if (sorted.empty()) return 0;
  const size_t i = std::min(sorted.size() - 1, static_cast<size_t>(p * (sorted.size() - 1) + 0.5));
  return sorted[i];
}

}  // namespace

void causal_attention_row(const float* q, const float* k, int n_heads, int n_kv_heads,
                          int head_dim, int head_idx, int t, std::vector<double>* probs, int q_row) {
  const int kv_head_idx = head_idx / (n_heads / n_kv_heads);
  const float* qv = q + (size_t(q_row < 0 ? t : q_row) * n_heads + head_idx) * head_dim;
  const double scale = 1.0 / std::sqrt(static_cast<double>(head_dim));
  probs->resize(t + 1);
  double mx = -INFINITY;
  for (int j = 0; j <= t; ++j) {
    const float* kv = k + (size_t(j) * n_kv_heads + kv_head_idx) * head_dim;
    double dot = 0;
    for (int d = 0; d < head_dim; ++d) dot += double(qv[d]) * kv[d];
    (*probs)[j] = dot * scale;
    mx = std::max(mx, (*probs)[j]);
  }
  double sum = 0;
  for (double& p : *probs) sum += (p = std::exp(p - mx));
  for (double& p : *probs) p /= sum;
}

TraceStats compute_trace_stats(const Trace& trace, int threads,
                               const std::function<void(int)>& progress) {
  const TraceModelShape& m = trace.model();
  const int L = m.n_layers, KVH = m.n_kv_heads, H = m.n_heads, hd = m.head_dim;
  const int group = H / KVH;
  std::vector<Accumulator> total(size_t(L) * KVH);
  std::mutex mu;
  std::atomic<int> next{0}, done{0};

  auto work = [&] {
    std::vector<double> probs;
    TraceLayer layer;
    for (int s; (s = next++) < trace.n_sequences();) {
      std::vector<Accumulator> local(size_t(L) * KVH);
      const int T = trace.length(s);
      const std::vector<int32_t> q_rows = trace.query_rows(s);
      for (int l : trace.layers()) {
        trace.read_layer(s, l, &layer);
        for (int kvh = 0; kvh < KVH; ++kvh) {
          Accumulator& a = local[size_t(l) * KVH + kvh];
          for (int t = 0; t < T; ++t) {
            const float* v = layer.v.data() + (size_t(t) * KVH + kvh) * hd;
            double l1 = 0;
            for (int d = 0; d < hd; ++d) l1 += std::abs(v[d]);
            a.vnorms.push_back(static_cast<float>(l1));
            if (t == 0) { a.vnorm_first_sum += l1; ++a.n_first; }
            if (t < 4) { a.vnorm_first4_sum += l1; ++a.n_first4; }
          }
          for (int g = 0; g < group; ++g) {
            for (int t = 1; t < T; ++t) {
              if (q_rows[t] < 0) continue;
              causal_attention_row(layer.q.data(), layer.k.data(), H, KVH, hd, kvh * group + g, t, &probs, q_rows[t]);
              double h = 0;
              for (double p : probs) if (p > 0) h -= p * std::log(p);
              a.mass_sum += probs[0];
              a.entropy_sum += h;
              a.entropy_norm_sum += h / std::log(double(t + 1));
              ++a.n_queries;
            }
          }
        }
      }
      std::lock_guard<std::mutex> lock(mu);
      for (size_t i = 0; i < total.size(); ++i) total[i].merge(local[i]);
      if (progress) progress(++done);
    }
  };
  std::vector<std::thread> pool;
  for (int i = 1; i < std::max(1, threads); ++i) pool.emplace_back(work);
  work();
  for (auto& t : pool) t.join();

  TraceStats stats;
  stats.n_sequences = trace.n_sequences();
  stats.heads.assign(L, std::vector<HeadStats>(KVH));
  for (int l = 0; l < L; ++l) {
    for (int kvh = 0; kvh < KVH; ++kvh) {
      Accumulator& a = total[size_t(l) * KVH + kvh];
      HeadStats& h = stats.heads[l][kvh];
      std::sort(a.vnorms.begin(), a.vnorms.end());
      double sum = 0;
      for (float x : a.vnorms) sum += x;
      h.vnorm_mean = a.vnorms.empty() ? 0 : sum / a.vnorms.size();
      h.vnorm_p5 = percentile(a.vnorms, 0.05);
      h.vnorm_p50 = percentile(a.vnorms, 0.50);
      h.vnorm_p95 = percentile(a.vnorms, 0.95);
      h.vnorm_max = a.vnorms.empty() ? 0 : a.vnorms.back();
      h.vnorm_first = a.n_first ? a.vnorm_first_sum / a.n_first : 0;
      h.vnorm_first4 = a.n_first4 ? a.vnorm_first4_sum / a.n_first4 : 0;
      h.first_token_mass = a.n_queries ? a.mass_sum / a.n_queries : 0;
      h.entropy = a.n_queries ? a.entropy_sum / a.n_queries : 0;
      h.entropy_normalised = a.n_queries ? a.entropy_norm_sum / a.n_queries : 0;
      if (a.n_queries > 0) stats.n_queries = a.n_queries / group;
    }
  }
  return stats;
}

}  // namespace kvp
