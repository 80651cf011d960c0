// Our Q4_K and Q6_K decoders against llama.cpp's quantizer: given a model quantized by
// llama-quantize (Q4_K_M: q4_k and q6_k tensors) and the f16 model it came from, every k-quant
// tensor we decode lies within quantization error of the f16 values — a wrong bit layout would be
// off by the values' own size. Needs the two files (too large to ship):
//   KVPLAN_PEER_F16=model-f16.gguf KVPLAN_PEER_KQUANT=model-q4_k_m.gguf build/tests/executor_tests --gtest_filter='KQuantPeer*'
// and skips, saying so, without them.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>

#include "executor/model/gguf_format.h"

namespace kvp {
namespace {

TEST(KQuantPeer, DecodedTensorsAreWithinQuantizationErrorOfTheF16Source) {
  const char* f16_path = std::getenv("KVPLAN_PEER_F16");
  const char* kq_path = std::getenv("KVPLAN_PEER_KQUANT");
  if (!f16_path || !kq_path) GTEST_SKIP() << "set KVPLAN_PEER_F16 and KVPLAN_PEER_KQUANT (a llama-quantize Q4_K_M of it)";
  auto f16 = GgufFile::open(f16_path);
  auto kq = GgufFile::open(kq_path);
  ASSERT_TRUE(f16.ok()) << f16.error().message();
  ASSERT_TRUE(kq.ok()) << kq.error().message();
  const NamedTensors a = f16->weight_tensors(), b = kq->weight_tensors();
  int checked[2] = {0, 0};
  double worst[2] = {0, 0};
  for (const auto& [name, t] : b) {
    if (t.type != WeightType::kQ4_K && t.type != WeightType::kQ6_K) continue;
    const WeightTensor& src = a.at(name);
    ASSERT_EQ(src.rows, t.rows);
    ASSERT_EQ(src.cols, t.cols);
    // A sample of rows: relative RMS error of the decoded values against the source.
    std::vector<float> x(static_cast<size_t>(t.cols)), y(x.size());
    double err = 0, norm = 0;
    for (int64_t r = 0; r < t.rows; r += std::max<int64_t>(1, t.rows / 64)) {
      dequantize_row(src, r, x);
      dequantize_row(t, r, y);
      for (size_t i = 0; i < x.size(); ++i) {
        err += (double(x[i]) - y[i]) * (double(x[i]) - y[i]);
        norm += double(x[i]) * x[i];
      }
    }
    const double rel = std::sqrt(err / norm);
    const int k = t.type == WeightType::kQ4_K ? 0 : 1;
    worst[k] = std::max(worst[k], rel);
    ++checked[k];
    // 4-bit: about 1/15 of each 32-block's range, so under 15% RMS; 6-bit: under 4%.
    EXPECT_LT(rel, k == 0 ? 0.15 : 0.04) << name << " " << weight_type_name(t.type);
  }
  EXPECT_GT(checked[0], 0);
  EXPECT_GT(checked[1], 0);
  RecordProperty("q4_k_tensors", checked[0]);
  RecordProperty("q6_k_tensors", checked[1]);
  RecordProperty("q4_k_worst_rel_rms", std::to_string(worst[0]));
  RecordProperty("q6_k_worst_rel_rms", std::to_string(worst[1]));
}

}  // namespace
}  // namespace kvp
