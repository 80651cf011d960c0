// kvplan tokenize: the ids and pieces a model's tokenizer gives a text.
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>

#include "common/file_util.h"
#include "executor/model/model_locator.h"
#include "tools/kvplan/command.h"

namespace kvp::cli {
namespace {

struct TokenizeFlags {
  ModelFlags model;
  std::string text;
  std::string file;
  bool no_bos = false;
  bool json = false;
  bool ids_only = false;
};

Status tokenize(const TokenizeFlags& flags) {
  if (!flags.text.empty() && !flags.file.empty()) return make_error("--text and --file: give one of them, not both");
  std::string text = flags.text;
  if (!flags.file.empty()) {
    KVP_ASSIGN_OR_RETURN(text, read_file_text(flags.file));
  }
  KVP_ASSIGN_OR_RETURN(Tokenizer tok, load_tokenizer_only(flags.model.model, flags.model.tokenizer));
  const std::string model = flags.model.model.empty() ? kDefaultModelName : flags.model.model;
  const std::vector<int32_t> ids = tok.encode(text, !flags.no_bos);
  if (flags.json) {
    nlohmann::json pieces = nlohmann::json::array();
    for (int32_t id : ids) pieces.push_back(tok.piece(id));
    const nlohmann::json j = {{"model", model}, {"tokenizer", std::string(tok.kind_name())},
                              {"n_tokens", ids.size()}, {"ids", ids}, {"pieces", pieces},
                              {"text", tok.decode(ids)}};
    // Pieces need not be valid UTF-8 (byte-level pieces of a split character): replace, never throw.
    std::printf("%s\n", j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
    return ok_status();
  }
  if (flags.ids_only) {
    for (size_t i = 0; i < ids.size(); ++i) std::printf("%s%d", i ? " " : "", ids[i]);
    std::printf("\n");
    return ok_status();
  }
  for (int32_t id : ids) std::printf("%7d  %s\n", id, nlohmann::json(tok.piece(id)).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
  std::printf("%zu tokens\n", ids.size());
  return ok_status();
}

}  // namespace

Command add_tokenize_command(CLI::App& app) {
  auto flags = std::make_shared<TokenizeFlags>();
  CLI::App* sub = app.add_subcommand("tokenize", "Print the token ids and pieces of a text under a model's tokenizer");
  flags->model.add_to(sub, false);
  sub->add_option("--text", flags->text, "The text to tokenize");
  sub->add_option("--file", flags->file, "A file whose whole contents are the text");
  sub->add_flag("--no-bos", flags->no_bos, "Do not add the BOS token the tokenizer adds by default");
  sub->add_flag("--ids", flags->ids_only, "Print only the ids, space-separated, on one line");
  sub->add_flag("--json", flags->json, "Machine-readable output: ids, pieces and the decoded text");
  return {sub, [flags] { return tokenize(*flags); }};
}

}  // namespace kvp::cli
