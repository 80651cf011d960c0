#include "planner/plan/measured.h"

#include <set>

#include "common/file_util.h"
#include "common/yaml_fields.h"

namespace kvp {
namespace {
constexpr const char* kMeasuredFormat = "kvplan-measured";
}  // namespace

std::string Measured::to_yaml() const {
  YAML::Emitter out;
  out.SetDoublePrecision(8);
  out << YAML::BeginMap;
  out << YAML::Key << "format" << YAML::Value << kMeasuredFormat;
  out << YAML::Key << "version" << YAML::Value << (compression.any() ? 2 : 1);
  out << YAML::Key << "model_fingerprint" << YAML::Value << model_fingerprint;
  out << YAML::Key << "config" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "policy" << YAML::Value << policy;
  out << YAML::Key << "sinks" << YAML::Value << sinks;
  out << YAML::Key << "recent" << YAML::Value << recent;
  out << YAML::Key << "detail" << YAML::Value << policy_detail;
  out << YAML::Key << "kv_dtype" << YAML::Value << kv_dtype;
  out << YAML::Key << "plan" << YAML::Value << plan_source;
  out << YAML::Key << "budgets" << YAML::Value << YAML::BeginSeq;
  for (const auto& layer : budgets) {
    out << YAML::Flow << YAML::BeginSeq;
    for (int32_t b : layer) out << b;
    out << YAML::EndSeq;
  }
  out << YAML::EndSeq;
  emit_compression(out, compression);
  out << YAML::EndMap;
  out << YAML::Key << "data" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "corpus" << YAML::Value << corpus;
  out << YAML::Key << "n_sequences" << YAML::Value << n_sequences;
  out << YAML::Key << "prompt_len" << YAML::Value << prompt_len;
  out << YAML::Key << "n_predicted_tokens" << YAML::Value << n_predicted_tokens;
  out << YAML::EndMap;
  out << YAML::Key << "metrics" << YAML::Value << YAML::BeginMap;
  for (const auto& [k, v] : {std::pair{"delta_nll", delta_nll}, {"nll_full", nll_full}, {"nll_pruned", nll_pruned},
                             {"top1_agreement", top1_agreement}, {"kl", kl},
                             {"greedy_agreement_tokens", greedy_agreement_tokens},
                             {"greedy_agreement_fraction", greedy_agreement_fraction},
                             {"tokens_per_s", tokens_per_s}}) {
    out << YAML::Key << k << YAML::Value << v;
  }
  out << YAML::Key << "kv_bytes_per_sequence" << YAML::Value << kv_bytes_per_sequence;
  if (attended_per_head_step > 0) out << YAML::Key << "attended_per_head_step" << YAML::Value << attended_per_head_step;
  out << YAML::EndMap;
  out << YAML::Key << "predicted" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "kv_bytes_per_sequence" << YAML::Value << predicted_kv_bytes_per_sequence;
  for (const auto& [k, v] : predicted) out << YAML::Key << k << YAML::Value << v;
  out << YAML::EndMap;
  out << YAML::Key << "backend" << YAML::Value << backend;
  out << YAML::EndMap;
  return std::string(out.c_str()) + "\n";
}

Result<Measured> Measured::parse(const std::string& text, const std::string& path) {
  KVP_ASSIGN_OR_RETURN(YAML::Node root, parse_yaml_map(text, path));
  const YamlFields top(root, path, "");
  KVP_RETURN_IF_ERROR(top.only({"format", "version", "model_fingerprint", "config", "data", "metrics",
                                "predicted", "backend"}));
  KVP_ASSIGN_OR_RETURN(std::string format, top.str("format"));
  if (format != kMeasuredFormat) return top.error("format", fmt::format("expected {}, found '{}'", kMeasuredFormat, format));
  KVP_ASSIGN_OR_RETURN(int version, top.integer("version", 0, 1 << 20));
  if (version < 1 || version > 2) {
    return top.error("version", fmt::format("this kvplan reads versions 1 to 2, found {}", version));
  }
  Measured m;
  KVP_ASSIGN_OR_RETURN(m.model_fingerprint, top.sha256("model_fingerprint"));
  KVP_ASSIGN_OR_RETURN(m.backend, top.str("backend"));
  KVP_ASSIGN_OR_RETURN(YAML::Node config, top.child("config"));
  const YamlFields cf(config, path, "config.");
  std::set<std::string> config_known = {"policy", "sinks", "recent", "detail", "kv_dtype", "plan", "budgets"};
  if (version >= 2) config_known.insert({"key_channels", "sparsity"});
  KVP_RETURN_IF_ERROR(cf.only(config_known));
  KVP_ASSIGN_OR_RETURN(m.policy, cf.str("policy"));
  KVP_ASSIGN_OR_RETURN(m.sinks, cf.integer("sinks", 0, 1 << 22));
  KVP_ASSIGN_OR_RETURN(m.recent, cf.integer("recent", 0, 1 << 22));
  KVP_ASSIGN_OR_RETURN(m.policy_detail, cf.str("detail"));
  KVP_ASSIGN_OR_RETURN(m.kv_dtype, cf.str("kv_dtype"));
  KVP_ASSIGN_OR_RETURN(m.plan_source, cf.str("plan"));
  KVP_ASSIGN_OR_RETURN(YAML::Node budgets, cf.child("budgets"));
  if (!budgets.IsSequence()) return cf.error("budgets", "expected a list per layer");
  for (size_t l = 0; l < budgets.size(); ++l) {
    if (!budgets[l].IsSequence()) return cf.error("budgets", fmt::format("layer {}: expected a list per head", l));
    std::vector<int32_t> heads;
    for (size_t h = 0; h < budgets[l].size(); ++h) {
      int32_t b = 0;
      if (!budgets[l][h].IsScalar() || !YAML::convert<int32_t>::decode(budgets[l][h], b) || b < 0) {
        return cf.error(fmt::format("budgets[{}][{}]", l, h), "expected a slot count (an integer >= 0)");
      }
      heads.push_back(b);
    }
    m.budgets.push_back(std::move(heads));
  }
  KVP_RETURN_IF_ERROR(read_compression(cf, static_cast<int>(m.budgets.size()), 1 << 22, &m.compression));
  KVP_ASSIGN_OR_RETURN(YAML::Node data, top.child("data"));
  const YamlFields df(data, path, "data.");
  KVP_RETURN_IF_ERROR(df.only({"corpus", "n_sequences", "prompt_len", "n_predicted_tokens"}));
  KVP_ASSIGN_OR_RETURN(m.corpus, df.str("corpus"));
  KVP_ASSIGN_OR_RETURN(m.n_sequences, df.integer("n_sequences", 1, 1 << 30));
  KVP_ASSIGN_OR_RETURN(m.prompt_len, df.integer("prompt_len", 1, 1 << 22));
  KVP_ASSIGN_OR_RETURN(m.n_predicted_tokens, df.integer64("n_predicted_tokens", 1, INT64_MAX));
  KVP_ASSIGN_OR_RETURN(YAML::Node metrics, top.child("metrics"));
  const YamlFields mf(metrics, path, "metrics.");
  KVP_RETURN_IF_ERROR(mf.only({"delta_nll", "nll_full", "nll_pruned", "top1_agreement", "kl",
                               "greedy_agreement_tokens", "greedy_agreement_fraction", "tokens_per_s",
                               "kv_bytes_per_sequence", "attended_per_head_step"}));
  KVP_ASSIGN_OR_RETURN(m.delta_nll, mf.number("delta_nll"));
  KVP_ASSIGN_OR_RETURN(m.nll_full, mf.number("nll_full"));
  KVP_ASSIGN_OR_RETURN(m.nll_pruned, mf.number("nll_pruned"));
  KVP_ASSIGN_OR_RETURN(m.top1_agreement, mf.number("top1_agreement"));
  KVP_ASSIGN_OR_RETURN(m.kl, mf.number("kl"));
  KVP_ASSIGN_OR_RETURN(m.greedy_agreement_tokens, mf.number("greedy_agreement_tokens"));
  KVP_ASSIGN_OR_RETURN(m.greedy_agreement_fraction, mf.number("greedy_agreement_fraction"));
  KVP_ASSIGN_OR_RETURN(m.tokens_per_s, mf.number("tokens_per_s"));
  KVP_ASSIGN_OR_RETURN(m.kv_bytes_per_sequence, mf.integer64("kv_bytes_per_sequence", 0, INT64_MAX));
  if (mf.has("attended_per_head_step")) {
    KVP_ASSIGN_OR_RETURN(m.attended_per_head_step, mf.number("attended_per_head_step"));
  }
  KVP_ASSIGN_OR_RETURN(YAML::Node predicted, top.child("predicted"));
  const YamlFields pf(predicted, path, "predicted.");
  KVP_ASSIGN_OR_RETURN(m.predicted_kv_bytes_per_sequence, pf.integer64("kv_bytes_per_sequence", 0, INT64_MAX));
  for (const auto& kv : predicted) {
    const std::string key = kv.first.as<std::string>();
    if (key == "kv_bytes_per_sequence") continue;
    KVP_ASSIGN_OR_RETURN(m.predicted[key], pf.number(key));
  }
  return m;
}

Result<Measured> Measured::load(const std::string& path) {
  KVP_ASSIGN_OR_RETURN(std::string text, read_file_text(path));
  return parse(text, path);
}

Status Measured::save(const std::string& path) const { return write_file_atomic(path, to_yaml()); }

}  // namespace kvp
