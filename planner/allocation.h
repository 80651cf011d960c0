// Choosing per-layer budgets under a memory limit (docs/ARCHITECTURE.md): greedy on the marginal gains of
// each layer's error curve (its lower convex hull), against uniform and PyramidKV schedules.
#pragma once

#include <string>
#include <vector>

#include "common/status.h"

namespace kvp {

// A layer's predicted error at candidate budgets (increasing), from replay.
struct ErrorCurve {
  std::vector<int32_t> budgets;
  std::vector<double> error;
};

// On-disk names frozen: greedy, uniform, pyramid (one budget per layer), greedy-head (one per layer
// and KV head).
enum class Allocation { kGreedy, kUniform, kPyramid, kGreedyHead };
Result<Allocation> parse_allocation(const std::string& name);
std::string allocation_name(Allocation a);

struct AllocationRequest {
  int n_layers = 0;
  int n_kv_heads = 0;
  int64_t total_slots = 0;   // per sequence, summed over layers and KV heads: the memory limit
  int32_t min_budget = 1;    // sinks + recent for evicting policies
  int32_t max_budget = 0;    // the longest sequence (more is never useful)
};

// Budgets whose slots never exceed the limit: per layer (the same for every head of a layer), or
// for greedy-head per layer and KV head ([layer * n_kv_heads + head]). Greedy needs one curve per
// layer, greedy-head one per layer and KV head.
Result<std::vector<int32_t>> allocate(Allocation method, const AllocationRequest& request,
                                      const std::vector<ErrorCurve>& curves);

// The lower convex hull of a curve: the points greedy moves between.
ErrorCurve lower_convex_hull(const ErrorCurve& curve);

}  // namespace kvp
