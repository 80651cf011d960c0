// Each subcommand adds itself to the CLI11 app and returns the action to run once parsed.
#pragma once

#include <CLI/CLI.hpp>

#include <functional>
#include <string>

#include "common/status.h"
#include "executor/backend.h"
#include "executor/model/model_locator.h"

namespace kvp::cli {

struct Command {
  CLI::App* app;
  std::function<Status()> run;
};

Command add_run_command(CLI::App& app);
Command add_inspect_command(CLI::App& app);
Command add_corpus_command(CLI::App& app);
Command add_record_command(CLI::App& app);
Command add_eval_command(CLI::App& app);
Command add_plan_command(CLI::App& app);
Command add_sweep_command(CLI::App& app);
Command add_capacity_command(CLI::App& app);
Command add_calibrate_command(CLI::App& app);
Command add_check_command(CLI::App& app);
Command add_tokenize_command(CLI::App& app);
Command add_convert_command(CLI::App& app);
Command add_bench_command(CLI::App& app);
Command add_measure_hardware_command(CLI::App& app);
Command add_serve_command(CLI::App& app);
Command add_tasks_command(CLI::App& app);

// "268435456", "256MiB", "1GiB", "2GB": a byte count; errors name `flag`.
Result<int64_t> parse_byte_count(const std::string& flag, const std::string& text);

// The backend --backend names: cpu (its weights as stored, `threads` threads), cuda (the first
// GPU) or gpu-emulated (the GPU backend's kernels under the CPU emulation, for checking without a
// GPU); `weights_dtype` is the GPU backends' matrix type (f32, f16 or q8_0).
Result<std::unique_ptr<Backend>> make_backend(const std::string& backend, const std::string& weights_dtype,
                                              const ModelWeights& weights, int threads);

// Flags most commands share.
struct ModelFlags {
  std::string model;      // empty: the default model
  std::string tokenizer;  // empty: beside the model
  int threads = 1;        // CPU threads for the model's matrix products
  bool no_check_weights = false;
  // `threads`: add --threads (commands whose --threads means replay threads leave it out).
  void add_to(CLI::App* app, bool threads = true);
  LoadOptions load_options() const { return {.check_weights = !no_check_weights}; }
};

}  // namespace kvp::cli
