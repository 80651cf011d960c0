// libFuzzer target: the safetensors reader (traces and Hugging Face weights), then the Hugging Face
// name mapping over what it accepts.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>

#include "traces/safetensors_file.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvp;
  // The reader maps a file: write the input to one in memory-backed /dev/shm.
  static const std::string path = "/dev/shm/kvplan-fuzz-" + std::to_string(::getpid()) + ".safetensors";
  std::FILE* out = std::fopen(path.c_str(), "wb");
  if (!out) return 0;
  std::fwrite(data, 1, size, out);
  std::fclose(out);
  Result<SafetensorsFile> f = SafetensorsFile::open(path);
  if (f.ok()) {
    for (const TensorInfo& t : f->tensors()) {
      const auto bytes = f->bytes(t);
      volatile std::byte sink{};
      if (!bytes.empty()) sink = bytes.back();
      (void)sink;
    }
  }
  return 0;
}
