// libFuzzer target: the GGUF reader, the model description and tokenizer it yields, and the
// weight views on whatever it accepts. Any crash, sanitizer report or oversized allocation fails.
#include <cstddef>
#include <cstdint>
#include <span>

#include "executor/model/gguf_format.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvp;
  auto file = MappedFile::from_bytes("fuzz.gguf", std::as_bytes(std::span<const uint8_t>(data, size)));
  Result<GgufFile> f = GgufFile::open(file);
  if (!f.ok()) return 0;
  Result<Tokenizer> tok = gguf_tokenizer(*f);
  if (tok.ok()) {
    const std::vector<int32_t> ids = tok->encode("Hello wörld, it's 2024!  \n\tOnce upon a time", true);
    (void)tok->decode(ids);
  }
  Result<ModelConfig> config = read_gguf_config(*f);
  if (!config.ok()) return 0;
  NamedTensors tensors = f->weight_tensors();
  tensors.erase("rope_freqs.weight");
  Result<ModelWeights> w = ModelWeights::from_tensors(*config, tensors, {f->mapping()}, "fuzz.gguf");
  if (w.ok()) (void)check_finite(*w);
  return 0;
}
