#include "executor/gpu/gpu_backend.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include <fmt/format.h>

#include "kernels/score_rule.h"
#include "planner/policy/policies.h"

namespace kvp {
namespace {

constexpr int kNumWeights = static_cast<int>(Weight::kClassifier) + 1;

bool is_matrix(Weight w) {
  return w != Weight::kRmsAtt && w != Weight::kRmsFfn && w != Weight::kRmsFinal;
}
bool is_global(Weight w) { return w == Weight::kRmsFinal || w == Weight::kClassifier; }

std::vector<_Float16> to_half(const float* x, size_t n) {
  std::vector<_Float16> out(n);
  for (size_t i = 0; i < n; ++i) out[i] = static_cast<_Float16>(x[i]);
  return out;
}

// The kernels' score rule of each policy that runs on the GPU (kernels/score_rule.h).
struct PolicyRule {
  std::string_view name;
  math::ScoreRule rule;
};
constexpr PolicyRule kPolicyRules[] = {
    {"full", math::kScoreZero},          {"window", math::kScorePosition},      {"h2o", math::kScoreAttention},
    {"vatp", math::kScoreValueAttention}, {"tova", math::kScoreLastAttention},  {"snapkv", math::kScoreWindowAttention},
    {"knorm", math::kScoreKeyNorm},       {"random", math::kScoreRandom},
};

const PolicyRule* rule_of(std::string_view name) {
  for (const PolicyRule& r : kPolicyRules) {
    if (r.name == name) return &r;
  }
  return nullptr;
}

}  // namespace

namespace {

// The policy whose scores a policy keeps: kvcrush's base, else itself.
const Policy& scored_policy(const Policy& policy) {
  if (policy.name() == "kvcrush") return static_cast<const KvCrushPolicy&>(policy).base();
  return policy;
}

}  // namespace

Status GpuBackend::supports(const Policy& policy) {
  if (policy.name() == "kvcrush") {
    if (rule_of(scored_policy(policy).name())) return {};
    return make_error("policy kvcrush: its base '{}' does not run on the GPU backend", scored_policy(policy).name());
  }
  if (rule_of(policy.name())) return {};
  std::string names;
  for (const PolicyRule& r : kPolicyRules) names += (names.empty() ? "" : ", ") + std::string(r.name);
  return make_error("policy '{}' does not run on the GPU backend (it runs {})", policy.name(), names);
}

Status GpuBackend::supports_model(const ModelConfig& c) {
  if (c.head_dim() > 128) return make_error("the GPU kernels take head_dim up to 128, the model has {}", c.head_dim());
  if (c.group_size() > 8) {
    return make_error("the GPU kernels take up to 8 query heads per KV head, the model has {}", c.group_size());
  }
  if (c.rope_style != RopeStyle::kInterleaved) {
    return make_error("the GPU backend runs interleaved RoPE only; this {} model is rotate-half (run it on --backend cpu)",
                      c.architecture);
  }
  if (c.qkv_bias) return make_error("the GPU backend does not add q/k/v biases ({}); run it on --backend cpu", c.architecture);
  return ok_status();
}

GpuBackend::GpuBackend(const ModelWeights& weights, std::unique_ptr<Device> device, GpuBackendOptions options)
    : weights_(weights),
      config_(weights.config()),
      device_(std::move(device)),
      options_(options),
      name_(std::string(device_->kind()) == "cuda" ? "cuda" : "gpu-emulated"),
      threads_(device_->block_threads()) {
  const Status runs = supports_model(config_);
  KVP_CHECK(runs.ok(), "{}", runs.error().message());
  const bool half = options_.weights == KvDtype::kF16;
  Device& d = *device_;
  auto upload = [&](const void* src, size_t bytes) {
    DeviceBuffer b(d, bytes);
    d.upload(b.get(), src, bytes);
    weight_bytes_ += static_cast<int64_t>(bytes);
    return b;
  };
  weight_bufs_.resize(static_cast<size_t>(config_.n_layers + 1) * kNumWeights);
  weight_types_.assign(weight_bufs_.size(), DeviceWeight::kF32);
  for (int l = 0; l <= config_.n_layers; ++l) {
    for (int wi = 0; wi < kNumWeights; ++wi) {
      const Weight w = static_cast<Weight>(wi);
      if (is_global(w) != (l == config_.n_layers)) continue;
      const WeightShape s = weight_shape(config_, w);
      const size_t n = static_cast<size_t>(s.out) * s.in;
      DeviceBuffer& dst = weight_bufs_[static_cast<size_t>(l) * kNumWeights + wi];
      if (!is_matrix(w)) {
        dst = upload(norm_weight(weights_, w, l), n * sizeof(float));
        continue;
      }
      const WeightTensor& tensor = matrix_weight(weights_, w, l);
      DeviceWeight& type = weight_types_[static_cast<size_t>(l) * kNumWeights + wi];
      if (options_.q8_0 && row_layout_ok(WeightType::kQ8_0, tensor.cols)) {
        type = DeviceWeight::kQ8_0;
        if (tensor.type == WeightType::kQ8_0) {
          dst = upload(tensor.data, tensor.bytes());
        } else {
          const std::vector<std::byte> q = quantize(dequantize(tensor), tensor.rows, tensor.cols, WeightType::kQ8_0);
          dst = upload(q.data(), q.size());
        }
        continue;
      }
      // Widened one tensor at a time on the host (the device holds f32 or binary16 weights).
      const std::vector<float> host = dequantize(tensor);
      if (half) {
        type = DeviceWeight::kF16;
        const std::vector<_Float16> h = to_half(host.data(), n);
        dst = upload(h.data(), n * sizeof(_Float16));
      } else {
        type = DeviceWeight::kF32;
        dst = upload(host.data(), n * sizeof(float));
      }
    }
  }
  const std::vector<float> embedding = dequantize(weights_.token_embedding());
  embedding_ = upload(embedding.data(), embedding.size() * sizeof(float));
  std::vector<float> cos_t, sin_t;
  rope_tables(config_, &cos_t, &sin_t);
  rope_cos_ = DeviceBuffer(d, cos_t.size() * sizeof(float));
  rope_sin_ = DeviceBuffer(d, sin_t.size() * sizeof(float));
  d.upload(rope_cos_.get(), cos_t.data(), cos_t.size() * sizeof(float));
  d.upload(rope_sin_.get(), sin_t.data(), sin_t.size() * sizeof(float));
}

GpuBackend::~GpuBackend() = default;

const DeviceBuffer& GpuBackend::weight(Weight w, int layer_idx) const {
  const int l = is_global(w) ? config_.n_layers : layer_idx;
  return weight_bufs_[static_cast<size_t>(l) * kNumWeights + static_cast<int>(w)];
}

void GpuBackend::set_policy(std::shared_ptr<const Policy> policy) {
  policy_ = policy ? std::move(policy) : keep_all_policy();
  const Status ok = supports(*policy_);
  KVP_CHECK(ok.ok(), "{}", ok.error().message());
  const std::string_view name = scored_policy(*policy_).name();
  score_args_ = math::ScoreArgs{
      .rule = rule_of(name)->rule,
      .per_query_key = name == "vatp" && policy_->params().vatp_base == VatpBase::kMean ? 1 : 0,
      .seed = policy_->params().seed,
      .snap_window = policy_->params().snap_window,
      .snap_kernel = policy_->params().snap_kernel};
  shared_ = policy_->shared_per_layer();
  crush_period_ = policy_->cut_period();
  delta_ = policy_->params().delta;
  sinks_ = policy_->params().sinks;
  recent_ = policy_->params().recent;
  evicts_ = policy_->evicts();
}

void GpuBackend::reset_sequences(const std::vector<KvBudgets>& budgets, std::shared_ptr<const Policy> policy) {
  set_policy(std::move(policy));
  const std::string_view name = policy_->name();
  pool_ = false;
  kv_arena_.reset();
  budgets_ = budgets;
  max_capacity_ = 0;
  const int L = config_.n_layers, H = config_.n_kv_heads, hd = config_.head_dim();
  int64_t total_slots = 0, bytes = 0;
  for (size_t s = 0; s < budgets.size(); ++s) {
    const KvBudgets& b = budgets[s];
    KVP_CHECK(b.n_layers == L && b.n_kv_heads == H && b.head_dim == hd, "sequence {}: budgets for another model", s);
    KVP_CHECK(b.dtype == budgets[0].dtype && b.aux_floats_per_slot == budgets[0].aux_floats_per_slot,
              "sequence {}: every sequence's cache must have the same dtype and aux floats", s);
    KVP_CHECK(b.aux_floats_per_slot == (score_args_.rule == math::kScoreValueAttention ? 1 : 0),
              "sequence {}: {} aux floats per slot; policy {} keeps {}", s, b.aux_floats_per_slot, name,
              score_args_.rule == math::kScoreValueAttention ? 1 : 0);
    for (int32_t budget : b.budget_tokens) {
      KVP_CHECK(budget >= 1, "sequence {}: budget {} below 1", s, budget);
      max_capacity_ = std::max(max_capacity_, budget);
      KVP_CHECK(!evicts_ || budget >= sinks_ + recent_,
                "sequence {}: budget {} below the {} protected positions (sinks {} + recent {})", s, budget,
                sinks_ + recent_, sinks_, recent_);
    }
    for (int l = 0; shared_ && l < L; ++l) {
      for (int h = 1; h < H; ++h) {
        KVP_CHECK(b.budget(l, h) == b.budget(l, 0),
                  "sequence {}: policy {} keeps one set of positions per layer, so layer {}'s heads need equal budgets",
                  s, name, l);
      }
    }
    KVP_CHECK(b.compressed() == budgets[0].compressed() && (!b.compressed() || b.compression == budgets[0].compression),
              "sequence {}: every sequence's cache must have the same ThinK/Mustafar compression", s);
    total_slots += b.total_slots();
    bytes += b.kv_bytes();
  }
  kv_half_ = !budgets.empty() && budgets[0].dtype == KvDtype::kF16;
  layer_shape_.clear();
  if (!budgets.empty() && budgets[0].compressed()) {
    for (int l = 0; l < L; ++l) {
      layer_shape_.push_back(compressed_shape(budgets[0].layer_compression(l), hd, kv_half_ ? 2 : 4));
    }
  }

  const size_t heads = budgets.size() * L * H;
  head_offset_.assign(heads, 0);
  head_capacity_.assign(heads, 0);
  head_block_.assign(layer_shape_.empty() ? 0 : heads, 0);
  n_used_.assign(heads, 0);
  prompts_.clear();
  prompts_.resize(budgets.size());
  peak_kv_bytes_ = 0;
  int64_t next = 0, next_block = 0;
  for (size_t s = 0; s < budgets.size(); ++s) {
    for (int l = 0; l < L; ++l) {
      for (int h = 0; h < H; ++h) {
        const size_t i = head_index(static_cast<int>(s), l, h);
        head_offset_[i] = next;
        head_capacity_[i] = budgets[s].budget(l, h);
        next += head_capacity_[i];
        if (!layer_shape_.empty()) {
          head_block_[i] = next_block;
          next_block += compressed_parts(layer_shape_[l], head_capacity_[i]).bytes;
        }
      }
    }
  }
  KVP_CHECK(allocate_arena(total_slots, next_block) == bytes, "KV arena layout does not add up to the plan's bytes");
  if (!layer_shape_.empty()) {
    head_block_dev_ = DeviceBuffer(*device_, std::max<size_t>(1, heads) * sizeof(int64_t));
    device_->upload(head_block_dev_.get(), head_block_.data(), heads * sizeof(int64_t));
  }
  head_offset_dev_ = DeviceBuffer(*device_, std::max<size_t>(1, heads) * sizeof(int64_t));
  head_capacity_dev_ = DeviceBuffer(*device_, std::max<size_t>(1, heads) * sizeof(int32_t));
  device_->upload(head_offset_dev_.get(), head_offset_.data(), heads * sizeof(int64_t));
  device_->upload(head_capacity_dev_.get(), head_capacity_.data(), heads * sizeof(int32_t));
}

int64_t GpuBackend::allocate_arena(int64_t slots, int64_t block_bytes) {
  // Regions of the arena, in this order (keys, values, positions, scores, VATP's value norms, and a
  // compressed cache's head blocks in place of the keys and values); their sizes add up to the
  // budgets' bytes exactly.
  const size_t elem = kv_half_ ? 2 : 4;
  const size_t kv_region = layer_shape_.empty() ? static_cast<size_t>(slots) * config_.head_dim() * elem : 0;
  const size_t meta_region = static_cast<size_t>(slots) * sizeof(float);
  const bool l1 = score_args_.rule == math::kScoreValueAttention;
  const size_t blocks_at = 2 * kv_region + 2 * meta_region + (l1 ? meta_region : 0);
  const size_t bytes = blocks_at + static_cast<size_t>(block_bytes);
  kv_arena_ = DeviceBuffer(*device_, bytes);
  auto* base = kv_arena_.as<std::byte>();
  k_ = base;
  v_ = base + kv_region;
  pos_ = reinterpret_cast<int32_t*>(base + 2 * kv_region);
  score_ = reinterpret_cast<float*>(base + 2 * kv_region + meta_region);
  value_l1_ = l1 ? reinterpret_cast<float*>(base + 2 * kv_region + 2 * meta_region) : nullptr;
  blocks_ = layer_shape_.empty() ? nullptr : reinterpret_cast<uint8_t*>(base + blocks_at);
  return static_cast<int64_t>(bytes);
}

void GpuBackend::reset_pool(int n_sequences, int64_t pool_bytes, KvDtype dtype, std::shared_ptr<const Policy> policy) {
  set_policy(std::move(policy));
  const int L = config_.n_layers, H = config_.n_kv_heads, hd = config_.head_dim();
  KvBudgets empty = KvBudgets::uniform(L, H, hd, 0, dtype);
  empty.aux_floats_per_slot = score_args_.rule == math::kScoreValueAttention ? 1 : 0;
  pool_ = true;
  pool_slots_ = pool_bytes / empty.slot_bytes();
  KVP_CHECK(pool_slots_ >= 1, "a KV pool of {} bytes holds no slot of {} bytes", pool_bytes, empty.slot_bytes());
  free_slots_ = {{0, pool_slots_}};
  seq_slots_.assign(static_cast<size_t>(n_sequences), {0, 0});
  budgets_.assign(static_cast<size_t>(n_sequences), empty);
  in_use_bytes_ = 0;
  max_capacity_ = 0;
  kv_half_ = dtype == KvDtype::kF16;
  layer_shape_.clear();
  head_block_.clear();
  allocate_arena(pool_slots_);
  const size_t heads = static_cast<size_t>(n_sequences) * L * H;
  head_offset_.assign(heads, 0);
  head_capacity_.assign(heads, 0);
  n_used_.assign(heads, 0);
  prompts_.clear();
  prompts_.resize(static_cast<size_t>(n_sequences));
  peak_kv_bytes_ = 0;
  head_offset_dev_ = DeviceBuffer(*device_, std::max<size_t>(1, heads) * sizeof(int64_t));
  head_capacity_dev_ = DeviceBuffer(*device_, std::max<size_t>(1, heads) * sizeof(int32_t));
}

void GpuBackend::open_sequence(int seq, const KvBudgets& b, std::shared_ptr<const Policy> policy) {
  KVP_CHECK(pool_, "the {} backend opens single sequences only in a pool (reset_pool)", name_);
  KVP_CHECK(!b.compressed(), "the {} backend's serving pool holds dense caches only (no ThinK or Mustafar)", name_);
  KVP_CHECK(seq >= 0 && seq < static_cast<int>(budgets_.size()), "open_sequence: no sequence {}", seq);
  // One policy runs on the device for every sequence: the kernels take its rule once per launch.
  const Policy& p = policy ? *policy : *keep_all_policy();
  const PolicyParams& a = p.params();
  const PolicyParams& mine = policy_->params();
  KVP_CHECK(p.name() == policy_->name() && a.sinks == mine.sinks && a.recent == mine.recent &&
                a.vatp_base == mine.vatp_base && a.seed == mine.seed && a.snap_window == mine.snap_window &&
                a.snap_kernel == mine.snap_kernel,
            "sequence {}: policy {} (sinks {}, recent {}); the {} backend's pool runs {} (sinks {}, recent {}) for every "
            "sequence",
            seq, p.name(), a.sinks, a.recent, name_, policy_->name(), mine.sinks, mine.recent);
  KVP_CHECK(b.n_layers == config_.n_layers && b.n_kv_heads == config_.n_kv_heads && b.head_dim == config_.head_dim() &&
                b.dtype == budgets_[seq].dtype && b.aux_floats_per_slot == budgets_[seq].aux_floats_per_slot,
            "sequence {}: budgets of another shape, dtype or policy than the pool's", seq);
  close_sequence(seq);
  const int L = config_.n_layers, H = config_.n_kv_heads;
  for (int l = 0; l < L; ++l) {
    for (int h = 0; h < H; ++h) {
      const int32_t budget = b.budget(l, h);
      KVP_CHECK(budget >= 1 && (!evicts_ || budget >= sinks_ + recent_),
                "sequence {}: budget {} below the {} protected positions", seq, budget, sinks_ + recent_);
      KVP_CHECK(!shared_ || budget == b.budget(l, 0), "sequence {}: policy {} needs equal budgets in a layer", seq,
                policy_->name());
    }
  }
  // First fit in the free ranges of slots.
  const int64_t need = b.total_slots();
  auto it = std::find_if(free_slots_.begin(), free_slots_.end(), [&](const auto& r) { return r.second >= need; });
  KVP_CHECK(it != free_slots_.end(), "sequence {}: no free range of {} slots in the KV pool of {}", seq, need,
            pool_slots_);
  const int64_t start = it->first;
  if (it->second == need) {
    free_slots_.erase(it);
  } else {
    *it = {it->first + need, it->second - need};
  }
  seq_slots_[seq] = {start, need};
  int64_t next = start;
  for (int l = 0; l < L; ++l) {
    for (int h = 0; h < H; ++h) {
      const size_t i = head_index(seq, l, h);
      head_offset_[i] = next;
      head_capacity_[i] = b.budget(l, h);
      n_used_[i] = 0;
      next += head_capacity_[i];
      max_capacity_ = std::max(max_capacity_, head_capacity_[i]);
    }
  }
  budgets_[seq] = b;
  in_use_bytes_ += b.kv_bytes();
  device_->upload(head_offset_dev_.get(), head_offset_.data(), head_offset_.size() * sizeof(int64_t));
  device_->upload(head_capacity_dev_.get(), head_capacity_.data(), head_capacity_.size() * sizeof(int32_t));
  note_kv_bytes();
}

void GpuBackend::close_sequence(int seq) {
  KVP_CHECK(pool_, "the {} backend closes single sequences only in a pool (reset_pool)", name_);
  KVP_CHECK(seq >= 0 && seq < static_cast<int>(budgets_.size()), "close_sequence: no sequence {}", seq);
  prompts_[seq] = PromptScratch{};
  const auto [start, n] = seq_slots_[seq];
  if (n == 0) return;
  in_use_bytes_ -= budgets_[seq].kv_bytes();
  seq_slots_[seq] = {0, 0};
  for (int l = 0; l < config_.n_layers; ++l) {
    for (int h = 0; h < config_.n_kv_heads; ++h) {
      head_capacity_[head_index(seq, l, h)] = 0;
      n_used_[head_index(seq, l, h)] = 0;
    }
  }
  // Back into the free ranges, merged with its neighbours.
  auto at = std::lower_bound(free_slots_.begin(), free_slots_.end(), std::pair<int64_t, int64_t>{start, 0});
  at = free_slots_.insert(at, {start, n});
  if (auto after = std::next(at); after != free_slots_.end() && at->first + at->second == after->first) {
    at->second += after->second;
    free_slots_.erase(after);
  }
  if (at != free_slots_.begin()) {
    if (auto before = std::prev(at); before->first + before->second == at->first) {
      before->second += at->second;
      free_slots_.erase(at);
    }
  }
}

void GpuBackend::fill_for_benchmark(int n_positions) {
  device_->zero(kv_arena_.get(), kv_arena_.bytes());
  int64_t total = 0;
  for (const KvBudgets& b : budgets_) total += b.total_slots();
  std::vector<int32_t> pos(static_cast<size_t>(total));
  for (size_t i = 0; i < n_used_.size(); ++i) {
    const int n = std::min(head_capacity_[i], n_positions);
    const int sinks = std::min(sinks_, n);
    int32_t* p = pos.data() + head_offset_[i];
    for (int j = 0; j < sinks; ++j) p[j] = j;
    for (int j = sinks; j < n; ++j) p[j] = n_positions - (n - j);
    n_used_[i] = n;
  }
  device_->upload(pos_, pos.data(), pos.size() * sizeof(int32_t));
}

void GpuBackend::ensure_rows(int rows) {
  if (rows <= row_capacity_) return;
  row_capacity_ = std::max(rows, 2 * row_capacity_);
  Device& d = *device_;
  for (int a = 0; a < kNumActs; ++a) {
    acts_[a] = DeviceBuffer(d, static_cast<size_t>(row_capacity_) * act_width(config_, static_cast<Act>(a)) * sizeof(float));
  }
  const int widest_in = std::max({config_.dim, config_.hidden_dim, config_.q_dim()});
  x_half_ = DeviceBuffer(d, static_cast<size_t>(row_capacity_) * widest_in * 2);
  tokens_dev_ = DeviceBuffer(d, static_cast<size_t>(row_capacity_) * sizeof(int32_t));
  positions_dev_ = DeviceBuffer(d, static_cast<size_t>(row_capacity_) * sizeof(int32_t));
  probs_ = DeviceBuffer(d, static_cast<size_t>(row_capacity_) * config_.vocab_size * sizeof(float));
  uniform_ = DeviceBuffer(d, static_cast<size_t>(row_capacity_) * sizeof(float));
  picked_ = DeviceBuffer(d, static_cast<size_t>(row_capacity_) * sizeof(int32_t));
  const size_t rh = static_cast<size_t>(row_capacity_) * config_.n_kv_heads;
  meta_ = DeviceBuffer(d, rh * (2 * sizeof(int64_t) + 3 * sizeof(int32_t)));
  slot_ = DeviceBuffer(d, rh * sizeof(int32_t));
  evicted_pos_ = DeviceBuffer(d, rh * sizeof(int32_t));
  evicted_key_ = DeviceBuffer(d, rh * sizeof(float));
  self_weight_ = DeviceBuffer(d, rh * sizeof(float));
}

void GpuBackend::upload_rows() {
  if (rows_.size() == 0) return;  // a prompt chunk whose rows gave no logits
  device_->upload(tokens_dev_.get(), rows_.tokens.data(), rows_.size() * sizeof(int32_t));
  device_->upload(positions_dev_.get(), rows_.positions.data(), rows_.size() * sizeof(int32_t));
}

void GpuBackend::set_prefill_mode(const PrefillMode& mode) {
  KVP_CHECK(mode.evict_chunk >= 0, "--prefill-evict chunk {} below 0", mode.evict_chunk);
  evict_chunk_ = mode.evict_chunk;
}

void GpuBackend::note_kv_bytes() {
  int64_t bytes = kv_bytes_allocated();
  for (const PromptScratch& p : prompts_) bytes += p.bytes();
  peak_kv_bytes_ = std::max(peak_kv_bytes_, bytes);
}

void GpuBackend::begin_step(const StepRows& rows) {
  rows_ = rows;
  n_rows_ = static_cast<int>(rows.size());
  const int n_seqs = static_cast<int>(budgets_.size());
  for (int r = 0; r < n_rows_; ++r) {
    KVP_CHECK(rows.seq_idx[r] >= 0 && rows.seq_idx[r] < n_seqs);
    KVP_CHECK(rows.positions[r] >= 0 && rows.positions[r] < config_.seq_len);
    KVP_CHECK(rows.tokens[r] >= 0 && rows.tokens[r] < config_.vocab_size);
  }
  ensure_rows(n_rows_);
  upload_rows();
  // The step's work: each sequence's contiguous rows are a prefill when its cache is empty;
  // single decode rows of consecutive sequences form one batch; a sequence decoding several rows
  // runs them one at a time.
  work_.clear();
  for (int first = 0; first < n_rows_;) {
    const int seq = rows.seq_idx[first];
    int n = 1;
    while (first + n < n_rows_ && rows.seq_idx[first + n] == seq) ++n;
    if (const int prompt_len = rows.prompt_len[first]; prompt_len > 0 && n < prompt_len) {
      // A chunk of a longer prompt: its rows continue the prompt; the first one opens the scratch.
      PromptScratch& p = prompts_[seq];
      const int32_t pos = rows.positions[first];
      if (pos == 0) open_prompt(seq, prompt_len);
      KVP_CHECK(p.prompt_len == prompt_len && pos == p.next_pos && pos + n <= prompt_len,
                "sequence {}: a prompt's chunks run in order from position 0", seq);
      // The CPU executor cuts after every row at a multiple of the chunk; a step's rows here are cut
      // once, at their end.
      KVP_CHECK(evict_chunk_ == 0 || pos + n <= (pos / evict_chunk_ + 1) * evict_chunk_,
                "sequence {}: prompt rows {}..{} cross a --prefill-evict cut at a multiple of {}; the {} backend cuts "
                "at the end of a step's rows", seq, pos, pos + n - 1, evict_chunk_, name_);
      p.next_pos += n;
    } else if (n_used_[head_index(seq, 0, 0)] == 0) {
      KVP_CHECK(evict_chunk_ == 0 || n <= evict_chunk_,
                "sequence {}: a prompt of {} rows in one step under --prefill-evict chunks of {}", seq, n,
                evict_chunk_);
    }
    if (n_used_[head_index(seq, 0, 0)] == 0) {
      work_.push_back(Work{.prefill = true, .first = first, .n = n});
    } else if (n == 1 && !work_.empty() && !work_.back().prefill && work_.back().first + work_.back().n == first &&
               rows.seq_idx[first - 1] != seq) {
      ++work_.back().n;
    } else {
      for (int i = 0; i < n; ++i) work_.push_back(Work{.prefill = false, .first = first + i, .n = 1});
    }
    first += n;
  }
}

void GpuBackend::embed() {
  device_->kernels().embedding(tokens_dev_.as<int32_t>(), embedding_.as<float>(), act(Act::kX), n_rows_,
                               config_.dim, threads_);
}

void GpuBackend::rmsnorm(Act in, Act out, Weight w, int layer_idx) {
  device_->kernels().rmsnorm(act(in), weight(w, layer_idx).as<float>(), act(out), n_rows_, act_width(config_, in),
                             config_.norm_eps, threads_);
}

void GpuBackend::matmul_rows(Weight w, int layer_idx, Act in, Act out, bool accumulate) {
  const WeightShape s = weight_shape(config_, w);
  KVP_CHECK(act_width(config_, in) == s.in && act_width(config_, out) == s.out);
  const int l = is_global(w) ? config_.n_layers : layer_idx;
  device_->gemm(weight(w, layer_idx).get(), weight_types_[static_cast<size_t>(l) * kNumWeights + static_cast<int>(w)],
                s.out, s.in, act(in), x_half_.get(),
                act(out), n_rows_, accumulate);
}

void GpuBackend::matmul(Weight w, int layer_idx, Act in, Act out) { matmul_rows(w, layer_idx, in, out, false); }
void GpuBackend::matmul_add(Weight w, int layer_idx, Act in, Act out) { matmul_rows(w, layer_idx, in, out, true); }

void GpuBackend::rope(Act qk) {
  const int hd = config_.head_dim();
  device_->kernels().rope(act(qk), positions_dev_.as<int32_t>(), rope_cos_.as<float>(), rope_sin_.as<float>(), n_rows_,
                          act_width(config_, qk) / hd, hd, threads_);
}

void GpuBackend::swiglu(Act gate, Act up) {
  device_->kernels().swiglu(act(gate), act(up), static_cast<int64_t>(n_rows_) * act_width(config_, gate), threads_);
}

SlotCacheView GpuBackend::cache_view(int layer_idx, const int64_t* offset, const int32_t* capacity,
                                     const int32_t* n_used, const int64_t* block, const int32_t* newest) const {
  SlotCacheView view{.k = k_, .v = v_, .half = kv_half_, .pos = pos_, .score = score_, .value_l1 = value_l1_,
                     .offset = offset, .capacity = capacity, .n_used = n_used};
  if (!layer_shape_.empty()) {
    view.blocks = blocks_, view.block = block, view.shape = layer_shape_[layer_idx], view.newest = newest;
  }
  return view;
}

SlotCacheView GpuBackend::prompt_view(int seq, int layer_idx, int first_head) const {
  const size_t i = head_index(seq, layer_idx, first_head);
  return cache_view(layer_idx, head_offset_dev_.as<int64_t>() + i, head_capacity_dev_.as<int32_t>() + i, nullptr,
                    layer_shape_.empty() ? nullptr : head_block_dev_.as<int64_t>() + i);
}

void GpuBackend::attention(int layer_idx) {
  // In row order (as the CPU backend goes, so eviction logs come in the same order); consecutive
  // decode runs share one upload of their metadata.
  std::vector<Work> decode_runs;
  for (const Work& w : work_) {
    if (w.prefill) {
      if (!decode_runs.empty()) decode(decode_runs, layer_idx);
      decode_runs.clear();
      prefill(w, layer_idx);
    } else {
      decode_runs.push_back(w);
    }
  }
  if (!decode_runs.empty()) decode(decode_runs, layer_idx);
}

void GpuBackend::decode(const std::vector<Work>& runs, int layer_idx) {
  const int H = config_.n_kv_heads, hd = config_.head_dim(), group = config_.group_size();
  math::ScoreArgs score_args = score_args_;
  score_args.layer_idx = layer_idx;
  // Every run's (row, head) entries, packed for one upload: offsets, capacities, fill, newest.
  size_t total = 0;
  for (const Work& w : runs) total += static_cast<size_t>(w.n) * H;
  std::vector<std::byte>& meta = meta_host_;
  meta.resize(total * (2 * sizeof(int64_t) + 3 * sizeof(int32_t)));
  auto* offset = reinterpret_cast<int64_t*>(meta.data());
  int64_t* block = offset + total;  // a compressed cache's head blocks
  auto* capacity = reinterpret_cast<int32_t*>(block + total);
  int32_t* used = capacity + total;
  int32_t* newest = used + total;
  size_t e = 0;
  for (const Work& w : runs) {
    for (int r = w.first; r < w.first + w.n; ++r) {
      const int seq = rows_.seq_idx[r];
      for (int h = 0; h < H; ++h, ++e) {
        const size_t i = head_index(seq, layer_idx, h);
        offset[e] = head_offset_[i];
        block[e] = head_block_.empty() ? 0 : head_block_[i];
        capacity[e] = head_capacity_[i];
        used[e] = n_used_[i];
        newest[e] = rows_.positions[r];
        KVP_CHECK(evicts_ || used[e] < capacity[e], "sequence {}: the full cache of {} slots has no room for position {}",
                  seq, capacity[e], newest[e]);
        // The fill after this row (a later run of the same sequence sees it): one more, up to the budget.
        n_used_[i] = std::min(n_used_[i] + 1, head_capacity_[i]);
      }
    }
  }
  Device& d = *device_;
  d.upload(meta_.get(), meta.data(), meta.size());
  const auto* offset_dev = meta_.as<int64_t>();
  const int64_t* block_dev = offset_dev + total;
  const auto* capacity_dev = reinterpret_cast<const int32_t*>(block_dev + total);
  const int32_t* used_dev = capacity_dev + total;
  const int32_t* newest_dev = used_dev + total;
  const Launchers& K = d.kernels();
  std::vector<int32_t> evicted_pos;
  std::vector<float> evicted_key;
  e = 0;
  for (const Work& w : runs) {
    const int heads = w.n * H;
    const SlotCacheView view =
        cache_view(layer_idx, offset_dev + e, capacity_dev + e, used_dev + e, block_dev + e, newest_dev + e);
    const DecodeRows rows{.q = act(Act::kQ) + static_cast<size_t>(w.first) * config_.q_dim(),
                          .k_new = act(Act::kK) + static_cast<size_t>(w.first) * config_.kv_dim(),
                          .v_new = act(Act::kV) + static_cast<size_t>(w.first) * config_.kv_dim(),
                          .out = act(Act::kAttn) + static_cast<size_t>(w.first) * config_.q_dim(),
                          .self_weight = self_weight_.as<float>(),
                          .heads = heads,
                          .group = group,
                          .head_dim = hd};
    const size_t weights = static_cast<size_t>(heads) * group * (max_capacity_ + 1);
    attn_weights_.grow(d, weights * sizeof(float));
    // DELTA: a selection layer's maxima, then its rows' pages; a sparse layer attends those pages.
    const char role = delta_.role(layer_idx);
    const int pages_stride = delta_pages_stride();
    DeltaPages delta{.chosen_stride = pages_stride, .page_size = delta_.page_size, .n_kv_heads = H,
                     .head_max_stride = max_capacity_ + 1};
    if (role != kDeltaFull) delta_chosen_.grow(d, static_cast<size_t>(n_rows_) * pages_stride);
    if (role == kDeltaSelect) {
      delta_head_max_.grow(d, static_cast<size_t>(heads) * (max_capacity_ + 1) * sizeof(float));
      delta.head_max = delta_head_max_.as<float>();
    } else if (role == kDeltaSparse) {
      delta.chosen = delta_chosen_.as<uint8_t>() + static_cast<size_t>(w.first) * pages_stride;
    }
    K.decode_attention(rows, view, attn_weights_.as<float>(), max_capacity_ + 1, score_args_.rule, delta, threads_);
    if (role == kDeltaSelect) {
      delta_pos_weight_.grow(d, static_cast<size_t>(w.n) * config_.seq_len * sizeof(float));
      delta_page_score_.grow(d, static_cast<size_t>(w.n) * pages_stride * sizeof(float));
      const DeltaRule rule{.pages = delta_.pages, .page_size = delta_.page_size, .last = delta_.last, .sinks = sinks_};
      K.delta_select(view, delta.head_max, delta.head_max_stride, newest_dev + e, w.n, H, rule,
                     delta_pos_weight_.as<float>(), config_.seq_len, delta_page_score_.as<float>(),
                     delta_chosen_.as<uint8_t>() + static_cast<size_t>(w.first) * pages_stride, pages_stride, threads_);
    }
    for (int r = w.first; crush_period_ > 0 && r < w.first + w.n; ++r) {
      // KVCrush: a full cache is cut to budget − period slots before the token is placed.
      const size_t row_e = e + static_cast<size_t>(r - w.first) * H;
      if (used[row_e] < capacity[row_e]) continue;
      const SlotCacheView heads_of_row = cache_view(layer_idx, offset_dev + row_e, capacity_dev + row_e, used_dev + row_e,
                                                    block_dev + row_e, newest_dev + row_e);
      const int left = crush_cut(heads_of_row, r, layer_idx, capacity[row_e]);
      for (int h = 0; h < H; ++h) {
        used[row_e + h] = left;
        n_used_[head_index(rows_.seq_idx[r], layer_idx, h)] = left + 1;
      }
      d.upload(const_cast<int32_t*>(used_dev) + row_e, used + row_e, H * sizeof(int32_t));  // meta_ is ours to write
    }
    K.place(view, newest_dev + e,
            VictimRule{.sinks = sinks_, .recent = recent_, .per_query_key = score_args.per_query_key,
                       .shared = shared_ ? H : 1},
            Placement{.slot = slot_.as<int32_t>(), .evicted_pos = evicted_pos_.as<int32_t>(),
                      .evicted_key = evicted_key_.as<float>()},
            heads, threads_);
    K.insert(rows, view, slot_.as<int32_t>(), newest_dev + e, score_args, H, threads_);
    if (eviction_log_) {
      evicted_pos.resize(heads);
      evicted_key.resize(heads);
      d.download(evicted_pos.data(), evicted_pos_.get(), heads * sizeof(int32_t));
      d.download(evicted_key.data(), evicted_key_.get(), heads * sizeof(float));
    }
    for (int i = 0; eviction_log_ && i < heads; ++i) {
      const int r = w.first + i / H;
      if (evicted_pos[i] < 0) continue;
      eviction_log_->push_back(EvictionRecord{.seq_idx = rows_.seq_idx[r], .step = rows_.positions[r],
                                              .layer_idx = layer_idx, .kv_head_idx = i % H,
                                              .evicted_pos = evicted_pos[i], .score = evicted_key[i]});
    }
    e += heads;
  }
}

int GpuBackend::crush_cut(const SlotCacheView& view, int row, int layer_idx, int capacity) {
  const int H = config_.n_kv_heads;
  const int seq = rows_.seq_idx[row];
  const int32_t newest = rows_.positions[row];
  const int left = capacity - crush_period_;
  Device& d = *device_;
  const Launchers& K = d.kernels();
  const size_t key_floats = static_cast<size_t>(H) * capacity;
  crush_keys_.grow(d, key_floats * sizeof(float));
  K.slot_keys(view, H, capacity, newest, score_args_.per_query_key, crush_keys_.as<float>(), capacity, threads_);
  int32_t* keep = keep_rows(capacity);
  const int32_t* positions = pos_ + head_offset_[head_index(seq, layer_idx, 0)];
  crush_keep(crush_keys_.as<float>(), capacity, capacity, positions, newest, left, keep, capacity);
  if (eviction_log_) {
    // What each head drops, with its own key, read before the cut moves the slots.
    std::vector<float> keys(key_floats);
    std::vector<int32_t> kept_slots(left), pos(capacity);
    d.download(keys.data(), crush_keys_.get(), keys.size() * sizeof(float));
    d.download(kept_slots.data(), keep, kept_slots.size() * sizeof(int32_t));
    d.download(pos.data(), positions, pos.size() * sizeof(int32_t));
    std::vector<bool> kept(capacity, false);
    for (int32_t j : kept_slots) {
      if (j >= 0) kept[j] = true;
    }
    for (int h = 0; h < H; ++h) {
      for (int j = 0; j < capacity; ++j) {
        if (kept[j]) continue;
        eviction_log_->push_back(EvictionRecord{.seq_idx = seq, .step = newest, .layer_idx = layer_idx, .kv_head_idx = h,
                                                .evicted_pos = pos[j], .score = keys[static_cast<size_t>(h) * capacity + j]});
      }
    }
  }
  K.slot_compact(view, H, keep, left, config_.head_dim(), threads_);
  return left;
}

void GpuBackend::select_rows(std::span<const int32_t> row_idx) {
  const size_t dim = config_.dim;
  rows_ = select_step_rows(rows_, row_idx, [&](int32_t from, int32_t to) {
    device_->copy(act(Act::kX) + to * dim, act(Act::kX) + from * dim, dim * sizeof(float));
  });
  n_rows_ = static_cast<int>(row_idx.size());
  upload_rows();
  work_.clear();
}

void GpuBackend::pick_tokens(const SamplerOptions& options, std::span<const float> uniforms, std::span<int32_t> out) {
  KVP_CHECK(uniforms.size() == size_t(n_rows_) && out.size() == size_t(n_rows_), "pick_tokens: {} rows, {} draws",
            n_rows_, uniforms.size());
  Device& d = *device_;
  d.upload(uniform_.get(), uniforms.data(), uniforms.size() * sizeof(float));
  d.kernels().sample(act(Act::kLogits), n_rows_, config_.vocab_size, options.temperature, options.top_p,
                     uniform_.as<float>(), probs_.as<float>(), picked_.as<int32_t>(), threads_);
  d.download(out.data(), picked_.get(), out.size() * sizeof(int32_t));
}

void GpuBackend::read(Act a, std::span<float> out) const {
  const size_t width = act_width(config_, a);
  KVP_CHECK(out.size() == n_rows_ * width, "read: expected {} floats, got {}", n_rows_ * width, out.size());
  device_->download(out.data(), act(a), out.size() * sizeof(float));
}

}  // namespace kvp
