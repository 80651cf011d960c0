// Shared helpers for the test suites: the default model, its oracle, temporary directories, and
// running the kvplan binary.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "executor/model/model_locator.h"

namespace kvp::test {

// stories260K, loaded once; a test fails (not skips) when it cannot be found.
const LoadedModel& default_model();
const ModelConfig& default_config();  // default_model()'s shape

// The greedy oracle of models/stories260K/README.md: the first token ids and the text.
struct Oracle {
  std::vector<int32_t> first_ids;
  std::string text;
};
const Oracle& default_model_oracle();

// The logits after every one of `tokens`, fed in one forward pass of a fresh full-cache sequence on
// the CPU backend: [tokens, vocab].
std::vector<float> one_pass_logits(const ModelWeights& weights, const std::vector<int32_t>& tokens, int threads = 1);

// The test fixtures that do not ship with the repository (stories260K/stories260K.gguf,
// llama-2-tiny-random/, vocab/) live in the first model directory after the embedded one that
// exists: $KVPLAN_MODEL_DIR, else ../shared/models (model_search_dirs). Empty when there is none.
std::string shared_model_dir();

// "" when `relative` exists under shared_model_dir(); else what is missing and where to get it.
std::string missing_fixture(const std::string& relative);

// CI sets CI=true: there a missing fixture fails the test instead of skipping it.
bool in_ci();

// A test that needs a fixture starts with KVP_REQUIRE_FIXTURE("vocab/ggml-vocab-gpt-2.gguf"): it
// skips, saying what is missing, on a clone with nothing beside it, and fails under CI.
#define KVP_REQUIRE_FIXTURE(relative)                                                      \
  do {                                                                                     \
    if (const std::string kvp_missing = ::kvp::test::missing_fixture(relative); !kvp_missing.empty()) { \
      if (::kvp::test::in_ci()) FAIL() << kvp_missing;                                     \
      GTEST_SKIP() << kvp_missing;                                                         \
    }                                                                                      \
  } while (0)

// Sets an environment variable for the guard's lifetime and restores the old value (or its
// absence) however the test leaves, an ASSERT's early return included.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const std::string& value);
  ~ScopedEnv();
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  std::string name_, old_;
  bool had_old_ = false;
};

// A fresh empty directory under the test temp dir, removed at exit.
std::string make_temp_dir(const std::string& tag);

// Writes `bytes` to `path` (non-atomic; for building malformed inputs).
void write_bytes(const std::string& path, const std::string& bytes);
std::string read_bytes(const std::string& path);

struct CliResult {
  int exit_code = -1;
  std::string out;
  std::string err;
};
// Runs build/kvplan with `args` (already shell-quoted where needed).
CliResult run_kvplan(const std::string& args);
std::string shell_quote(const std::string& s);

// Number of lines in `s` (a trailing newline does not start a new line).
int line_count(const std::string& s);

// Runs kvplan with `args` and expects bad input's answer: a non-zero exit and `expect` in one line
// (exactly one newline) on stderr.
void expect_one_line_error(const std::string& args, const std::string& expect);

}  // namespace kvp::test
