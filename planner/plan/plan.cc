#include "planner/plan/plan.h"

#include <fmt/ranges.h>

#include <algorithm>

#include "common/file_util.h"
#include "common/yaml_fields.h"

namespace kvp {

namespace {

// What a budget must hold at least, in words: "sinks 4 + recent 8 (+ kvcrush's period 8)".
std::string min_budget_reason(const Policy& policy) {
  const PolicyParams& p = policy.params();
  std::string why = fmt::format("sinks {} + recent {}", p.sinks, p.recent);
  if (policy.cut_period() > 0) why += fmt::format(" + {}'s period {}", policy.name(), policy.cut_period());
  return why;
}

// KVCrush re-selects its kept set in place, which a compressed layout (ThinK, Mustafar) cannot.
Status check_policy_compression(const Policy& policy, const PlanCompression& compression, const std::string& where) {
  if (policy.cut_period() > 0 && compression.any()) {
    return make_error("{}: policy {} re-selects its kept tokens every {} steps; it runs on dense caches only "
                      "(no key_channels or sparsity)", where, policy.name(), policy.cut_period());
  }
  return ok_status();
}

}  // namespace

void emit_compression(YAML::Emitter& out, const PlanCompression& compression) {
  auto ratios = [&](const std::vector<double>& v) {
    if (v.size() == 1) {
      out << v[0];
    } else {
      out << YAML::Flow << YAML::BeginSeq;
      for (double r : v) out << r;
      out << YAML::EndSeq;
    }
  };
  if (compression.think()) {
    out << YAML::Key << "key_channels" << YAML::Value << YAML::BeginMap;
    out << YAML::Key << "ratio" << YAML::Value;
    ratios(compression.think_ratio);
    out << YAML::Key << "window" << YAML::Value << compression.think_window;
    out << YAML::Key << "recent" << YAML::Value << compression.think_recent;
    out << YAML::EndMap;
  }
  if (compression.mustafar()) {
    out << YAML::Key << "sparsity" << YAML::Value << YAML::BeginMap;
    out << YAML::Key << "keys" << YAML::Value;
    ratios(compression.key_sparsity);
    out << YAML::Key << "values" << YAML::Value;
    ratios(compression.value_sparsity);
    out << YAML::Key << "recent" << YAML::Value << compression.dense_recent;
    out << YAML::EndMap;
  }
}

Status read_compression(const YamlFields& top, int n_layers, int max_window, PlanCompression* c) {
  // A ratio, or a list of one per layer; each checked by PlanCompression::layers.
  auto read_ratios = [&](const YamlFields& f, const std::string& key, std::vector<double>* out) -> Status {
    KVP_ASSIGN_OR_RETURN(YAML::Node node, f.child(key));
    if (node.IsSequence()) {
      if (static_cast<int>(node.size()) != n_layers) {
        return f.error(key, fmt::format("{} ratios listed, the model has {} layers", node.size(), n_layers));
      }
      for (size_t l = 0; l < node.size(); ++l) {
        double r = 0;
        if (!node[l].IsScalar() || !YAML::convert<double>::decode(node[l], r)) {
          return f.error(fmt::format("{}[{}]", key, l), "expected a ratio in [0, 1)");
        }
        out->push_back(r);
      }
      return ok_status();
    }
    KVP_ASSIGN_OR_RETURN(double r, f.number(key));
    out->push_back(r);
    return ok_status();
  };
  if (top.has("key_channels")) {
    KVP_ASSIGN_OR_RETURN(YAML::Node node, top.child("key_channels"));
    const YamlFields kf = top.nested(node, "key_channels");
    KVP_RETURN_IF_ERROR(kf.only({"ratio", "window", "recent"}));
    KVP_RETURN_IF_ERROR(read_ratios(kf, "ratio", &c->think_ratio));
    KVP_ASSIGN_OR_RETURN(c->think_window, kf.integer("window", 1, max_window));
    KVP_ASSIGN_OR_RETURN(c->think_recent, kf.integer("recent", 1, max_window));
  }
  if (top.has("sparsity")) {
    KVP_ASSIGN_OR_RETURN(YAML::Node node, top.child("sparsity"));
    const YamlFields sf = top.nested(node, "sparsity");
    KVP_RETURN_IF_ERROR(sf.only({"keys", "values", "recent"}));
    KVP_RETURN_IF_ERROR(read_ratios(sf, "keys", &c->key_sparsity));
    KVP_RETURN_IF_ERROR(read_ratios(sf, "values", &c->value_sparsity));
    KVP_ASSIGN_OR_RETURN(c->dense_recent, sf.integer("recent", 1, max_window));
  }
  return ok_status();
}

void emit_plan_model(YAML::Emitter& out, const PlanModel& model) {
  out << YAML::BeginMap;
  out << YAML::Key << "fingerprint" << YAML::Value << model.fingerprint;
  for (const auto& [k, v] : {std::pair{"dim", model.dim}, {"n_layers", model.n_layers},
                             {"n_heads", model.n_heads}, {"n_kv_heads", model.n_kv_heads},
                             {"head_dim", model.head_dim}, {"vocab_size", model.vocab_size},
                             {"seq_len", model.seq_len}}) {
    out << YAML::Key << k << YAML::Value << v;
  }
  out << YAML::EndMap;
}

Result<PlanModel> parse_plan_model(const YAML::Node& node, const std::string& path) {
  const YamlFields mf(node, path, "model.");
  KVP_RETURN_IF_ERROR(mf.only({"fingerprint", "dim", "n_layers", "n_heads", "n_kv_heads", "head_dim",
                               "vocab_size", "seq_len"}));
  PlanModel m;
  KVP_ASSIGN_OR_RETURN(m.fingerprint, mf.sha256("fingerprint"));
  KVP_ASSIGN_OR_RETURN(m.dim, mf.integer("dim", 1, 1 << 22));
  KVP_ASSIGN_OR_RETURN(m.n_layers, mf.integer("n_layers", 1, 4096));
  KVP_ASSIGN_OR_RETURN(m.n_heads, mf.integer("n_heads", 1, 4096));
  KVP_ASSIGN_OR_RETURN(m.n_kv_heads, mf.integer("n_kv_heads", 1, m.n_heads));
  KVP_ASSIGN_OR_RETURN(m.head_dim, mf.integer("head_dim", 1, 1 << 16));
  KVP_ASSIGN_OR_RETURN(m.vocab_size, mf.integer("vocab_size", 1, 1 << 22));
  KVP_ASSIGN_OR_RETURN(m.seq_len, mf.integer("seq_len", 1, 1 << 22));
  return m;
}

Result<std::vector<SlotCompression>> PlanCompression::layers(int n_layers, int head_dim) const {
  std::vector<SlotCompression> out;
  if (!any()) return out;
  auto at = [&](const std::vector<double>& v, int l) { return v.empty() ? 0.0 : v.size() == 1 ? v[0] : v.at(l); };
  for (int l = 0; l < n_layers; ++l) {
    // A field's name, with the layer's index where it lists one ratio per layer.
    auto name = [&](const char* field, const std::vector<double>& v) {
      return v.size() > 1 ? fmt::format("{}[{}]", field, l) : std::string(field);
    };
    KVP_ASSIGN_OR_RETURN(SlotCompression c,
                         slot_compression(head_dim, at(think_ratio, l), at(key_sparsity, l), at(value_sparsity, l),
                                          name("key_channels.ratio", think_ratio), name("sparsity.keys", key_sparsity),
                                          name("sparsity.values", value_sparsity)));
    if (c.compressed()) {
      c.think_queries = think_window;
      c.think_recent = think_recent;
      c.dense_recent = dense_recent;
    }
    out.push_back(c);
  }
  return out;
}

std::string PlanCompression::label() const {
  auto one = [](const std::vector<double>& v) {
    return v.size() == 1 ? fmt::format("{:g}", v[0]) : std::string("per-layer");
  };
  std::string out;
  if (think()) out += "+think" + one(think_ratio);
  if (mustafar() && key_sparsity == value_sparsity) out += "+mustafar" + one(key_sparsity);
  if (mustafar() && key_sparsity != value_sparsity) out += "+mustafar_k" + one(key_sparsity) + "_v" + one(value_sparsity);
  return out;
}

KvBudgets Plan::kv_budgets() const {
  KvBudgets b{.n_layers = model.n_layers, .n_kv_heads = model.n_kv_heads, .head_dim = model.head_dim,
              .dtype = kv_dtype};
  auto policy_impl = make_policy(policy, params);
  KVP_CHECK(policy_impl.ok(), "plan holds an unknown policy");
  b.aux_floats_per_slot = (*policy_impl)->aux_floats_per_slot();
  for (const auto& layer : budgets) b.budget_tokens.insert(b.budget_tokens.end(), layer.begin(), layer.end());
  auto layers = compression.layers(model.n_layers, model.head_dim);
  KVP_CHECK(layers.ok(), "plan holds invalid compression: {}", layers.ok() ? "" : layers.error().message());
  b.compression = std::move(*layers);
  return b;
}

int32_t Plan::min_budget() const {
  int32_t m = INT32_MAX;
  for (const auto& layer : budgets) m = std::min(m, *std::min_element(layer.begin(), layer.end()));
  return m;
}

int32_t Plan::max_budget() const {
  int32_t m = 0;
  for (const auto& layer : budgets) m = std::max(m, *std::max_element(layer.begin(), layer.end()));
  return m;
}

std::string Plan::to_yaml() const {
  YAML::Emitter out;
  out.SetDoublePrecision(6);
  out << YAML::BeginMap;
  out << YAML::Key << "format" << YAML::Value << kPlanFormatName;
  out << YAML::Key << "version" << YAML::Value << (params.delta.on() ? 3 : compression.any() ? 2 : 1);
  out << YAML::Key << "model" << YAML::Value;
  emit_plan_model(out, model);
  out << YAML::Key << "policy" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "name" << YAML::Value << policy;
  out << YAML::Key << "sinks" << YAML::Value << params.sinks;
  out << YAML::Key << "recent" << YAML::Value << params.recent;
  // kvcrush: its base policy, whose own fields follow under their names (VATP's base as vatp_base).
  const bool crush = policy == "kvcrush";
  const std::string& scored = crush ? params.crush_base : policy;
  if (crush) {
    out << YAML::Key << "base" << YAML::Value << params.crush_base;
    out << YAML::Key << "ratio" << YAML::Value << params.crush_ratio;
    out << YAML::Key << "anchor" << YAML::Value << std::string(crush_anchor_name(params.crush_anchor));
    out << YAML::Key << "period" << YAML::Value << params.crush_period;
  }
  if (scored == "vatp") {
    out << YAML::Key << (crush ? "vatp_base" : "base") << YAML::Value << std::string(vatp_base_name(params.vatp_base));
  }
  if (scored == "random" || (crush && params.crush_anchor == CrushAnchor::kRandom)) {
    out << YAML::Key << "seed" << YAML::Value << params.seed;
  }
  if (scored == "snapkv") {
    out << YAML::Key << "window" << YAML::Value << params.snap_window;
    out << YAML::Key << "kernel" << YAML::Value << params.snap_kernel;
  }
  out << YAML::EndMap;
  out << YAML::Key << "kv_dtype" << YAML::Value << std::string(kv_dtype_name(kv_dtype));
  out << YAML::Key << "budgets" << YAML::Value << YAML::BeginSeq;
  for (const auto& layer : budgets) {
    if (std::all_of(layer.begin(), layer.end(), [&](int32_t b) { return b == layer[0]; })) {
      out << layer[0];
    } else {
      out << YAML::Flow << YAML::BeginSeq;
      for (int32_t b : layer) out << b;
      out << YAML::EndSeq;
    }
  }
  out << YAML::EndSeq;
  emit_compression(out, compression);
  if (params.delta.on()) {
    out << YAML::Key << "delta" << YAML::Value << YAML::BeginMap;
    out << YAML::Key << "layers" << YAML::Value << params.delta.layers;
    out << YAML::Key << "pages" << YAML::Value << params.delta.pages;
    out << YAML::Key << "page_size" << YAML::Value << params.delta.page_size;
    out << YAML::Key << "last" << YAML::Value << params.delta.last;
    out << YAML::EndMap;
  }
  out << YAML::Key << "predictions" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "kv_bytes_per_sequence" << YAML::Value << kv_bytes_per_sequence;
  for (const auto& [k, v] : predicted) out << YAML::Key << k << YAML::Value << v;
  out << YAML::EndMap;
  out << YAML::Key << "provenance" << YAML::Value << YAML::BeginMap;
  for (const auto& [k, v] : provenance) out << YAML::Key << k << YAML::Value << v;
  out << YAML::EndMap;
  out << YAML::EndMap;
  return std::string(out.c_str()) + "\n";
}

Result<Plan> Plan::parse(const std::string& text, const std::string& path) {
  KVP_ASSIGN_OR_RETURN(YAML::Node root, parse_yaml_map(text, path));
  const YamlFields top(root, path, "");
  KVP_ASSIGN_OR_RETURN(std::string format, top.str("format"));
  if (format != kPlanFormatName) return top.error("format", fmt::format("expected {}, found '{}'", kPlanFormatName, format));
  KVP_ASSIGN_OR_RETURN(int version, top.integer("version", 0, 1 << 20));
  if (version < 1 || version > kPlanFormatVersion) {
    return top.error("version", fmt::format("this kvplan reads versions 1 to {}, found {}", kPlanFormatVersion, version));
  }
  std::set<std::string> top_known = {"format", "version", "model", "policy", "kv_dtype", "budgets", "predictions",
                                     "provenance"};
  if (version >= 2) top_known.insert({"key_channels", "sparsity"});
  if (version >= 3) top_known.insert("delta");
  KVP_RETURN_IF_ERROR(top.only(top_known));
  Plan plan;
  KVP_ASSIGN_OR_RETURN(YAML::Node model, top.child("model"));
  KVP_ASSIGN_OR_RETURN(plan.model, parse_plan_model(model, path));

  KVP_ASSIGN_OR_RETURN(YAML::Node policy, top.child("policy"));
  const YamlFields pf(policy, path, "policy.");
  KVP_ASSIGN_OR_RETURN(plan.policy, pf.str("name"));
  if (const auto names = policy_names(); std::find(names.begin(), names.end(), plan.policy) == names.end()) {
    return pf.error("name", fmt::format("expected one of {}, found '{}'", fmt::join(names, ", "), plan.policy));
  }
  std::set<std::string> known = {"name", "sinks", "recent"};
  const bool crush = plan.policy == "kvcrush";
  std::string scored = plan.policy;  // the policy whose scores are kept: kvcrush's base
  if (crush) {
    known.insert({"base", "ratio", "anchor", "period", "seed"});
    KVP_ASSIGN_OR_RETURN(plan.params.crush_base, pf.str("base"));
    scored = plan.params.crush_base;
    const std::vector<std::string> names = policy_names();
    if (scored == "full" || scored == "kvcrush" || std::find(names.begin(), names.end(), scored) == names.end()) {
      return pf.error("base", fmt::format("expected an evicting policy (window, h2o, vatp, tova, snapkv, knorm, random), "
                                          "found '{}'", scored));
    }
    if (pf.has("ratio")) {
      KVP_ASSIGN_OR_RETURN(plan.params.crush_ratio, pf.number("ratio"));
    }
    if (pf.has("anchor")) {
      KVP_ASSIGN_OR_RETURN(std::string anchor, pf.str("anchor"));
      auto parsed = parse_crush_anchor(anchor);
      if (!parsed.ok()) return pf.error("anchor", fmt::format("expected mean, random or alternating, found '{}'", anchor));
      plan.params.crush_anchor = *parsed;
    }
    if (pf.has("period")) {
      KVP_ASSIGN_OR_RETURN(plan.params.crush_period, pf.integer("period", 0, plan.model.seq_len));
    }
    if (const auto e = kvcrush_param_error(plan.params)) return pf.error(e->field, e->message);
  }
  if (scored == "vatp") known.insert(crush ? "vatp_base" : "base");
  if (scored == "random") known.insert("seed");
  if (scored == "snapkv") known.insert({"window", "kernel"});
  KVP_RETURN_IF_ERROR(pf.only(known));
  KVP_ASSIGN_OR_RETURN(plan.params.sinks, pf.integer("sinks", 0, plan.model.seq_len));
  KVP_ASSIGN_OR_RETURN(plan.params.recent, pf.integer("recent", 0, plan.model.seq_len));
  if (const char* key = crush ? "vatp_base" : "base"; scored == "vatp" && pf.has(key)) {
    KVP_ASSIGN_OR_RETURN(std::string base, pf.str(key));
    auto parsed = parse_vatp_base(base);
    if (!parsed.ok()) return pf.error(key, fmt::format("expected h2o or mean, found '{}'", base));
    plan.params.vatp_base = *parsed;
  }
  if (pf.has("seed")) {
    KVP_ASSIGN_OR_RETURN(plan.params.seed, pf.integer64("seed", 0, INT64_MAX));
  }
  if (pf.has("window")) {
    KVP_ASSIGN_OR_RETURN(plan.params.snap_window, pf.integer("window", 1, 1 << 20));
  }
  if (pf.has("kernel")) {
    KVP_ASSIGN_OR_RETURN(plan.params.snap_kernel, pf.integer("kernel", 1, 1 << 10));
  }
  auto policy_impl = make_policy(plan.policy, plan.params);
  if (!policy_impl.ok()) return policy_impl.error().with_context(path);

  KVP_ASSIGN_OR_RETURN(std::string dtype, top.str("kv_dtype"));
  auto parsed_dtype = parse_kv_dtype(dtype);
  if (!parsed_dtype.ok()) return top.error("kv_dtype", fmt::format("expected f32 or f16, found '{}'", dtype));
  plan.kv_dtype = *parsed_dtype;

  KVP_ASSIGN_OR_RETURN(YAML::Node budgets, top.child("budgets"));
  if (!budgets.IsSequence()) return top.error("budgets", "expected a list with one entry per layer");
  if (static_cast<int>(budgets.size()) != plan.model.n_layers) {
    return top.error("budgets", fmt::format("{} layers listed, the model has {}", budgets.size(), plan.model.n_layers));
  }
  const int floor = (*policy_impl)->min_budget();
  for (size_t l = 0; l < budgets.size(); ++l) {
    const YAML::Node layer = budgets[l];
    std::vector<int32_t> heads;
    auto read_budget = [&](const YAML::Node& n, const std::string& where) -> Status {
      int64_t b = 0;
      if (!n.IsScalar() || !YAML::convert<int64_t>::decode(n, b)) {
        return make_error("{}: {}: expected a token count, found '{}'", path, where, n.IsScalar() ? n.Scalar() : "?");
      }
      if (b < floor || b > plan.model.seq_len) {
        return make_error("{}: {}: expected {}..{} tokens ({}), found {}", path, where, floor, plan.model.seq_len,
                          (*policy_impl)->evicts() ? "at least " + min_budget_reason(**policy_impl)
                                                   : std::string("at most the model's seq_len"),
                          b);
      }
      heads.push_back(static_cast<int32_t>(b));
      return ok_status();
    };
    if (layer.IsSequence()) {
      if (static_cast<int>(layer.size()) != plan.model.n_kv_heads) {
        return make_error("{}: budgets[{}]: {} heads listed, the model has {} KV heads", path, l, layer.size(),
                          plan.model.n_kv_heads);
      }
      for (size_t h = 0; h < layer.size(); ++h) {
        KVP_RETURN_IF_ERROR(read_budget(layer[h], fmt::format("budgets[{}][{}]", l, h)));
      }
      if ((*policy_impl)->shared_per_layer() &&
          !std::all_of(heads.begin(), heads.end(), [&](int32_t b) { return b == heads[0]; })) {
        return make_error("{}: budgets[{}]: policy {} keeps one set per layer, so its heads need equal budgets",
                          path, l, plan.policy);
      }
    } else {
      KVP_RETURN_IF_ERROR(read_budget(layer, fmt::format("budgets[{}]", l)));
      heads.assign(plan.model.n_kv_heads, heads[0]);
    }
    plan.budgets.push_back(std::move(heads));
  }

  KVP_RETURN_IF_ERROR(read_compression(top, plan.model.n_layers, plan.model.seq_len, &plan.compression));
  KVP_RETURN_IF_ERROR(check_policy_compression(**policy_impl, plan.compression, path));
  if (auto layers = plan.compression.layers(plan.model.n_layers, plan.model.head_dim); !layers.ok()) {
    return layers.error().with_context(path);
  }
  if (top.has("delta")) {
    KVP_ASSIGN_OR_RETURN(YAML::Node delta, top.child("delta"));
    if (!delta.IsMap()) return top.error("delta", "expected a map of layers, pages, page_size and last");
    const YamlFields df(delta, path, "delta.");
    KVP_RETURN_IF_ERROR(df.only({"layers", "pages", "page_size", "last"}));
    DeltaParams& d = plan.params.delta;
    KVP_ASSIGN_OR_RETURN(d.layers, df.str("layers"));
    if (d.layers.empty()) return df.error("layers", "expected one role per layer (f, s, p), found none");
    if (df.has("pages")) {
      KVP_ASSIGN_OR_RETURN(d.pages, df.integer("pages", 1, 1 << 22));
    }
    if (df.has("page_size")) {
      KVP_ASSIGN_OR_RETURN(d.page_size, df.integer("page_size", 1, 4096));
    }
    if (df.has("last")) {
      KVP_ASSIGN_OR_RETURN(d.last, df.integer("last", 0, 1 << 22));
    }
    if (const auto e = delta_param_error(d, plan.model.n_layers)) return df.error(e->field, e->message);
    if (plan.compression.any()) {
      return top.error("delta", "DELTA's sparse layers attend dense caches; drop key_channels and sparsity or delta");
    }
  }

  KVP_ASSIGN_OR_RETURN(YAML::Node predictions, top.child("predictions"));
  if (!predictions.IsMap()) return top.error("predictions", "expected a map");
  const YamlFields prf(predictions, path, "predictions.");
  KVP_ASSIGN_OR_RETURN(plan.kv_bytes_per_sequence, prf.integer64("kv_bytes_per_sequence", 0, INT64_MAX));
  for (const auto& kv : predictions) {
    const std::string key = kv.first.as<std::string>();
    if (key == "kv_bytes_per_sequence") continue;
    KVP_ASSIGN_OR_RETURN(plan.predicted[key], prf.number(key));
  }
  const int64_t bytes = plan.kv_budgets().kv_bytes();
  if (plan.kv_bytes_per_sequence != bytes) {
    return prf.error("kv_bytes_per_sequence",
                     fmt::format("the budgets cost {} bytes, the plan says {}", bytes, plan.kv_bytes_per_sequence));
  }
  if (top.has("provenance")) {
    KVP_ASSIGN_OR_RETURN(YAML::Node provenance, top.child("provenance"));
    if (!provenance.IsMap()) return top.error("provenance", "expected a map of strings");
    for (const auto& kv : provenance) {
      if (!kv.second.IsScalar()) return top.error("provenance", "expected a map of strings");
      plan.provenance[kv.first.as<std::string>()] = kv.second.as<std::string>();
    }
  }
  return plan;
}

Result<Plan> Plan::load(const std::string& path) {
  KVP_ASSIGN_OR_RETURN(std::string text, read_file_text(path));
  return parse(text, path);
}

Status Plan::save(const std::string& path) const { return write_file_atomic(path, to_yaml()); }

Status Plan::check_model(const PlanModel& m, const std::string& plan_path, const std::string& model_path) const {
  if (model.fingerprint != m.fingerprint) {
    return make_error("{}: model.fingerprint: the plan was made for the model of sha256 {}, not {} ({})", plan_path,
                      model.fingerprint, m.fingerprint, model_path);
  }
  const std::pair<const char*, std::pair<int, int>> fields[] = {
      {"dim", {model.dim, m.dim}},           {"n_layers", {model.n_layers, m.n_layers}},
      {"n_heads", {model.n_heads, m.n_heads}}, {"n_kv_heads", {model.n_kv_heads, m.n_kv_heads}},
      {"head_dim", {model.head_dim, m.head_dim}}, {"vocab_size", {model.vocab_size, m.vocab_size}},
      {"seq_len", {model.seq_len, m.seq_len}}};
  for (const auto& [name, values] : fields) {
    if (values.first != values.second) {
      return make_error("{}: model.{}: the plan says {}, the model ({}) has {}", plan_path, name, values.first,
                        model_path, values.second);
    }
  }
  return ok_status();
}

Result<Plan> uniform_plan(const PlanModel& model, const std::string& policy, const PolicyParams& params,
                          int32_t budget_tokens, KvDtype kv_dtype, const PlanCompression& compression) {
  Plan plan;
  plan.model = model;
  plan.policy = policy;
  plan.params = params;
  plan.kv_dtype = kv_dtype;
  plan.compression = compression;
  KVP_RETURN_IF_ERROR(compression.layers(model.n_layers, model.head_dim).status());
  plan.budgets.assign(model.n_layers, std::vector<int32_t>(model.n_kv_heads, budget_tokens));
  KVP_ASSIGN_OR_RETURN(auto impl, make_policy(policy, params));
  if (impl->evicts() && budget_tokens < impl->min_budget()) {
    return make_error("--budget: expected at least {} = {} tokens, found {}", min_budget_reason(*impl), impl->min_budget(),
                      budget_tokens);
  }
  KVP_RETURN_IF_ERROR(check_policy_compression(*impl, compression, "--think/--mustafar"));
  KVP_RETURN_IF_ERROR(check_delta_flags(params.delta, model.n_layers, compression.any()));
  if (budget_tokens < 1 || budget_tokens > model.seq_len) {
    return make_error("--budget: expected 1..{} tokens (the model's seq_len), found {}", model.seq_len, budget_tokens);
  }
  plan.kv_bytes_per_sequence = plan.kv_budgets().kv_bytes();
  return plan;
}

}  // namespace kvp
