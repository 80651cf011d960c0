#include "planner/task_trace.h"

#include <fmt/format.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <numeric>
#include <set>

#include <nlohmann/json.hpp>

#include "common/file_util.h"
#include "planner/calibration.h"
#include "planner/plan/measured.h"
#include "planner/policy/layer_step.h"

namespace kvp {

namespace {

constexpr char kMagic[8] = {'K', 'V', 'P', 'T', 'A', 'S', 'K', '1'};
constexpr const char* kFormat = "kvplan-task-trace";
constexpr int kVersion = 1;
// Bounds a header may claim (a corrupt one must not make the reader allocate without limit).
constexpr int kMaxLayers = 1024, kMaxHeads = 1024, kMaxScorers = 64;
constexpr int64_t kMaxCut = 1 << 22;

}  // namespace

uint16_t to_bf16(float x) {
  uint32_t u = std::bit_cast<uint32_t>(x);
  if (std::isnan(x)) return static_cast<uint16_t>((u >> 16) | 0x40);
  u += 0x7fff + ((u >> 16) & 1);
  return static_cast<uint16_t>(u >> 16);
}

float from_bf16(uint16_t b) { return std::bit_cast<float>(uint32_t(b) << 16); }

int TaskTrace::scorer_for(const Policy& policy) const {
  for (size_t s = 0; s < scorers.size(); ++s) {
    auto p = make_policy(scorers[s].policy, scorers[s].params);
    if (p.ok() && same_prefill(*p.value(), policy)) return static_cast<int>(s);
  }
  return -1;
}

Status TaskTrace::write_to(const std::function<Status(const void*, size_t)>& write) const {
  const size_t heads = size_t(n_layers) * n_kv_heads;
  nlohmann::ordered_json h = {{"format", kFormat},       {"version", kVersion},     {"model_fingerprint", model_fingerprint},
                              {"n_layers", n_layers},    {"n_kv_heads", n_kv_heads}, {"cut_point", cut_point},
                              {"tasks", tasks}};
  nlohmann::ordered_json sc = nlohmann::ordered_json::array();
  for (const TaskTraceScorer& s : scorers) {
    sc.push_back({{"policy", s.policy}, {"detail", policy_detail(s.policy, s.params)}});
  }
  h["scorers"] = sc;
  nlohmann::ordered_json insts = nlohmann::ordered_json::array();
  for (const TaskTraceInstance& t : instances) {
    KVP_CHECK(t.score.size() == scorers.size() && t.aux.size() == scorers.size() &&
              t.answer_attention.size() == heads * t.cut, "task trace instance {}: arrays of the wrong shape", t.id);
    nlohmann::ordered_json needles = nlohmann::ordered_json::array();
    for (const auto& [b, e] : t.needles) needles.push_back({b, e});
    std::vector<bool> aux;
    for (size_t s = 0; s < scorers.size(); ++s) {
      KVP_CHECK(t.score[s].size() == heads * t.cut && (t.aux[s].empty() || t.aux[s].size() == heads * t.cut));
      aux.push_back(!t.aux[s].empty());
    }
    insts.push_back({{"id", t.id},           {"family", t.family},         {"length", t.length},
                     {"prompt_tokens", t.prompt_tokens}, {"cut", t.cut}, {"needles", needles},
                     {"full_score", t.full_score}, {"answer_rows", t.answer_rows}, {"aux", aux}});
  }
  h["instances"] = insts;
  const std::string header = h.dump();
  KVP_RETURN_IF_ERROR(write(kMagic, sizeof kMagic));
  const uint64_t len = header.size();
  KVP_RETURN_IF_ERROR(write(&len, sizeof len));
  KVP_RETURN_IF_ERROR(write(header.data(), header.size()));
  std::vector<uint16_t> half;
  for (const TaskTraceInstance& t : instances) {
    for (size_t s = 0; s < scorers.size(); ++s) {
      KVP_RETURN_IF_ERROR(write(t.score[s].data(), t.score[s].size() * sizeof(float)));
      if (!t.aux[s].empty()) KVP_RETURN_IF_ERROR(write(t.aux[s].data(), t.aux[s].size() * sizeof(float)));
    }
    half.resize(t.answer_attention.size());
    for (size_t i = 0; i < half.size(); ++i) half[i] = to_bf16(t.answer_attention[i]);
    KVP_RETURN_IF_ERROR(write(half.data(), half.size() * sizeof(uint16_t)));
  }
  return ok_status();
}

Status TaskTrace::save(const std::string& path) const {
  return write_file_atomic(path, [&](std::FILE* out) -> Status {
    return write_to([&](const void* data, size_t size) { return write_all(out, data, size, path); });
  });
}

Result<TaskTrace> TaskTrace::parse(std::span<const uint8_t> bytes, const std::string& path) {
  if (bytes.size() < sizeof kMagic + 8 || std::memcmp(bytes.data(), kMagic, sizeof kMagic) != 0) {
    return make_error("{}: not a kvplan task trace (no KVPTASK1 magic; write one with kvplan record --tasks)", path);
  }
  uint64_t len = 0;
  std::memcpy(&len, bytes.data() + sizeof kMagic, 8);
  const size_t body = sizeof kMagic + 8;
  if (len > bytes.size() - body) return make_error("{}: header: {} bytes claimed, {} in the file (truncated?)", path, len, bytes.size() - body);
  nlohmann::json h;
  try {
    h = nlohmann::json::parse(bytes.begin() + body, bytes.begin() + body + static_cast<ptrdiff_t>(len));
  } catch (const std::exception& e) {
    return make_error("{}: header: not JSON: {}", path, e.what());
  }
  // Field readers: the field's name in every error.
  auto field = [&](const nlohmann::json& obj, const std::string& where, const char* key) -> Result<const nlohmann::json*> {
    if (!obj.is_object() || !obj.contains(key)) return make_error("{}: {}{}: missing", path, where, key);
    return &obj.at(key);
  };
  auto get_int = [&](const nlohmann::json& obj, const std::string& where, const char* key, int64_t lo,
                     int64_t hi) -> Result<int64_t> {
    KVP_ASSIGN_OR_RETURN(const nlohmann::json* v, field(obj, where, key));
    if (!v->is_number_integer() || v->get<int64_t>() < lo || v->get<int64_t>() > hi) {
      return make_error("{}: {}{}: expected an integer in [{}, {}], found {}", path, where, key, lo, hi, v->dump());
    }
    return v->get<int64_t>();
  };
  auto get_string = [&](const nlohmann::json& obj, const std::string& where, const char* key) -> Result<std::string> {
    KVP_ASSIGN_OR_RETURN(const nlohmann::json* v, field(obj, where, key));
    if (!v->is_string()) return make_error("{}: {}{}: expected a string, found {}", path, where, key, v->dump());
    return v->get<std::string>();
  };
  KVP_ASSIGN_OR_RETURN(std::string format, get_string(h, "", "format"));
  if (format != kFormat) return make_error("{}: format: expected '{}', found '{}'", path, kFormat, format);
  KVP_ASSIGN_OR_RETURN(int64_t version, get_int(h, "", "version", 0, 1 << 20));
  if (version != kVersion) return make_error("{}: version: this kvplan reads version {}, found {}", path, kVersion, version);
  TaskTrace t;
  KVP_ASSIGN_OR_RETURN(t.model_fingerprint, get_string(h, "", "model_fingerprint"));
  KVP_ASSIGN_OR_RETURN(int64_t layers, get_int(h, "", "n_layers", 1, kMaxLayers));
  KVP_ASSIGN_OR_RETURN(int64_t kv_heads, get_int(h, "", "n_kv_heads", 1, kMaxHeads));
  t.n_layers = static_cast<int>(layers), t.n_kv_heads = static_cast<int>(kv_heads);
  KVP_ASSIGN_OR_RETURN(t.cut_point, get_string(h, "", "cut_point"));
  if (t.cut_point != "agnostic" && t.cut_point != "aware") {
    return make_error("{}: cut_point: expected agnostic or aware, found '{}'", path, t.cut_point);
  }
  KVP_ASSIGN_OR_RETURN(t.tasks, get_string(h, "", "tasks"));
  KVP_ASSIGN_OR_RETURN(const nlohmann::json* scorers, field(h, "", "scorers"));
  if (!scorers->is_array() || scorers->empty() || scorers->size() > kMaxScorers) {
    return make_error("{}: scorers: expected an array of 1 to {} scorers", path, kMaxScorers);
  }
  for (size_t s = 0; s < scorers->size(); ++s) {
    const std::string where = fmt::format("scorers[{}].", s);
    TaskTraceScorer sc;
    KVP_ASSIGN_OR_RETURN(sc.policy, get_string((*scorers)[s], where, "policy"));
    KVP_ASSIGN_OR_RETURN(std::string detail, get_string((*scorers)[s], where, "detail"));
    Measured m;
    m.policy = sc.policy, m.policy_detail = detail;
    KVP_ASSIGN_OR_RETURN(sc.params, measured_params(m, fmt::format("{}: {}detail", path, where)));
    const auto policy = make_policy(sc.policy, sc.params);
    if (!policy.ok()) return make_error("{}: {}policy: {}", path, where, policy.error().message());
    t.scorers.push_back(std::move(sc));
  }
  KVP_ASSIGN_OR_RETURN(const nlohmann::json* insts, field(h, "", "instances"));
  if (!insts->is_array()) return make_error("{}: instances: expected an array", path);
  const size_t heads = size_t(t.n_layers) * t.n_kv_heads;
  size_t at = body + len;
  auto take = [&](size_t n_bytes, const std::string& what) -> Result<const uint8_t*> {
    if (n_bytes > bytes.size() - at) return make_error("{}: {}: the file ends {} bytes short (truncated?)", path, what, n_bytes - (bytes.size() - at));
    const uint8_t* p = bytes.data() + at;
    at += n_bytes;
    return p;
  };
  for (size_t i = 0; i < insts->size(); ++i) {
    const nlohmann::json& j = (*insts)[i];
    const std::string where = fmt::format("instances[{}].", i);
    TaskTraceInstance inst;
    KVP_ASSIGN_OR_RETURN(inst.id, get_string(j, where, "id"));
    KVP_ASSIGN_OR_RETURN(inst.family, get_string(j, where, "family"));
    KVP_ASSIGN_OR_RETURN(int64_t length, get_int(j, where, "length", 1, kMaxCut));
    KVP_ASSIGN_OR_RETURN(int64_t prompt, get_int(j, where, "prompt_tokens", 1, kMaxCut));
    KVP_ASSIGN_OR_RETURN(int64_t cut, get_int(j, where, "cut", 1, prompt));
    inst.length = static_cast<int>(length), inst.prompt_tokens = static_cast<int>(prompt), inst.cut = static_cast<int>(cut);
    KVP_ASSIGN_OR_RETURN(int64_t rows, get_int(j, where, "answer_rows", 1, 1 << 20));
    inst.answer_rows = static_cast<int>(rows);
    KVP_ASSIGN_OR_RETURN(const nlohmann::json* score, field(j, where, "full_score"));
    if (!score->is_number() || !(score->get<double>() >= 0 && score->get<double>() <= 1)) {
      return make_error("{}: {}full_score: expected a number in [0, 1], found {}", path, where, score->dump());
    }
    inst.full_score = score->get<double>();
    KVP_ASSIGN_OR_RETURN(const nlohmann::json* needles, field(j, where, "needles"));
    if (!needles->is_array()) return make_error("{}: {}needles: expected an array of [begin, end] spans", path, where);
    for (size_t k = 0; k < needles->size(); ++k) {
      const nlohmann::json& span = (*needles)[k];
      if (!span.is_array() || span.size() != 2 || !span[0].is_number_integer() || !span[1].is_number_integer() ||
          span[0].get<int64_t>() < 0 || span[0].get<int64_t>() >= span[1].get<int64_t>() || span[1].get<int64_t>() > cut) {
        return make_error("{}: {}needles[{}]: expected [begin, end] with 0 <= begin < end <= cut {}, found {}", path, where,
                          k, cut, span.dump());
      }
      inst.needles.emplace_back(span[0].get<int32_t>(), span[1].get<int32_t>());
    }
    KVP_ASSIGN_OR_RETURN(const nlohmann::json* aux, field(j, where, "aux"));
    if (!aux->is_array() || aux->size() != t.scorers.size()) {
      return make_error("{}: {}aux: expected one true/false per scorer ({})", path, where, t.scorers.size());
    }
    const size_t n = heads * inst.cut;
    for (size_t s = 0; s < t.scorers.size(); ++s) {
      if (!(*aux)[s].is_boolean()) return make_error("{}: {}aux[{}]: expected true or false", path, where, s);
      KVP_ASSIGN_OR_RETURN(const uint8_t* p, take(n * sizeof(float), fmt::format("{}score[{}]", where, s)));
      inst.score.emplace_back(n);
      std::memcpy(inst.score.back().data(), p, n * sizeof(float));
      inst.aux.emplace_back();
      if ((*aux)[s].get<bool>()) {
        KVP_ASSIGN_OR_RETURN(const uint8_t* q, take(n * sizeof(float), fmt::format("{}aux[{}]", where, s)));
        inst.aux.back().resize(n);
        std::memcpy(inst.aux.back().data(), q, n * sizeof(float));
      }
      for (float v : inst.score.back()) {
        if (std::isnan(v)) return make_error("{}: {}score[{}]: NaN in the recorded scores", path, where, s);
      }
    }
    KVP_ASSIGN_OR_RETURN(const uint8_t* a, take(n * sizeof(uint16_t), where + "answer_attention"));
    inst.answer_attention.resize(n);
    for (size_t e = 0; e < n; ++e) {
      uint16_t b;
      std::memcpy(&b, a + e * 2, 2);
      const float v = from_bf16(b);
      if (!(v >= 0 && v <= 1.0001f)) {
        return make_error("{}: {}answer_attention: {} is not an attention weight", path, where, v);
      }
      inst.answer_attention[e] = v;
    }
    t.instances.push_back(std::move(inst));
  }
  if (at != bytes.size()) return make_error("{}: {} bytes after the last instance's arrays (not a task trace this kvplan wrote)", path, bytes.size() - at);
  return t;
}

Result<TaskTrace> TaskTrace::load(const std::string& path) {
  KVP_ASSIGN_OR_RETURN(std::vector<std::byte> bytes, read_file_bytes(path));
  return parse(std::span(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()), path);
}

Result<TaskFeatures> replay_task(const TaskTrace& trace, const TaskTraceInstance& inst, const Policy& policy,
                                 std::span<const int32_t> budgets) {
  const int n_kv = trace.n_kv_heads, n = inst.cut;
  KVP_CHECK(budgets.size() == size_t(trace.n_layers) * n_kv, "replay_task: one budget per layer and head");
  TaskFeatures f;
  f.full_score = inst.full_score;
  const int scorer = policy.evicts() ? trace.scorer_for(policy) : -1;
  if (policy.evicts() && scorer < 0) {
    return make_error("task trace: no recorded scorer scores as {} does (record with --policies {})", policy.name(),
                      policy.name());
  }
  std::vector<uint8_t> is_needle(n, 0);
  int64_t needle_tokens = 0;
  for (const auto& [b, e] : inst.needles) {
    for (int32_t p = b; p < e; ++p) needle_tokens += !is_needle[p], is_needle[p] = 1;
  }
  std::vector<int32_t> pos(n);
  for (int j = 0; j < n; ++j) pos[j] = j;
  std::vector<std::vector<float>> score(n_kv), aux(n_kv);
  std::vector<SlotArrays> views(n_kv);
  double mass_sum = 0;
  std::vector<double> token_attn(n, 0.0), token_kept(n, 0.0);  // per needle position, over layers and heads
  int64_t needles_kept = 0;
  for (int l = 0; l < trace.n_layers; ++l) {
    std::vector<std::vector<int>> kept(n_kv);
    if (scorer >= 0) {
      for (int h = 0; h < n_kv; ++h) {
        const size_t off = inst.head_offset(n_kv, l, h);
        score[h].assign(inst.score[scorer].begin() + off, inst.score[scorer].begin() + off + n);
        views[h] = SlotArrays{.n_used = n, .budget = n, .pos = pos.data(), .score = score[h].data(), .aux = nullptr};
        if (!inst.aux[scorer].empty()) {
          aux[h].assign(inst.aux[scorer].begin() + off, inst.aux[scorer].begin() + off + n);
          views[h].aux = aux[h].data();
        }
      }
      kept = select_cut(policy, views, budgets.subspan(size_t(l) * n_kv, n_kv), n - 1, true);
    } else {
      for (int h = 0; h < n_kv; ++h) {
        kept[h].resize(n);
        for (int j = 0; j < n; ++j) kept[h][j] = j;
      }
    }
    for (int h = 0; h < n_kv; ++h) {
      const float* a = inst.answer_attention.data() + inst.head_offset(n_kv, l, h);
      double total = 0, held = 0;
      for (int j = 0; j < n; ++j) {
        total += a[j];
        if (is_needle[j]) token_attn[j] += a[j];
      }
      for (int j : kept[h]) {
        held += a[j];
        needles_kept += is_needle[j];
        if (is_needle[j]) token_kept[j] += a[j];
      }
      mass_sum += total > 0 ? held / total : 1.0;
    }
  }
  const double heads = double(trace.n_layers) * n_kv;
  f.mass = mass_sum / heads;
  f.needles = needle_tokens > 0 ? double(needles_kept) / (double(needle_tokens) * heads) : f.mass;
  const double needle_attn = std::accumulate(token_attn.begin(), token_attn.end(), 0.0);
  const double needle_kept_attn = std::accumulate(token_kept.begin(), token_kept.end(), 0.0);
  f.needle_mass = needle_attn > 0 ? needle_kept_attn / needle_attn : f.mass;
  // Starts at needle_mass, which is mass where no needle token draws attention.
  f.needle_min = f.needle_mass;
  const double most = *std::max_element(token_attn.begin(), token_attn.end());
  for (int j = 0; most > 0 && j < n; ++j) {
    if (is_needle[j] && token_attn[j] >= 0.1 * most) f.needle_min = std::min(f.needle_min, token_kept[j] / token_attn[j]);
  }
  return f;
}

}  // namespace kvp
