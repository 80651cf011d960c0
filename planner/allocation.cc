#include "planner/allocation.h"

#include <algorithm>
#include <cmath>

namespace kvp {

Result<Allocation> parse_allocation(const std::string& name) {
  if (name == "greedy") return Allocation::kGreedy;
  if (name == "uniform") return Allocation::kUniform;
  if (name == "pyramid") return Allocation::kPyramid;
  if (name == "greedy-head") return Allocation::kGreedyHead;
  return make_error("--allocation: expected greedy, greedy-head, uniform or pyramid, found '{}'", name);
}

std::string allocation_name(Allocation a) {
  switch (a) {
    case Allocation::kGreedy: return "greedy";
    case Allocation::kUniform: return "uniform";
    case Allocation::kPyramid: return "pyramid";
    case Allocation::kGreedyHead: return "greedy-head";
  }
  return "?";
}

ErrorCurve lower_convex_hull(const ErrorCurve& c) {
  ErrorCurve hull;
  for (size_t i = 0; i < c.budgets.size(); ++i) {
    // Pop while the last point lies on or above the segment from its predecessor to point i.
    while (hull.budgets.size() >= 2) {
      const size_t n = hull.budgets.size();
      const double x0 = hull.budgets[n - 2], y0 = hull.error[n - 2];
      const double x1 = hull.budgets[n - 1], y1 = hull.error[n - 1];
      const double x2 = c.budgets[i], y2 = c.error[i];
      if ((y1 - y0) * (x2 - x0) >= (y2 - y0) * (x1 - x0)) {
        hull.budgets.pop_back();
        hull.error.pop_back();
      } else {
        break;
      }
    }
    hull.budgets.push_back(c.budgets[i]);
    hull.error.push_back(c.error[i]);
  }
  return hull;
}

Result<std::vector<int32_t>> allocate(Allocation method, const AllocationRequest& r,
                                      const std::vector<ErrorCurve>& curves) {
  const int64_t heads = int64_t{r.n_layers} * r.n_kv_heads;
  const int64_t floor_slots = heads * r.min_budget;
  if (r.total_slots < floor_slots) {
    return make_error("memory limit: {} slots per sequence, but {} layers x {} KV heads need at least {} "
                      "(sinks + recent = {} each)", r.total_slots, r.n_layers, r.n_kv_heads, floor_slots, r.min_budget);
  }
  const int32_t avg = static_cast<int32_t>(std::min<int64_t>(r.total_slots / heads, r.max_budget));
  std::vector<int32_t> budgets(r.n_layers, avg);
  if (method == Allocation::kUniform) return budgets;

  if (method == Allocation::kPyramid) {
    // PyramidKV: budgets fall linearly with depth, from 1.5x to 0.5x the average.
    for (int l = 0; l < r.n_layers; ++l) {
      const double frac = r.n_layers == 1 ? 0.0 : double(l) / (r.n_layers - 1);
      budgets[l] = std::clamp<int32_t>(static_cast<int32_t>(std::lround(avg * (1.5 - frac))), r.min_budget, r.max_budget);
    }
    // Trim from the deepest layers first, then top up the shallowest, to land within the limit.
    int64_t used = 0;
    for (int32_t b : budgets) used += b * int64_t{r.n_kv_heads};
    for (int l = r.n_layers - 1; used > r.total_slots; l = l == 0 ? r.n_layers - 1 : l - 1) {
      if (budgets[l] > r.min_budget) --budgets[l], used -= r.n_kv_heads;
    }
    return budgets;
  }

  // Greedy over units (layers, or layers' KV heads) of `unit_heads` heads each: every unit starts at
  // its hull's first point; repeatedly take the move with the largest error drop per slot that
  // still fits.
  const bool per_head = method == Allocation::kGreedyHead;
  const int units = per_head ? r.n_layers * r.n_kv_heads : r.n_layers;
  const int64_t unit_heads = per_head ? 1 : r.n_kv_heads;
  if (static_cast<int>(curves.size()) != units) {
    return make_error("{} allocation: {} error curves for {} {}", allocation_name(method), curves.size(), units,
                      per_head ? "layers x KV heads" : "layers");
  }
  budgets.assign(units, avg);
  std::vector<ErrorCurve> hulls;
  std::vector<size_t> at(units, 0);
  int64_t used = 0;
  for (int u = 0; u < units; ++u) {
    hulls.push_back(lower_convex_hull(curves[u]));
    KVP_CHECK(!hulls[u].budgets.empty());
    budgets[u] = hulls[u].budgets[0];
    used += budgets[u] * unit_heads;
  }
  if (used > r.total_slots) {
    return make_error("memory limit: {} slots per sequence is below the smallest replayed budgets ({} slots)",
                      r.total_slots, used);
  }
  for (;;) {
    int best = -1;
    double best_gain = 0;
    for (int u = 0; u < units; ++u) {
      if (at[u] + 1 >= hulls[u].budgets.size()) continue;
      const int64_t extra = (hulls[u].budgets[at[u] + 1] - hulls[u].budgets[at[u]]) * unit_heads;
      if (used + extra > r.total_slots) continue;
      const double gain = (hulls[u].error[at[u]] - hulls[u].error[at[u] + 1]) / extra;
      if (gain > best_gain) best = u, best_gain = gain;
    }
    if (best < 0) break;
    used += (hulls[best].budgets[at[best] + 1] - hulls[best].budgets[at[best]]) * unit_heads;
    budgets[best] = hulls[best].budgets[++at[best]];
  }
  return budgets;
}

}  // namespace kvp
