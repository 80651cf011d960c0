// kvplan tasks: RULER-style long-context instances whose length is counted in the model's tokens.
#include <nlohmann/json.hpp>

#include <cstdio>
#include <map>

#include "executor/corpus.h"
#include "executor/serve/chat_template.h"
#include "executor/tasks/tasks.h"
#include "tools/kvplan/command.h"
#include "tools/kvplan/plan_flags.h"

namespace kvp::cli {
namespace {

struct TasksFlags {
  ModelFlags model;
  std::string out;
  int length = 4096;
  std::string families;
  int n = 50;
  uint64_t seed = 0;
  std::string haystack = "filler";
  std::string corpus;
  std::string chat = "auto";
  bool json = false;
};

Status tasks(const TasksFlags& flags) {
  if (flags.n < 1) return make_error("--n: expected at least 1 instance per family, found {}", flags.n);
  KVP_ASSIGN_OR_RETURN(LoadedModel model, load_model(flags.model.model, flags.model.tokenizer, flags.model.load_options()));
  const ModelConfig& c = model.weights.config();
  if (flags.length < 128 || flags.length > c.seq_len) {
    return make_error("--length: expected 128..{} tokens (the model's positions), found {}", c.seq_len, flags.length);
  }
  KVP_ASSIGN_OR_RETURN(std::string fingerprint, model_fingerprint(model));
  std::string chat = flags.chat;
  if (chat == "auto") {
    const auto t = serve::recognise_chat_template(model.tokenizer.vocabulary().chat_template);
    chat = t ? std::string(serve::chat_template_name(*t)) : "none";
  }
  Corpus corpus;
  TaskGenOptions options{.length = flags.length, .n = flags.n, .seed = flags.seed, .families = split_list(flags.families),
                         .haystack = flags.haystack};
  if (!flags.corpus.empty()) {
    KVP_ASSIGN_OR_RETURN(corpus, load_corpus(flags.corpus, model.tokenizer, c.seq_len));
    options.corpus = &corpus;
  }
  auto generated = generate_tasks(model.tokenizer, chat, options);
  if (!generated.ok()) return generated.error();
  for (const TaskInstance& t : generated.value()) {
    const int answer = std::max(t.max_answer_tokens, static_cast<int>(t.reference.size()));
    if (static_cast<int>(t.tokens.size()) + answer > c.seq_len) {
      return make_error("--length: {} ({} tokens) leaves no room in the model's {} positions for its answer of up to {} "
                        "tokens; use --length {} or less", t.id, t.tokens.size(), c.seq_len, answer, c.seq_len - 64);
    }
  }
  TaskFile file{.header = {.model_fingerprint = fingerprint, .length = flags.length, .n = flags.n, .seed = flags.seed,
                           .haystack = flags.haystack, .chat_template = chat,
                           .families = options.families.empty() ? task_families() : options.families},
                .instances = std::move(generated).value()};
  KVP_RETURN_IF_ERROR(save_tasks(flags.out, file));
  std::map<std::string, std::pair<int, int64_t>> per_family;  // instances, tokens
  for (const TaskInstance& t : file.instances) {
    per_family[t.family].first += 1;
    per_family[t.family].second += static_cast<int64_t>(t.tokens.size());
  }
  if (flags.json) {
    nlohmann::json j = {{"out", flags.out}, {"instances", file.instances.size()}, {"length", flags.length},
                        {"chat_template", chat}, {"haystack", flags.haystack}, {"model_fingerprint", fingerprint}};
    for (const auto& [f, v] : per_family) j["families"][f] = {{"instances", v.first}, {"mean_tokens", double(v.second) / v.first}};
    std::printf("%s\n", j.dump(2).c_str());
    return ok_status();
  }
  std::printf("wrote %zu instances to %s (length %d, haystack %s, chat template %s)\n", file.instances.size(),
              flags.out.c_str(), flags.length, flags.haystack.c_str(), chat.c_str());
  for (const auto& [f, v] : per_family) {
    std::printf("  %-18s %3d instances, %.0f prompt tokens on average\n", f.c_str(), v.first, double(v.second) / v.first);
  }
  return ok_status();
}

}  // namespace

Command add_tasks_command(CLI::App& app) {
  auto flags = std::make_shared<TasksFlags>();
  CLI::App* sub = app.add_subcommand(
      "tasks",
      "Write RULER-style long-context task instances (needle retrieval, variable tracking, word extraction) whose "
      "length is counted in the model's own tokens, for eval --tasks");
  flags->model.add_to(sub, false);
  sub->add_option("--out", flags->out, "Tasks file to write (JSON Lines; written under a temporary name first)")
      ->required();
  sub->add_option("--length", flags->length, "Prompt tokens per instance at most, chat template included (default 4096)");
  sub->add_option("--families", flags->families,
                  "Comma-separated families (default all): niah_single, niah_single_uuid, niah_multikey, "
                  "niah_multivalue, niah_multiquery, vt, cwe, fwe");
  sub->add_option("--n", flags->n, "Instances per family (default 50)");
  sub->add_option("--seed", flags->seed, "Seed; a family's instance i depends only on it, the family and i (default 0)");
  sub->add_option("--haystack", flags->haystack,
                  "The needles' haystack: filler (RULER's repeated noise sentences) or corpus (natural text sampled "
                  "from the model: --corpus) (default filler)");
  sub->add_option("--corpus", flags->corpus, "A kvplan corpus file whose text makes the corpus haystack");
  sub->add_option("--chat-template", flags->chat,
                  "auto (the model file's template, recognised), chatml, llama3, llama2 or none (default auto)");
  sub->add_flag("--json", flags->json, "Print a JSON summary");
  return {sub, [flags] { return tasks(*flags); }};
}

}  // namespace kvp::cli
