#include "common/yaml_fields.h"

#include <cmath>

namespace kvp {

bool is_sha256_hex(const std::string& s) {
  return s.size() == 64 && s.find_first_not_of("0123456789abcdef") == std::string::npos;
}

Error YamlFields::error(const std::string& key, const std::string& message) const {
  return make_error("{}: {}{}: {}", path_, prefix_, key, message);
}

std::string YamlFields::node_name() const {
  // prefix_ is "" (the document), "model." or "sequences[3].": the node itself.
  return prefix_.empty() ? "document" : prefix_.substr(0, prefix_.size() - 1);
}

Status YamlFields::expect_map() const {
  if (node_.IsMap()) return ok_status();
  return make_error("{}: {}: expected a map of fields, found {}", path_, node_name(),
                    node_.IsScalar() ? fmt::format("'{}'", node_.Scalar()) : node_.IsSequence() ? "a list" : "nothing");
}

Result<YAML::Node> YamlFields::child(const std::string& key) const {
  KVP_RETURN_IF_ERROR(expect_map());
  const YAML::Node n = node_[key];
  if (!n) return error(key, "missing");
  return n;
}

Result<std::string> YamlFields::str(const std::string& key) const {
  KVP_ASSIGN_OR_RETURN(YAML::Node n, child(key));
  if (!n.IsScalar()) return error(key, "expected a string");
  return n.as<std::string>();
}

Result<int64_t> YamlFields::integer64(const std::string& key, int64_t lo, int64_t hi) const {
  KVP_ASSIGN_OR_RETURN(YAML::Node n, child(key));
  int64_t value = 0;
  if (!n.IsScalar() || !YAML::convert<int64_t>::decode(n, value)) {
    return error(key, fmt::format("expected an integer, found '{}'",
                                  n.IsScalar() ? n.Scalar() : (n.IsMap() ? "a map" : "a list")));
  }
  if (value < lo || value > hi) return error(key, fmt::format("expected {}..{}, found {}", lo, hi, value));
  return value;
}

Result<int> YamlFields::integer(const std::string& key, int lo, int hi) const {
  KVP_ASSIGN_OR_RETURN(int64_t v, integer64(key, lo, hi));
  return static_cast<int>(v);
}

Result<double> YamlFields::number(const std::string& key) const {
  KVP_ASSIGN_OR_RETURN(YAML::Node n, child(key));
  double value = 0;
  if (!n.IsScalar() || !YAML::convert<double>::decode(n, value) || !std::isfinite(value)) {
    return error(key, fmt::format("expected a finite number, found '{}'", n.IsScalar() ? n.Scalar() : "?"));
  }
  return value;
}

Result<std::string> YamlFields::sha256(const std::string& key) const {
  KVP_ASSIGN_OR_RETURN(std::string s, str(key));
  if (!is_sha256_hex(s)) return error(key, fmt::format("expected 64 lower-case hex digits, found '{}'", s));
  return s;
}

Result<std::string> YamlFields::file_name(const std::string& key) const {
  KVP_ASSIGN_OR_RETURN(std::string s, str(key));
  if (s.empty() || s.find('/') != std::string::npos || s == "." || s == "..") {
    return error(key, fmt::format("expected a file name inside the directory, found '{}'", s));
  }
  return s;
}

Status YamlFields::only(const std::set<std::string>& known) const {
  KVP_RETURN_IF_ERROR(expect_map());
  for (const auto& kv : node_) {
    if (!kv.first.IsScalar()) {
      return make_error("{}: {}: expected field names, found a key that is a list or a map", path_, node_name());
    }
    const std::string key = kv.first.as<std::string>();
    if (!known.contains(key)) {
      std::string list;
      for (const std::string& k : known) list += (list.empty() ? "" : ", ") + k;
      return error(key, fmt::format("unknown field (expected one of: {})", list));
    }
  }
  return ok_status();
}

Result<YAML::Node> parse_yaml_map(const std::string& text, const std::string& path) {
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    return make_error("{}: not valid YAML: {}", path, e.msg);
  }
  if (!root.IsMap()) return make_error("{}: expected a YAML map", path);
  return root;
}

}  // namespace kvp
