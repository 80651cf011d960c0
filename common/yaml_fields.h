// Reading YAML maps field by field with errors that name the file and the field, and refusing
// unknown fields. Used by every strictly parsed kvplan file (trace manifests, plans, ...).
#pragma once

#include <yaml-cpp/yaml.h>

#include <set>
#include <string>

#include "common/status.h"

namespace kvp {

bool is_sha256_hex(const std::string& s);

class YamlFields {
 public:
  // `prefix` is prepended to field names in messages, e.g. "model." or "sequences[3].".
  YamlFields(const YAML::Node& node, std::string path, std::string prefix)
      : node_(node), path_(std::move(path)), prefix_(std::move(prefix)) {}

  bool has(const std::string& key) const { return static_cast<bool>(node_[key]); }
  Result<YAML::Node> child(const std::string& key) const;
  Result<std::string> str(const std::string& key) const;
  Result<int> integer(const std::string& key, int lo, int hi) const;
  Result<int64_t> integer64(const std::string& key, int64_t lo, int64_t hi) const;
  Result<double> number(const std::string& key) const;
  Result<std::string> sha256(const std::string& key) const;
  // A plain file name (no directory part).
  Result<std::string> file_name(const std::string& key) const;
  // Every key of the node must be one of `known`. Every accessor first requires the node to be a
  // map, so a scalar or a list where fields belong is an error naming it, not an exception.
  Status only(const std::set<std::string>& known) const;
  // The fields of `node`, the child `key` of this node (which must outlive them): "<prefix><key>.".
  YamlFields nested(const YAML::Node& node, const std::string& key) const {
    return YamlFields(node, path_, prefix_ + key + ".");
  }
  // "<path>: <prefix><key>: <message>"
  Error error(const std::string& key, const std::string& message) const;

 private:
  Status expect_map() const;
  std::string node_name() const;
  const YAML::Node& node_;
  std::string path_;
  std::string prefix_;
};

// Parses YAML text into a map node, or an error naming the file.
Result<YAML::Node> parse_yaml_map(const std::string& text, const std::string& path);

}  // namespace kvp
