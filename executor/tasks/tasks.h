// Long-context tasks in the style of RULER (Hsieh et al., 2024): needle retrieval, variable
// tracking and word extraction, generated with lengths counted in the model's own tokens, written
// as a tasks file, and scored as RULER scores them (docs/TASKS.md says where they differ).
//
// A tasks file is JSON Lines: a header object, then one instance per line.
//   {"format":"kvplan-tasks","version":1,"model_fingerprint":"…","length":4096,"n":50,"seed":0,
//    "haystack":"filler","chat_template":"chatml","families":["niah_single",…]}
//   {"id":"niah_single-4096-0","family":"niah_single","length":4096,"tokens":[…],"context_end":4051,
//    "context":"…","question":"…","answers":["8106374"],"reference":[…],"metric":"string_match_all",
//    "needles":[{"text":"…","begin":1200,"end":1219}],"max_answer_tokens":24}
// `tokens` is the whole prompt (the chat template applied for instruct models), ending where the
// answer begins; [0, context_end) is the context and the rest the question, so a query-agnostic
// cut falls at context_end. Needle spans are token positions [begin, end) inside the context.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "executor/corpus.h"
#include "executor/model/model_config.h"
#include "executor/model/tokenizer.h"

namespace kvp {

enum class TaskMetric { kMatchAll, kMatchPart };  // RULER's string_match_all, string_match_part
std::string_view task_metric_name(TaskMetric m);  // frozen on disk
Result<TaskMetric> parse_task_metric(std::string_view name);

struct TaskNeedle {
  std::string text;
  int32_t begin = 0;  // token positions [begin, end) of the prompt
  int32_t end = 0;
};

struct TaskInstance {
  std::string id;
  std::string family;
  int length = 0;                  // the length it was made for: tokens.size() <= length
  std::vector<int32_t> tokens;     // the prompt, ending where the answer begins
  int32_t context_end = 0;         // tokens [0, context_end) are the context
  std::string context, question;   // their text, for reading
  std::vector<std::string> answers;
  std::vector<int32_t> reference;  // a reference answer's tokens (teacher-forced ΔNLL and KL)
  TaskMetric metric = TaskMetric::kMatchAll;
  std::vector<TaskNeedle> needles;
  int max_answer_tokens = 32;      // generation stops here or at an end token
};

struct TaskFileHeader {
  std::string model_fingerprint;
  int length = 0;
  int n = 0;
  uint64_t seed = 0;
  std::string haystack;       // "filler" or "corpus"
  std::string chat_template;  // "chatml", "llama3", "llama2" or "none"
  std::vector<std::string> families;
};

struct TaskFile {
  TaskFileHeader header;
  std::vector<TaskInstance> instances;
};

// The file's text, and the file written under a temporary name, then renamed.
std::string tasks_text(const TaskFile& file);
Status save_tasks(const std::string& path, const TaskFile& file);
// Checks every field: an error names the file, the line and the field (a missing field, a token
// outside the vocabulary, a needle outside the context, a prompt and answer longer than the
// model's positions, a file made for another model).
// An empty `model_fingerprint` accepts any model's file. parse_tasks reads text that came from `path`.
Result<TaskFile> load_tasks(const std::string& path, const ModelConfig& config, const std::string& model_fingerprint);
Result<TaskFile> parse_tasks(const std::string& text, const std::string& path, const ModelConfig& config,
                             const std::string& model_fingerprint);

// The families, in a fixed order: niah_single, niah_single_uuid, niah_multikey, niah_multivalue,
// niah_multiquery, vt, cwe, fwe.
const std::vector<std::string>& task_families();

struct TaskGenOptions {
  int length = 4096;                  // prompt tokens at most
  int n = 50;                         // instances per family
  uint64_t seed = 0;
  std::vector<std::string> families;  // empty: all
  std::string haystack = "filler";    // "filler" (RULER's repeated noise) or "corpus"
  const Corpus* corpus = nullptr;     // the natural text of haystack "corpus" (kvplan corpus)
};

// Instances of every family in order, instance i of a family from seed + i (so a family's
// instances do not depend on the others chosen). `chat`: the model's chat template
// (serve::ChatTemplate's name), or empty for a plain prompt. Errors: an unknown family, a length
// too short for a family's question, a corpus too small for the haystack.
Result<std::vector<TaskInstance>> generate_tasks(const Tokenizer& tokenizer, const std::string& chat,
                                                 const TaskGenOptions& options);

// RULER's scores of a prediction against the answers, case-insensitive substring matches:
// string_match_all the share of answers found, string_match_part 1 if any is.
double score_answer(TaskMetric metric, const std::vector<std::string>& answers, std::string_view prediction);

}  // namespace kvp
