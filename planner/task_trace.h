// Task traces (kvplan record --tasks): what the replay of a configuration on long-context task
// instances needs, and nothing else (docs/FORMATS.md, "Task traces").
//
// Per instance, at the cut (the context's end, or the question's: kvplan eval's --cut), every
// recorded scorer's prefill scores of the cut's positions (and its aux floats: VATP's value norms),
// in f32 so that the replay cuts exactly the tokens the closed loop cuts; the full cache's answer
// attention (the attention the prompt's last token and the reference answer's tokens pay each
// position before the cut, the mean over those rows and the query heads of a KV head), in bf16,
// since only sums of it are read; the needle spans and the full cache's score on the instance.
// No keys, values or queries: a SmolLM2 instance cut at 4K with eight scorers takes 16.7 MB, its
// f32 keys and values 186 MB.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "common/status.h"
#include "planner/policy/policy.h"

namespace kvp {

struct TaskTraceScorer {
  std::string policy;   // make_policy's name
  PolicyParams params;  // as policy_detail writes them, sinks and recent aside
};

struct TaskTraceInstance {
  std::string id, family;
  int length = 0;         // the task file's length
  int prompt_tokens = 0;  // the whole prompt's
  int cut = 0;            // positions [0, cut) are held at the cut
  std::vector<std::pair<int32_t, int32_t>> needles;  // [begin, end) token positions, inside [0, cut)
  double full_score = 0;  // the full cache's score of its greedy answer
  int answer_rows = 0;    // rows averaged into answer_attention
  // [scorer][(layer × n_kv_heads + head) × cut + position]; aux[s] is empty for a scorer with none.
  std::vector<std::vector<float>> score, aux;
  std::vector<float> answer_attention;  // [(layer × n_kv_heads + head) × cut + position]

  size_t head_offset(int n_kv_heads, int layer, int head) const {
    return (size_t(layer) * n_kv_heads + head) * size_t(cut);
  }
};

struct TaskTrace {
  std::string model_fingerprint;  // sha256 of the weights file
  int n_layers = 0, n_kv_heads = 0;
  std::string cut_point = "agnostic";  // or "aware"
  std::string tasks;                   // the tasks file recorded (provenance)
  std::vector<TaskTraceScorer> scorers;
  std::vector<TaskTraceInstance> instances;

  // The recorded scorer that scores a prefill as `policy` does (same_prefill), or -1.
  int scorer_for(const Policy& policy) const;

  // Binary: magic, a JSON header, then each instance's arrays (FORMATS.md). Written under a
  // temporary name, then renamed.
  Status save(const std::string& path) const;
  // The file's bytes, in order, through `write` (save streams them into the file).
  Status write_to(const std::function<Status(const void* data, size_t size)>& write) const;
  static Result<TaskTrace> parse(std::span<const uint8_t> bytes, const std::string& path);
  static Result<TaskTrace> load(const std::string& path);
};

// What a configuration keeps of one instance, measured on its trace.
struct TaskFeatures {
  double needles = 1;      // share of needle tokens kept, over layers and heads (no needles: = mass)
  double mass = 1;         // answer attention kept over the context's, mean over layers and heads
  double needle_mass = 1;  // answer attention kept on needle tokens over all of it on them (no needles: = mass)
  // The needle token the answer reads worst kept: per needle token, the answer attention on it in
  // the heads that keep it over that in all heads; the least of these over the tokens drawing at
  // least a tenth of the most-read needle token's attention, and of needle_mass (no needles: = mass).
  double needle_min = 1;
  double full_score = 0;   // the instance's full-cache score
};
inline constexpr int kTaskFeatureCount = 4;
inline constexpr const char* kTaskFeatureNames[kTaskFeatureCount] = {"needles", "mass", "needle_mass", "needle_min"};
inline double task_feature(const TaskFeatures& f, int i) {
  return i == 0 ? f.needles : i == 1 ? f.mass : i == 2 ? f.needle_mass : f.needle_min;
}

// Cuts instance `inst` as `policy` would within `budgets` ([layer × n_kv_heads + head] slots; a
// budget at or above the cut keeps it whole) from the recorded scores of the scorer that scores
// like it, and measures what is kept. Errors when no recorded scorer scores like `policy`.
Result<TaskFeatures> replay_task(const TaskTrace& trace, const TaskTraceInstance& inst, const Policy& policy,
                                 std::span<const int32_t> budgets);

// bf16 with round-to-nearest-even, and back.
uint16_t to_bf16(float x);
float from_bf16(uint16_t b);

}  // namespace kvp
