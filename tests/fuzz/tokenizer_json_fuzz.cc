// libFuzzer target: tokenizer.json (vocabulary, merges, added tokens, pre-tokenizer regexes), then
// encoding and decoding a fixed text with whatever it accepts.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>

#include "executor/model/hf_format.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvp;
  static const std::string path = "/dev/shm/kvplan-fuzz-" + std::to_string(::getpid()) + "-tokenizer.json";
  std::FILE* out = std::fopen(path.c_str(), "wb");
  if (!out) return 0;
  std::fwrite(data, 1, size, out);
  std::fclose(out);
  Result<Tokenizer> tok = load_tokenizer_json(path, 600);
  if (tok.ok()) {
    const std::vector<int32_t> ids = tok->encode("Hello wörld, it's 2024!  \n\tOnce upon a time 日本", true);
    (void)tok->decode(ids);
  }
  return 0;
}
