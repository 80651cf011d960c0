#include "tools/kvplan/plan_flags.h"

#include <charconv>
#include <cstdlib>
#include <cmath>
#include <cstdio>
#include <sstream>
#include <thread>

namespace kvp::cli {

void PlanFlags::add_to(CLI::App* app, bool with_policy) {
  app->add_option("--plan", plan_path, "Plan file (plan.yaml) to enforce");
  if (with_policy) {
    app->add_option("--policy", policy,
                    "Instead of --plan: a uniform plan with this policy (full, window, h2o, vatp, "
                    "tova, snapkv, knorm, random, kvcrush)");
    app->add_option("--budget", budget, "Slots per layer and KV head for --policy");
  }
  app->add_option("--sinks", sinks, "First positions never evicted (default: the policy's published default)");
  app->add_option("--recent", recent,
                  "Newest positions never evicted, in tokens or as a share of the budget like 25% "
                  "(default: the policy's published default)");
  app->add_option("--vatp-base", vatp_base, "VATP's attention base: h2o (accumulated) or mean (default h2o)");
  app->add_option("--kvcrush-base", crush_base,
                  "kvcrush: the importance policy whose scores it keeps and groups (default vatp)");
  app->add_option("--kvcrush-ratio", crush_ratio,
                  "kvcrush: the share of the selectable slots that hold representatives of the evicted, in [0, 1) "
                  "(default 0.25)");
  app->add_option("--kvcrush-anchor", crush_anchor,
                  "kvcrush: the head-behaviour anchor: mean (majority bit per head), random or alternating (default mean)");
  app->add_option("--kvcrush-period", crush_period,
                  "kvcrush: decode steps between selections; each cuts the cache to budget minus this (default 8)");
  add_delta_flags(app, &delta);
  app->add_option("--policy-seed", seed, "Seed of the random policy and of kvcrush's random anchor (default 0)");
  app->add_option("--kv-dtype", kv_dtype, "KV element type: f32 (the CPU backend stores f32)");
  compress.add_to(app);
}

void add_delta_flags(CLI::App* app, DeltaParams* delta) {
  app->add_option("--delta-layers", delta->layers,
                  "DELTA: one role per layer, f (full), s (select: attends in full and chooses the pages) or p "
                  "(sparse: attends only the pages the selection layer before it chose), e.g. fsppp; with any "
                  "--policy (default: off)");
  app->add_option("--delta-pages", delta->pages, "DELTA: top-scored pages chosen per decode step (default 64)");
  app->add_option("--delta-page-size", delta->page_size, "DELTA: positions per page (default 16)");
  app->add_option("--delta-last", delta->last, "DELTA: the newest pages always attended (default 8)");
}

void CompressionFlags::add_to(CLI::App* app) {
  app->add_option("--think", think,
                  "ThinK: drop this share of each head's key channels (query-driven, chosen at the prompt's cut) "
                  "from keys older than --think-recent; the paper's default is 0.4");
  app->add_option("--think-window", think_window, "ThinK: the last prompt queries that score the channels (default 32)");
  app->add_option("--think-recent", think_recent, "ThinK: the newest keys kept at full width (default 32)");
  app->add_option("--mustafar", mustafar,
                  "Mustafar: keep only the largest-magnitude elements of each key and value, dropping this share "
                  "(the paper's default 0.5), outside a dense window of --mustafar-recent tokens");
  app->add_option("--mustafar-k", mustafar_k, "Mustafar: the share dropped of each key alone (overrides --mustafar)");
  app->add_option("--mustafar-v", mustafar_v, "Mustafar: the share dropped of each value alone (overrides --mustafar)");
  app->add_option("--mustafar-recent", mustafar_recent,
                  "Mustafar: the newest keys and values kept dense (default 32; the paper's 128 is for 4K+ contexts)");
}

Result<PlanCompression> CompressionFlags::compression(int head_dim) const {
  PlanCompression c;
  if (think) c.think_ratio = {*think};
  if (mustafar || mustafar_k || mustafar_v) {
    c.key_sparsity = {mustafar_k.value_or(mustafar.value_or(0.0))};
    c.value_sparsity = {mustafar_v.value_or(mustafar.value_or(0.0))};
  }
  if (think_window < 1) return make_error("--think-window: expected at least 1 query, found {}", think_window);
  if (think_recent < 1) return make_error("--think-recent: expected at least 1 token (the new one), found {}", think_recent);
  if (mustafar_recent < 1) {
    return make_error("--mustafar-recent: expected at least 1 token (the new one), found {}", mustafar_recent);
  }
  c.think_window = think_window, c.think_recent = think_recent, c.dense_recent = mustafar_recent;
  auto layers = slot_compression(head_dim, think.value_or(0.0), c.mustafar() ? c.key_sparsity[0] : 0.0,
                                 c.mustafar() ? c.value_sparsity[0] : 0.0, "--think",
                                 mustafar_k ? "--mustafar-k" : "--mustafar", mustafar_v ? "--mustafar-v" : "--mustafar");
  if (!layers.ok()) return layers.error();
  return c;
}

Result<PolicyParams> PlanFlags::params_for(const std::string& name, int budget) const {
  PolicyParams p = published_defaults(name, budget);
  if (sinks) p.sinks = *sinks;
  if (!recent.empty()) {
    char* end = nullptr;
    const double value = std::strtod(recent.c_str(), &end);
    const bool percent = end && *end == '%' && end[1] == '\0';
    if (end == recent.c_str() || (!percent && *end != '\0') || value < 0) {
      return make_error("--recent: expected a token count or a percentage like 25%, found '{}'", recent);
    }
    p.recent = percent ? static_cast<int>(std::lround(value / 100.0 * budget)) : static_cast<int>(value);
  }
  KVP_ASSIGN_OR_RETURN(p.vatp_base, parse_vatp_base(vatp_base));
  p.seed = seed;
  p.delta = delta;
  if (name == "kvcrush") {
    p.crush_base = crush_base, p.crush_ratio = crush_ratio, p.crush_period = crush_period;
    if (const auto e = kvcrush_param_error(p)) return make_error("--kvcrush-{}: {}", e->field, e->message);
    auto anchor = parse_crush_anchor(crush_anchor);
    if (!anchor.ok()) return make_error("--kvcrush-anchor: expected mean, random or alternating, found '{}'", crush_anchor);
    p.crush_anchor = *anchor;
  }
  return p;
}

Result<Plan> PlanFlags::uniform(const PlanModel& model, const std::string& name, int budget) const {
  KVP_ASSIGN_OR_RETURN(PolicyParams params, params_for(name, budget));
  KVP_ASSIGN_OR_RETURN(KvDtype dtype, parse_kv_dtype(kv_dtype));
  if (dtype != KvDtype::kF32) return make_error("--kv-dtype: the CPU backend stores f32, found '{}'", kv_dtype);
  KVP_ASSIGN_OR_RETURN(PlanCompression compression, this->compression(model.head_dim));
  KVP_ASSIGN_OR_RETURN(Plan plan, uniform_plan(model, name, params, budget, dtype, compression));
  plan.provenance["source"] = "uniform plan from flags";
  return plan;
}

Result<Plan> PlanFlags::resolve(const PlanModel& model, const std::string& model_path) const {
  if (!plan_path.empty() && !policy.empty()) {
    return make_error("--plan and --policy: give one (a plan file, or a uniform plan from flags)");
  }
  if (!plan_path.empty()) {
    if (compress.given()) {
      return make_error("--plan and --think/--mustafar: a plan file carries its own key_channels and sparsity");
    }
    KVP_ASSIGN_OR_RETURN(Plan plan, Plan::load(plan_path));
    KVP_RETURN_IF_ERROR(plan.check_model(model, plan_path, model_path));
    if (plan.kv_dtype != KvDtype::kF32) {
      return make_error("{}: kv_dtype: the CPU backend stores f32, the plan asks for {}", plan_path,
                        kv_dtype_name(plan.kv_dtype));
    }
    return plan;
  }
  if (policy.empty()) return make_error("--plan or --policy: one is needed");
  if (budget <= 0) return make_error("--budget: expected the slots per layer and head for --policy, found {}", budget);
  return uniform(model, policy, budget);
}

PlanModel plan_model(const ModelConfig& c, const std::string& fingerprint) {
  return PlanModel{.fingerprint = fingerprint, .dim = c.dim, .n_layers = c.n_layers, .n_heads = c.n_heads,
                   .n_kv_heads = c.n_kv_heads, .head_dim = c.head_dim(), .vocab_size = c.vocab_size,
                   .seq_len = c.seq_len};
}

std::vector<std::string> split_list(const std::string& text) {
  std::vector<std::string> out;
  std::stringstream in(text);
  for (std::string item; std::getline(in, item, ',');) {
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

std::string policy_budget_table(const std::vector<std::string>& policies, const std::vector<int>& budgets,
                                const std::function<std::string(const std::string&, int)>& cell) {
  std::string md = "| policy |";
  for (int b : budgets) md += fmt::format(" {} |", b);
  md += "\n|---|";
  for (size_t i = 0; i < budgets.size(); ++i) md += "---|";
  md += "\n";
  for (const std::string& p : policies) {
    md += "| " + p + " |";
    for (int b : budgets) md += fmt::format(" {} |", cell(p, b));
    md += "\n";
  }
  return md;
}

int default_threads() { return static_cast<int>(std::max(1u, std::thread::hardware_concurrency())); }

Result<std::vector<int>> parse_int_list(const std::string& flag, const std::string& text) {
  std::vector<int> out;
  for (const std::string& item : split_list(text)) {
    char* end = nullptr;
    const long v = std::strtol(item.c_str(), &end, 10);
    if (*end != '\0' || v <= 0 || v > (1 << 22)) {
      return make_error("{}: expected positive integers separated by commas, found '{}'", flag, item);
    }
    out.push_back(static_cast<int>(v));
  }
  if (out.empty()) return make_error("{}: expected a comma-separated list, found '{}'", flag, text);
  return out;
}

Result<std::vector<int>> parse_layer_list(const std::string& flag, const std::string& text) {
  constexpr int kMaxLayer = 4095;  // a trace manifest's n_layers is at most 4096
  std::vector<int> layers;
  for (const std::string& item : split_list(text)) {
    // An index, or two joined by '-', each of digits only and at most kMaxLayer (so a range cannot
    // ask for billions of layers before the model's count is checked).
    auto index = [&](std::string_view digits, int* out) {
      const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), *out);
      return !digits.empty() && ec == std::errc() && end == digits.data() + digits.size() &&
             digits.find_first_not_of("0123456789") == std::string_view::npos && *out <= kMaxLayer;
    };
    const size_t dash = item.find('-');
    int lo = 0, hi = 0;
    const std::string_view view(item);
    const bool ok = dash == std::string::npos ? index(view, &lo) && index(view, &hi)
                                              : index(view.substr(0, dash), &lo) && index(view.substr(dash + 1), &hi);
    if (!ok || lo > hi) {
      return make_error("{}: expected layer indices and ranges such as 0,4,8 or 0-3, found '{}'", flag, item);
    }
    for (int l = lo; l <= hi; ++l) {
      if (!layers.empty() && l <= layers.back()) {
        return make_error("{}: expected increasing layer indices, found {} after {}", flag, l, layers.back());
      }
      layers.push_back(l);
    }
  }
  if (layers.empty()) return make_error("{}: expected a comma-separated list, found '{}'", flag, text);
  return layers;
}

void note_trace_bounds(const Trace& trace, const std::string& trace_path) {
  const int L = trace.model().n_layers;
  std::vector<std::string> parts;
  if (static_cast<int>(trace.layers().size()) < L) {
    parts.push_back(fmt::format("records layers {} of {} (the others' errors are interpolated)",
                                fmt::join(trace.layers(), ","), L));
  }
  if (trace.query_stride() > 1) {
    parts.push_back(fmt::format("keeps every {}th query (attention measured and scored there only)",
                                trace.query_stride()));
  }
  if (!parts.empty()) {
    std::fprintf(stderr, "note: trace %s %s\n", trace_path.c_str(), fmt::format("{}", fmt::join(parts, " and ")).c_str());
  }
}

Result<std::optional<Calibration>> load_calibration_for(const std::string& path, const Trace& trace,
                                                        const std::string& trace_path) {
  if (path.empty()) return std::optional<Calibration>();
  KVP_ASSIGN_OR_RETURN(Calibration calibration, Calibration::load(path));
  if (calibration.model.fingerprint != trace.model().fingerprint) {
    return make_error("{}: model.fingerprint: calibrated for the model of sha256 {}, the trace {} is of {}", path,
                      calibration.model.fingerprint, trace_path, trace.model().fingerprint);
  }
  return std::optional<Calibration>(std::move(calibration));
}

// "0,0.4" -> {0, 0.4}: ratios in [0, 1); errors name the flag.
Result<std::vector<double>> parse_ratio_list(const std::string& flag, const std::string& text) {
  std::vector<double> out;
  for (const std::string& item : split_list(text)) {
    char* end = nullptr;
    const double r = std::strtod(item.c_str(), &end);
    if (end == item.c_str() || *end != '\0' || !(r >= 0 && r < 1)) {
      return make_error("{}: expected ratios in [0, 1) separated by commas, found '{}'", flag, item);
    }
    out.push_back(r);
  }
  if (out.empty()) return make_error("{}: expected a comma-separated list, found '{}'", flag, text);
  return out;
}

Result<std::vector<PlanCompression>> crossed_compressions(const PlanCompression& base, const std::string& think_ratios,
                                                          const std::string& mustafar_ratios) {
  std::vector<double> thinks = base.think() ? base.think_ratio : std::vector<double>{0.0};
  std::vector<std::pair<double, double>> sparsities = {
      base.mustafar() ? std::pair{base.key_sparsity[0], base.value_sparsity[0]} : std::pair{0.0, 0.0}};
  if (!think_ratios.empty()) {
    KVP_ASSIGN_OR_RETURN(thinks, parse_ratio_list("--think-ratios", think_ratios));
  }
  if (!mustafar_ratios.empty()) {
    KVP_ASSIGN_OR_RETURN(std::vector<double> list, parse_ratio_list("--mustafar-ratios", mustafar_ratios));
    sparsities.clear();
    for (double r : list) sparsities.emplace_back(r, r);
  }
  std::vector<PlanCompression> out;
  for (double t : thinks) {
    for (const auto& [sk, sv] : sparsities) {
      PlanCompression c = base;
      c.think_ratio = t > 0 ? std::vector<double>{t} : std::vector<double>{};
      c.key_sparsity = sk > 0 || sv > 0 ? std::vector<double>{sk} : std::vector<double>{};
      c.value_sparsity = sk > 0 || sv > 0 ? std::vector<double>{sv} : std::vector<double>{};
      out.push_back(std::move(c));
    }
  }
  return out;
}

}  // namespace kvp::cli
