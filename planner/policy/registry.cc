// Policy names, construction and each method's published defaults.
#include <algorithm>

#include "planner/policy/policies.h"

namespace kvp {

std::vector<std::string> policy_names() {
  return {"full", "window", "h2o", "vatp", "tova", "snapkv", "knorm", "random", "kvcrush"};
}

Result<std::unique_ptr<Policy>> make_policy(std::string_view name, const PolicyParams& params) {
  if (params.sinks < 0 || params.recent < 0) {
    return make_error("policy {}: sinks and recent must be >= 0, found {} and {}", name, params.sinks,
                      params.recent);
  }
  if (name == "full") return std::unique_ptr<Policy>(new FullPolicy(params));
  if (name == "window") return std::unique_ptr<Policy>(new WindowPolicy(params));
  if (name == "h2o") return std::unique_ptr<Policy>(new H2oPolicy(params));
  if (name == "vatp") return std::unique_ptr<Policy>(new VatpPolicy(params));
  if (name == "tova") return std::unique_ptr<Policy>(new TovaPolicy(params));
  if (name == "snapkv") {
    if (params.snap_window < 1 || params.snap_kernel < 1 || params.snap_kernel % 2 == 0) {
      return make_error("policy snapkv: window >= 1 and an odd kernel >= 1 expected, found {} and {}",
                        params.snap_window, params.snap_kernel);
    }
    return std::unique_ptr<Policy>(new SnapKvPolicy(params));
  }
  if (name == "knorm") return std::unique_ptr<Policy>(new KnormPolicy(params));
  if (name == "random") return std::unique_ptr<Policy>(new RandomPolicy(params));
  if (name == "kvcrush") {
    if (const auto e = kvcrush_param_error(params)) return make_error("policy kvcrush: {}: {}", e->field, e->message);
    auto base = make_policy(params.crush_base, params);
    if (!base.ok()) return make_error("policy kvcrush: base: {}", base.error().message());
    return std::unique_ptr<Policy>(new KvCrushPolicy(params, std::move(*base)));
  }
  std::string known;
  for (const std::string& n : policy_names()) known += (known.empty() ? "" : ", ") + n;
  return make_error("policy: expected one of {}, found '{}'", known, name);
}

PolicyParams published_defaults(std::string_view name, int budget) {
  PolicyParams p;
  const int half = std::max(1, budget / 2);
  if (name == "full") {
    p.sinks = 0, p.recent = 0;
  } else if (name == "window") {
    p.sinks = 4, p.recent = std::max(1, budget - 4);     // StreamingLLM: 4 sinks + window
  } else if (name == "h2o") {
    p.sinks = 0, p.recent = half;                        // H2O: half heavy hitters, half recent
  } else if (name == "vatp") {
    p.sinks = 4, p.recent = half;                        // H2O's split, sinks pinned
  } else if (name == "tova") {
    p.sinks = 0, p.recent = 1;                           // TOVA: attention alone decides
  } else if (name == "snapkv") {
    p.sinks = 0, p.recent = std::min(p.snap_window, half);  // observation window kept
  } else if (name == "kvcrush") {
    // 4 sinks and a quarter of the budget recent: the cut to budget − period must leave room to
    // select from (the budget at least 16 with the default period 8).
    p.sinks = 4, p.recent = std::max(1, budget / 4);
  } else {                                               // knorm, random
    p.sinks = 0, p.recent = 1;
  }
  return p;
}

const std::shared_ptr<const Policy>& keep_all_policy() {
  static const std::shared_ptr<const Policy> keep_all(
      std::move(make_policy("full", PolicyParams{.sinks = 0, .recent = 0})).value());
  return keep_all;
}

}  // namespace kvp
