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

// The greedy oracle of ../shared/models/stories260K/README.md: the first token ids and the text.
struct Oracle {
  std::vector<int32_t> first_ids;
  std::string text;
};
const Oracle& default_model_oracle();

// The folder that holds the shared test models (stories260K/, llama-2-tiny-random/, vocab/): the
// parent of the default model's folder.
std::string shared_model_dir();

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
