// DELTA (2025): layers with roles. Full layers attend every cached token; a selection layer
// attends every cached token too and, at each decode step, chooses the pages (page_size
// consecutive positions) the sparse layers after it attend: the `pages` highest by page score
// (Σ over the page's cached tokens of the largest weight any of the layer's query heads gives the
// token), plus the last `last` pages and the pages of the sinks. The cache itself is untouched
// (DELTA composes with any token policy and selects among the tokens it keeps): the saving is
// bytes read and attention work per step, not memory.
//
// Choices where the paper is silent: DELTA acts on decode steps only (the prompt is attended in
// full at every layer); the sinks are the token policy's (page 0 at least); page-score ties go to
// the newer page; a sparse layer attends the new token itself always. Its unattended tokens get
// weight 0 in the scores the token policy accumulates.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "common/status.h"

namespace kvp {

// A setting at fault: its field and what is wrong with it. make_policy, plan.yaml and the flags each
// name the field their way.
struct ParamError {
  std::string field, message;
};

inline constexpr char kDeltaFull = 'f', kDeltaSelect = 's', kDeltaSparse = 'p';

struct DeltaParams {
  std::string layers;  // one role per layer (f, s, p); empty: DELTA off
  int pages = 64;      // K: the top-scored pages chosen per step (the paper's 64 pages of 16 = 1,024 tokens)
  int page_size = 16;  // positions per page
  int last = 8;        // L: the newest pages always attended

  bool on() const { return !layers.empty(); }
  char role(int layer) const { return on() ? layers[size_t(layer)] : kDeltaFull; }
  bool operator==(const DeltaParams&) const = default;
};

// The field at fault ("layers", "pages", "page_size", "last") and what is wrong, or nothing: roles
// one per layer of f, s and p, no sparse layer before a selection layer, pages and page_size at
// least 1, last at least 0.
std::optional<ParamError> delta_param_error(const DeltaParams& d, int n_layers);

// The same checked as command-line flags: the error names the flag (--delta-layers, --delta-pages,
// --delta-page-size, --delta-last); with `compressed` (ThinK or Mustafar given too) roles are refused.
Status check_delta_flags(const DeltaParams& d, int n_layers, bool compressed = false);

// "delta_layers=fsppp delta_pages=8 delta_page_size=16 delta_last=2" (a measured run's detail string,
// reports); "" when off.
std::string delta_detail(const DeltaParams& d);

// One decode row's DELTA state across the layers of a step: the pages the latest selection layer
// chose, read by the sparse layers after it.
struct DeltaRow {
  std::vector<uint8_t> chosen;      // [pages of the positions so far] 1: attended by the sparse layers
  std::vector<uint8_t> pos_chosen;  // [positions so far] the same per position (on a chosen page)
  // The selection's working arrays (kept to avoid reallocation).
  std::vector<float> pos_weight, page_score;
  std::vector<int> order;
};

// The selection at a step whose newest position is `newest_pos`: row.pos_weight[p] holds the
// largest weight a query head gave cached position p (0 where none, newest_pos excluded); writes
// row.chosen for pages 0 .. newest_pos / page_size (and row.pos_chosen for positions 0 ..
// newest_pos − 1). Page scores are summed in position order.
void choose_pages(const DeltaParams& d, int sinks, int32_t newest_pos, DeltaRow& row);

// Whether position `pos` lies on a chosen page of `row`.
inline bool page_chosen(const DeltaRow& row, int32_t pos) {
  return size_t(pos) < row.pos_chosen.size() && row.pos_chosen[size_t(pos)] != 0;
}

// Keys a sparse layer attends per KV head and step (the new token included) when the head holds
// `slots` tokens of a context of `context` positions: the share of the positions on pages K + L +
// the sinks' pages, of the slots (exact for a full cache; for a pruned one, its kept tokens taken
// as spread evenly). What the capacity model charges a sparse layer.
int64_t delta_sparse_keys(const DeltaParams& d, int sinks, int64_t slots, int64_t context);

}  // namespace kvp
