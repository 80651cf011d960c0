// Token sequences to record or evaluate on: sampled from a model (`kvplan corpus`) or cut from
// plain text.
//
// A corpus file is JSON Lines: a header object, then one object per sequence.
//   {"format":"kvplan-corpus","version":1,"model_fingerprint":"…","n_sequences":N,"length":T,
//    "seed":S,"temperature":1.0,"top_p":0.95}
//   {"tokens":[1,403,…],"text":"Once upon a time…"}
// Any other file is read as plain text: documents are separated by blank lines or lines holding
// only <|endoftext|>; each is encoded (BOS first) and cut into windows of at most max_len tokens.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "executor/decoder.h"
#include "executor/model/tokenizer.h"
#include "executor/sampler.h"

namespace kvp {

struct Corpus {
  std::vector<std::vector<int32_t>> sequences;  // token ids
  std::string source;                           // file it came from, or "sampled"
  bool sampled = false;                         // from a kvplan corpus file
};

struct SampleCorpusOptions {
  int n_sequences = 64;
  int length = 512;  // tokens per sequence, BOS included; <= seq_len
  SamplerOptions sampler{.temperature = 1.0f, .top_p = 0.95f, .seed = 0};
  int batch = 16;  // sequences per forward pass
  int32_t start_token = kBosToken;  // each sequence starts from it (the tokenizer's BOS)
};

// Samples from the full-cache model. Sequence i uses seed + i (independent of the batching).
// BOS/EOS inside a sequence do not end it: like the training data, stories follow each other.
Corpus sample_corpus(Decoder& decoder, const SampleCorpusOptions& options,
                     const std::function<void(int done)>& progress = {});

struct CorpusFileInfo {
  std::string model_fingerprint;
  SampleCorpusOptions options;
};
Status save_corpus(const std::string& path, const Corpus& corpus, const Tokenizer& tokenizer,
                   const CorpusFileInfo& info);

// Loads a corpus file or plain text. Token ids must lie in the vocabulary; sequences longer than
// max_len are an error in a corpus file and are cut in plain text.
Result<Corpus> load_corpus(const std::string& path, const Tokenizer& tokenizer, int max_len);

}  // namespace kvp
