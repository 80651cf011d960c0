#include "planner/policy/delta.h"

#include <algorithm>

#include <fmt/format.h>

#include "planner/policy/policy.h"

namespace kvp {

std::optional<ParamError> delta_param_error(const DeltaParams& d, int n_layers) {
  if (!d.on()) return std::nullopt;
  if (static_cast<int>(d.layers.size()) != n_layers) {
    return ParamError{"layers", fmt::format("expected one role per layer ({} letters of f, s, p), found {} in '{}'",
                                            n_layers, d.layers.size(), d.layers)};
  }
  bool selected = false;
  for (size_t l = 0; l < d.layers.size(); ++l) {
    const char r = d.layers[l];
    if (r != kDeltaFull && r != kDeltaSelect && r != kDeltaSparse) {
      return ParamError{"layers", fmt::format("expected f (full), s (select) or p (sparse) per layer, found '{}' at "
                                              "layer {} of '{}'", r, l, d.layers)};
    }
    if (r == kDeltaSparse && !selected) {
      return ParamError{"layers", fmt::format("layer {} is sparse (p) before any selection layer (s) in '{}'", l,
                                              d.layers)};
    }
    selected |= r == kDeltaSelect;
  }
  if (d.pages < 1) return ParamError{"pages", fmt::format("expected at least 1 page, found {}", d.pages)};
  if (d.page_size < 1 || d.page_size > 4096) {
    return ParamError{"page_size", fmt::format("expected 1..4096 positions, found {}", d.page_size)};
  }
  if (d.last < 0) return ParamError{"last", fmt::format("expected 0 or more pages, found {}", d.last)};
  return std::nullopt;
}

Status check_delta_flags(const DeltaParams& d, int n_layers, bool compressed) {
  if (const auto e = delta_param_error(d, n_layers)) {
    return make_error("--delta-{}: {}", e->field == "page_size" ? "page-size" : e->field, e->message);
  }
  if (d.on() && compressed) {
    return make_error("--delta-layers and --think/--mustafar: DELTA's sparse layers attend dense caches; give one");
  }
  return ok_status();
}

std::string delta_detail(const DeltaParams& d) {
  if (!d.on()) return "";
  return fmt::format("delta_layers={} delta_pages={} delta_page_size={} delta_last={}", d.layers, d.pages, d.page_size,
                     d.last);
}

void choose_pages(const DeltaParams& d, int sinks, int32_t newest_pos, DeltaRow& row) {
  const int n_pages = newest_pos / d.page_size + 1;
  row.chosen.assign(n_pages, 0);
  row.page_score.assign(n_pages, 0.0f);
  const int32_t n_pos = std::min<int32_t>(newest_pos, static_cast<int32_t>(row.pos_weight.size()));
  for (int32_t p = 0; p < n_pos; ++p) row.page_score[p / d.page_size] += row.pos_weight[p];
  // Forced: the sinks' pages (page 0 at least) and the last L pages.
  const int sink_pages = std::max(1, (sinks + d.page_size - 1) / d.page_size);
  for (int p = 0; p < std::min(sink_pages, n_pages); ++p) row.chosen[p] = 1;
  for (int p = std::max(0, n_pages - d.last); p < n_pages; ++p) row.chosen[p] = 1;
  row.order.clear();
  for (int p = 0; p < n_pages; ++p) {
    if (!row.chosen[p]) row.order.push_back(p);
  }
  const size_t k = std::min<size_t>(size_t(d.pages), row.order.size());
  // The highest page scores, the newer page on ties.
  std::partial_sort(row.order.begin(), row.order.begin() + k, row.order.end(), [&](int a, int b) {
    return row.page_score[a] > row.page_score[b] || (row.page_score[a] == row.page_score[b] && a > b);
  });
  for (size_t i = 0; i < k; ++i) row.chosen[row.order[i]] = 1;
  row.pos_chosen.resize(size_t(newest_pos));
  for (int32_t p = 0; p < newest_pos; ++p) row.pos_chosen[size_t(p)] = row.chosen[p / d.page_size];
}

int64_t delta_sparse_keys(const DeltaParams& d, int sinks, int64_t slots, int64_t context) {
  const int64_t n_pages = (context + d.page_size - 1) / d.page_size;
  const int64_t sink_pages = std::max<int64_t>(1, (sinks + d.page_size - 1) / d.page_size);
  const int64_t pages = std::min(n_pages, d.pages + d.last + sink_pages);
  // The chosen pages' share of the positions, of the tokens the head holds (all of them for a
  // full cache; a pruned cache's kept tokens taken as spread evenly over the pages).
  const double share = std::min(1.0, double(pages * d.page_size) / double(std::max<int64_t>(1, context)));
  return std::min(slots, static_cast<int64_t>(std::llround(share * double(slots)))) + 1;
}

}  // namespace kvp
