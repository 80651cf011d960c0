// kvplan: plan and enforce KV-cache budgets for LLaMA-family decoders.
#include <algorithm>
#include <cstdio>
#include <vector>

#include "tools/kvplan/command.h"

namespace kvp::cli {

void ModelFlags::add_to(CLI::App* app, bool with_threads) {
  app->add_option("--model", model,
                  "Model: a .gguf file, a Hugging Face folder (config.json, *.safetensors, tokenizer.json), a "
                  "llama2.c checkpoint or a directory holding one, or a name found in the repository's models/, "
                  "$KVPLAN_MODEL_DIR, ../shared/models or kvplan's cache (tools/fetch-model.sh) (default: "
                  "stories260K, embedded in models/)");
  app->add_option("--tokenizer", tokenizer,
                  "Tokenizer: a llama2.c tokenizer.bin or a tokenizer.json (default: the model's own: GGUF "
                  "metadata, the folder's tokenizer.json, or tok<vocab>.bin beside a llama2.c checkpoint)");
  if (with_threads) {
    app->add_option("--threads", threads, "CPU threads for the model's matrix products (default 1)")
        ->check(CLI::Range(1, 256));
  }
  app->add_flag("--no-check-weights", no_check_weights,
                "Skip the load-time scan that rejects NaN or Inf weights");
}

}  // namespace kvp::cli

int main(int argc, char** argv) {
  using namespace kvp::cli;
  CLI::App app{
      "kvplan: plan and enforce KV-cache budgets for LLaMA-family decoders.\n"
      "Records attention traces, plans per-layer token budgets under a memory limit, and runs "
      "the plan for real.",
      "kvplan"};
  app.set_version_flag("--version", std::string("kvplan ") + KVP_VERSION);
  app.require_subcommand(1);
  app.failure_message([](const CLI::App* failed, const CLI::Error& e) {
    const std::string who = failed->get_parent() ? "kvplan " + failed->get_name() : "kvplan";
    return who + ": " + e.what() + " (run with --help for usage)\n";
  });
  std::vector<Command> commands = {add_run_command(app), add_inspect_command(app),
                                   add_corpus_command(app), add_tasks_command(app), add_record_command(app),
                                   add_plan_command(app), add_eval_command(app),
                                   add_sweep_command(app), add_capacity_command(app),
                                   add_calibrate_command(app), add_check_command(app),
                                   add_tokenize_command(app), add_convert_command(app),
                                   add_bench_command(app), add_measure_hardware_command(app),
                                   add_serve_command(app)};
  if (argc > 1 && argv[1][0] != '-' && std::none_of(commands.begin(), commands.end(),
                                                  [&](const Command& c) { return c.app->get_name() == argv[1]; })) {
    std::string names;
    for (const Command& c : commands) names += (names.empty() ? "" : ", ") + c.app->get_name();
    std::fprintf(stderr, "kvplan: unknown command '%s' (commands: %s; run with --help)\n", argv[1],
                 names.c_str());
    return 2;
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  for (const Command& c : commands) {
    if (!c.app->parsed()) continue;
    kvp::Status status = c.run();
    if (!status.ok()) {
      std::fflush(stdout);
      std::fprintf(stderr, "kvplan %s: error: %s\n", c.app->get_name().c_str(),
                   status.error().message().c_str());
      return 1;
    }
    return 0;
  }
  return 2;
}
