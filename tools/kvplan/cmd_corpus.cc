// kvplan corpus: sample sequences from the full model to record and evaluate on.
#include <nlohmann/json.hpp>

#include <cstdio>

#include "common/progress.h"
#include "executor/corpus.h"
#include "executor/cpu/cpu_backend.h"
#include "executor/recorder.h"
#include "tools/kvplan/command.h"

namespace kvp::cli {
namespace {

struct CorpusFlags {
  ModelFlags model;
  SampleCorpusOptions sample;
  std::string out;
  bool json = false;
};

Status corpus(const CorpusFlags& flags) {
  KVP_RETURN_IF_ERROR(flags.sample.sampler.validate());
  if (flags.sample.n_sequences < 1) {
    return make_error("--sample: expected at least 1 sequence, found {}", flags.sample.n_sequences);
  }
  KVP_ASSIGN_OR_RETURN(LoadedModel model, load_model(flags.model.model, flags.model.tokenizer, flags.model.load_options()));
  const int seq_len = model.weights.config().seq_len;
  if (flags.sample.length < 2 || flags.sample.length > seq_len) {
    return make_error("--length: expected 2..{} tokens (the model's seq_len), found {}", seq_len,
                      flags.sample.length);
  }
  KVP_ASSIGN_OR_RETURN(std::string fingerprint, model_fingerprint(model));
  CpuBackend backend(model.weights, flags.model.threads);
  SampleCorpusOptions sample = flags.sample;
  if (model.tokenizer.bos() >= 0) sample.start_token = model.tokenizer.bos();
  Decoder decoder(backend);
  Corpus sampled;
  {
    Progress progress("corpus: sequences", flags.sample.n_sequences, !flags.json);
    sampled = sample_corpus(decoder, sample, [&](int done) { progress.update(done); });
    progress.finish(flags.sample.n_sequences);
  }
  KVP_RETURN_IF_ERROR(save_corpus(flags.out, sampled, model.tokenizer,
                                  {.model_fingerprint = fingerprint, .options = flags.sample}));
  if (flags.json) {
    std::printf("%s\n", nlohmann::json({{"out", flags.out},
                                        {"n_sequences", sampled.sequences.size()},
                                        {"length", flags.sample.length},
                                        {"model_fingerprint", fingerprint}})
                            .dump(2)
                            .c_str());
  } else {
    std::printf("wrote %zu sequences of %d tokens to %s\n", sampled.sequences.size(),
                flags.sample.length, flags.out.c_str());
  }
  return ok_status();
}

}  // namespace

Command add_corpus_command(CLI::App& app) {
  auto flags = std::make_shared<CorpusFlags>();
  CLI::App* sub = app.add_subcommand(
      "corpus", "Sample sequences from the full-cache model (seeded) and write them as a corpus file");
  flags->model.add_to(sub);
  sub->add_option("--sample", flags->sample.n_sequences, "Number of sequences (default 64)");
  sub->add_option("--length", flags->sample.length,
                  "Tokens per sequence, BOS included, at most the model's seq_len (default 512)");
  sub->add_option("--seed", flags->sample.sampler.seed, "Seed; sequence i uses seed + i (default 0)");
  sub->add_option("--temperature", flags->sample.sampler.temperature, "Temperature (default 1)");
  sub->add_option("--top-p", flags->sample.sampler.top_p, "Nucleus mass (default 0.95)");
  sub->add_option("--out", flags->out, "Corpus file to write (JSON Lines)")->required();
  sub->add_flag("--json", flags->json, "Print a JSON summary, no progress");
  return {sub, [flags] { return corpus(*flags); }};
}

}  // namespace kvp::cli
