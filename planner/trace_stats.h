// What a trace says about its model's attention, per layer and KV head: the statistics that
// motivate value-aware pruning (value norms, attention sinks, attention entropy).
#pragma once

#include <functional>
#include <vector>

#include "traces/trace.h"

namespace kvp {

struct HeadStats {
  // L1 norms of the value vectors over every recorded position.
  double vnorm_mean = 0, vnorm_p5 = 0, vnorm_p50 = 0, vnorm_p95 = 0, vnorm_max = 0;
  double vnorm_first = 0;        // mean L1 norm at position 0
  double vnorm_first4 = 0;       // mean L1 norm at positions 0..3
  double first_token_mass = 0;   // mean attention weight on position 0 (queries t >= 1)
  double entropy = 0;            // mean attention entropy of queries t >= 1, nats
  double entropy_normalised = 0; // the same divided by log(t + 1): 1 = uniform
};

struct TraceStats {
  int n_sequences = 0;
  int64_t n_queries = 0;                 // per query head
  std::vector<std::vector<HeadStats>> heads;  // [n_layers][n_kv_heads]
};

// Attention is recomputed from the recorded q and k (causal, full softmax) at the recorded
// queries; query heads of a group are averaged into their KV head. Layers not recorded keep
// zeroed statistics. Uses up to `threads` threads over sequences.
TraceStats compute_trace_stats(const Trace& trace, int threads,
                               const std::function<void(int sequences_done)>& progress = {});

// Causal attention weights of query head `head_idx` at query position t over keys 0..t:
// probs[j] for j <= t. q: [Tq, n_heads, head_dim] with position t's query in row `q_row` (t when
// -1), k: [T, n_kv_heads, head_dim].
void causal_attention_row(const float* q, const float* k, int n_heads, int n_kv_heads,
                          int head_dim, int head_idx, int t, std::vector<double>* probs, int q_row = -1);

}  // namespace kvp
