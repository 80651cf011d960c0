// The CPU dot kernels of every weight type against the plain reference (dequantize, sum in
// double), the element conversions against Eigen's binary16, and q8_0 blocks by hand.
#include <gtest/gtest.h>

#include <Eigen/Core>
#include <bit>
#include <cmath>
#include <cstring>
#include <random>
#include <tuple>

#include "executor/cpu/dot_kernels.h"
#include "executor/model/weight_tensor.h"

namespace kvp {
namespace {

// f32 products summed in 64 lanes then a tree, against a double sum: relative to Σ|w x|.
constexpr double kMaxRelErrF32Dot = 1e-6;

struct Case {
  WeightType type;
  int rows;
  int cols;
  int n_rows;
};

class DotKernels : public ::testing::TestWithParam<Case> {};

std::vector<float> random_floats(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = normal(rng);
  return v;
}

TEST_P(DotKernels, MatchThePlainReference) {
  const Case c = GetParam();
  const uint32_t seed = static_cast<uint32_t>(::testing::UnitTest::GetInstance()->random_seed()) + c.cols * 7 + c.rows;
  const std::vector<float> w_values = random_floats(size_t(c.rows) * c.cols, seed);
  const std::vector<std::byte> stored = quantize(w_values, c.rows, c.cols, c.type);
  const WeightTensor w{.type = c.type, .data = stored.data(), .rows = c.rows, .cols = c.cols};
  const size_t x_stride = c.cols + 3, y_stride = c.rows + 5;  // strides wider than the rows
  const std::vector<float> x = random_floats(c.n_rows * x_stride, seed + 1);
  std::vector<float> y(c.n_rows * y_stride, 0.5f), ref = y;
  const MatmulArgs args{.w = &w, .x = x.data(), .x_stride = x_stride, .y = y.data(), .y_stride = y_stride,
                        .n_rows = c.n_rows, .accumulate = true};
  matmul_range(args, 0, c.rows);
  MatmulArgs ref_args = args;
  ref_args.y = ref.data();
  matmul_reference(ref_args);
  const std::vector<float> wide = dequantize(w);
  for (int r = 0; r < c.n_rows; ++r) {
    for (int o = 0; o < c.rows; ++o) {
      double magnitude = 0.5;
      for (int i = 0; i < c.cols; ++i) magnitude += std::abs(double(wide[size_t(o) * c.cols + i]) * x[r * x_stride + i]);
      ASSERT_NEAR(y[r * y_stride + o], ref[r * y_stride + o], kMaxRelErrF32Dot * magnitude) << "row " << r << " out " << o;
    }
  }
  // Padding between rows is untouched.
  for (int r = 0; r < c.n_rows; ++r) {
    for (size_t o = c.rows; o < y_stride; ++o) ASSERT_EQ(y[r * y_stride + o], 0.5f);
  }
}

// A case's weights, stored in its type, and activation rows of exactly `cols` floats.
struct Operands {
  std::vector<std::byte> stored;
  WeightTensor w;
  std::vector<float> x;
  int n_rows;
  // W x into y, [n_rows, w.rows], packed.
  MatmulArgs args(float* y) const {
    return MatmulArgs{.w = &w, .x = x.data(), .x_stride = size_t(w.cols), .y = y, .y_stride = size_t(w.rows),
                      .n_rows = n_rows};
  }
};

Operands make_operands(const Case& c, uint32_t w_seed, uint32_t x_seed) {
  Operands o;
  o.stored = quantize(random_floats(size_t(c.rows) * c.cols, w_seed), c.rows, c.cols, c.type);
  o.w = WeightTensor{.type = c.type, .data = o.stored.data(), .rows = c.rows, .cols = c.cols};
  o.x = random_floats(size_t(c.n_rows) * c.cols, x_seed);
  o.n_rows = c.n_rows;
  return o;
}

TEST_P(DotKernels, ARowGetsTheSameBitsAloneInABatchOrSplitAcrossThreads) {
  const Case c = GetParam();
  const Operands op = make_operands(c, 99, 7);
  const WeightTensor& w = op.w;
  const std::vector<float>& x = op.x;
  std::vector<float> batch(size_t(c.n_rows) * c.rows);
  const MatmulArgs all = op.args(batch.data());
  // Output rows in two parts, as two threads take them.
  matmul_range(all, 0, c.rows / 2);
  matmul_range(all, c.rows / 2, c.rows);
  for (int r = 0; r < c.n_rows; ++r) {
    std::vector<float> alone(c.rows);
    const MatmulArgs one{.w = &w, .x = x.data() + size_t(r) * c.cols, .x_stride = size_t(c.cols), .y = alone.data(),
                         .y_stride = size_t(c.rows), .n_rows = 1};
    matmul_range(one, 0, c.rows);
    for (int o = 0; o < c.rows; ++o) ASSERT_EQ(std::bit_cast<uint32_t>(alone[o]), std::bit_cast<uint32_t>(batch[size_t(r) * c.rows + o]));
  }
}

// The order dot_kernels.h documents, one element at a time: element i goes by fused multiply-add
// into accumulator (i / 16) % 4, lane i % 16; then lane-wise (a0 + a1) + (a2 + a3), then the
// pairwise tree over the lanes (l + 8, l + 4, l + 2, l + 1). The kernels must give these bits for
// the float types, however many output rows they compute together.
float documented_order_dot(const std::vector<float>& w, const float* x, int cols) {
  float acc[4][16] = {};
  for (int i = 0; i < cols; ++i) acc[(i / 16) % 4][i % 16] = std::fma(w[i], x[i], acc[(i / 16) % 4][i % 16]);
  float s[16];
  for (int l = 0; l < 16; ++l) s[l] = (acc[0][l] + acc[1][l]) + (acc[2][l] + acc[3][l]);
  for (int width = 8; width >= 1; width /= 2) {
    for (int l = 0; l < width; ++l) s[l] = s[l] + s[l + width];
  }
  return s[0];
}

class DotKernelsFloatOrder : public ::testing::TestWithParam<Case> {};

TEST_P(DotKernelsFloatOrder, SumInTheDocumentedOrder) {
  const Case c = GetParam();
  const Operands op = make_operands(c, 5, 6);
  std::vector<float> y(size_t(c.n_rows) * c.rows);
  matmul_range(op.args(y.data()), 0, c.rows);
  std::vector<float> row(c.cols);
  for (int o = 0; o < c.rows; ++o) {
    dequantize_row(op.w, o, row);
    for (int r = 0; r < c.n_rows; ++r) {
      const float want = documented_order_dot(row, op.x.data() + size_t(r) * c.cols, c.cols);
      ASSERT_EQ(std::bit_cast<uint32_t>(y[size_t(r) * c.rows + o]), std::bit_cast<uint32_t>(want))
          << "row " << r << " out " << o << ": " << y[size_t(r) * c.rows + o] << " vs " << want;
    }
  }
}

std::vector<Case> cases() {
  std::vector<Case> out;
  for (WeightType t : {WeightType::kF32, WeightType::kF16, WeightType::kBF16}) {
    for (int cols : {1, 17, 64, 97, 513}) out.push_back({t, 17, cols, 5});
    out.push_back({t, 40, 64, 1});  // several 16-row output blocks and a partial one
    out.push_back({t, 1, 2048, 1});
  }
  for (int cols : {32, 64, 96, 160, 1024}) out.push_back({WeightType::kQ8_0, 13, cols, 6});
  out.push_back({WeightType::kQ8_0, 97, 32, 1});
  // Batches past one tile of activation rows (16 rows of 4096, 4 of 20000) and a partial last one.
  out.push_back({WeightType::kF16, 40, 4096, 37});
  out.push_back({WeightType::kQ8_0, 40, 4096, 37});
  out.push_back({WeightType::kF32, 17, 20000, 9});
  return out;
}

std::string case_name(const ::testing::TestParamInfo<Case>& info) {
  return std::string(weight_type_name(info.param.type)) + "_" + std::to_string(info.param.rows) + "x" +
         std::to_string(info.param.cols) + "_rows" + std::to_string(info.param.n_rows);
}

INSTANTIATE_TEST_SUITE_P(Shapes, DotKernels, ::testing::ValuesIn(cases()), case_name);

// q8_0 sums each 32-block, then scales it: not this order.
std::vector<Case> float_cases() {
  std::vector<Case> out;
  for (const Case& c : cases()) {
    if (c.type != WeightType::kQ8_0) out.push_back(c);
  }
  return out;
}
INSTANTIATE_TEST_SUITE_P(Shapes, DotKernelsFloatOrder, ::testing::ValuesIn(float_cases()), case_name);

TEST(WeightTypes, HalfToFloatMatchesEigenForEveryBitPattern) {
  for (uint32_t bits = 0; bits < 65536; ++bits) {
    Eigen::half h;
    const uint16_t b = static_cast<uint16_t>(bits);
    std::memcpy(&h, &b, 2);
    const float want = static_cast<float>(h), got = half_to_float(b);
    if (std::isnan(want)) {
      ASSERT_TRUE(std::isnan(got)) << bits;
    } else {
      ASSERT_EQ(std::bit_cast<uint32_t>(got), std::bit_cast<uint32_t>(want)) << bits;
    }
  }
}

TEST(WeightTypes, FloatToHalfRoundsAsEigenDoes) {
  std::mt19937 rng(::testing::UnitTest::GetInstance()->random_seed());
  for (int i = 0; i < 200000; ++i) {
    // Values across the binary16 range, subnormals and overflow included.
    const float x = std::ldexp(std::uniform_real_distribution<float>(-1.0f, 1.0f)(rng),
                               std::uniform_int_distribution<int>(-28, 17)(rng));
    const Eigen::half h(x);
    uint16_t want;
    std::memcpy(&want, &h, 2);
    ASSERT_EQ(float_to_half(x), want) << x;
  }
  EXPECT_EQ(float_to_half(65520.0f), 0x7c00);  // rounds up to infinity
  EXPECT_EQ(float_to_half(65519.0f), 0x7bff);
  EXPECT_EQ(float_to_half(-0.0f), 0x8000);
}

TEST(WeightTypes, Bf16KeepsTheHighHalfRoundedToNearestEven) {
  EXPECT_EQ(float_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(bf16_to_float(0x3f80), 1.0f);
  // 1 + 2^-8 is halfway between bf16 1 and 1 + 2^-7: ties go to the even mantissa (1).
  EXPECT_EQ(float_to_bf16(1.0f + 0x1p-8f), 0x3f80);
  EXPECT_EQ(float_to_bf16(1.0f + 0x1p-8f + 0x1p-20f), 0x3f81);
  EXPECT_EQ(float_to_bf16(1.0f + 3 * 0x1p-8f), 0x3f82);  // halfway above an odd one: up to even
  EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(NAN))));
}

TEST(WeightTypes, Q8_0BlockByHand) {
  std::vector<float> x(32);
  for (int i = 0; i < 32; ++i) x[i] = (i - 16) * 0.25f;  // max |x| = 4 at i = 0
  const std::vector<std::byte> q = quantize(x, 1, 32, WeightType::kQ8_0);
  ASSERT_EQ(q.size(), 34u);
  uint16_t d;
  std::memcpy(&d, q.data(), 2);
  EXPECT_EQ(half_to_float(d), half_to_float(float_to_half(4.0f / 127.0f)));
  EXPECT_EQ(static_cast<int8_t>(q[2]), -127);       // -4 / d
  EXPECT_EQ(static_cast<int8_t>(q[2 + 16]), 0);     // 0
  EXPECT_EQ(static_cast<int8_t>(q[2 + 17]), 8);     // 0.25 / (4/127) = 7.94 -> 8
  const WeightTensor t{.type = WeightType::kQ8_0, .data = q.data(), .rows = 1, .cols = 32};
  const std::vector<float> back = dequantize(t);
  EXPECT_EQ(back[17], half_to_float(d) * 8.0f);
  for (int i = 0; i < 32; ++i) EXPECT_NEAR(back[i], x[i], 4.0f / 127.0f / 2 * 1.01f) << i;
}

TEST(WeightTypes, FirstNonFiniteFindsNanInEveryType) {
  std::vector<float> x(64, 1.0f);
  x[40] = NAN;
  for (WeightType t : {WeightType::kF32, WeightType::kF16, WeightType::kBF16}) {
    const std::vector<std::byte> s = quantize(x, 2, 32, t);
    EXPECT_EQ(first_non_finite(WeightTensor{.type = t, .data = s.data(), .rows = 2, .cols = 32}), 40) << weight_type_name(t);
  }
  x[40] = 1.0f;
  for (WeightType t : {WeightType::kF32, WeightType::kF16, WeightType::kBF16, WeightType::kQ8_0}) {
    const std::vector<std::byte> s = quantize(x, 2, 32, t);
    EXPECT_EQ(first_non_finite(WeightTensor{.type = t, .data = s.data(), .rows = 2, .cols = 32}), -1) << weight_type_name(t);
  }
  std::vector<std::byte> q = quantize(x, 2, 32, WeightType::kQ8_0);
  const uint16_t inf = 0x7c00;
  std::memcpy(q.data() + 34, &inf, 2);  // the second block's scale
  EXPECT_EQ(first_non_finite(WeightTensor{.type = WeightType::kQ8_0, .data = q.data(), .rows = 2, .cols = 32}), 32);
}

// Past the first 1024-element chunk, at a chunk's edges, and the first of two in one chunk.
TEST(WeightTypes, FirstNonFiniteFindsTheFirstOneAnywhere) {
  for (WeightType t : {WeightType::kF32, WeightType::kF16, WeightType::kBF16}) {
    for (int64_t at : {0, 1023, 1024, 2047, 3199}) {
      std::vector<float> x(100 * 32, 0.5f);
      x[at] = INFINITY;
      if (at + 7 < 3200) x[at + 7] = NAN;
      const std::vector<std::byte> s = quantize(x, 100, 32, t);
      EXPECT_EQ(first_non_finite(WeightTensor{.type = t, .data = s.data(), .rows = 100, .cols = 32}), at)
          << weight_type_name(t);
    }
  }
}

}  // namespace
}  // namespace kvp

namespace kvp {
namespace {

TEST(KQuants, Q4_KBlockByHand) {
  std::vector<std::byte> b(kQ4KBlockBytes, std::byte{0});
  auto set = [&](size_t at, int v) { b[at] = static_cast<std::byte>(v); };
  set(0, 0x00), set(1, 0x3C);  // d = 1
  set(2, 0x00), set(3, 0x38);  // dmin = 0.5
  // scales[12] at 4: sub-block 0 scale 2, min 3; sub-block 4 scale (q[8] & 15) | (q[0] >> 6) << 4.
  set(4 + 0, 0x02 | 0x40), set(4 + 4, 0x03), set(4 + 8, 0x21);
  set(16 + 0, 0x75);   // element 0: low nibble 5; element 32 (sub-block 1, all zero): high nibble 7
  set(16 + 64, 0x09);  // element 128 (sub-block 4): low nibble 9
  float out[kQkBlockSize];
  dequantize_q4_k_block(b.data(), out);
  EXPECT_FLOAT_EQ(out[0], 1.0f * 2 * 5 - 0.5f * 3);   // 8.5
  EXPECT_FLOAT_EQ(out[1], -1.5f);                     // q 0
  EXPECT_FLOAT_EQ(out[32], 0.0f);                     // scale 0, min 0
  EXPECT_FLOAT_EQ(out[128], 1.0f * 17 * 9 - 0.5f * 2);  // scale 1 | 1 << 4, min 2
}

TEST(KQuants, Q6_KBlockByHand) {
  std::vector<std::byte> b(kQ6KBlockBytes, std::byte{0});
  auto set = [&](size_t at, int v) { b[at] = static_cast<std::byte>(v); };
  set(0, 0x21);          // ql[0]: low 1 (element 0), high 2 (element 64)
  set(128, 0x01);        // qh[0]: bits 0-1 = 1 (element 0's high bits)
  set(192 + 0, 3);       // scale of elements 0..15
  set(192 + 4, 0xFE);    // scale -2 of elements 64..79
  set(208, 0x00), set(209, 0x38);  // d = 0.5
  float out[kQkBlockSize];
  dequantize_q6_k_block(b.data(), out);
  EXPECT_FLOAT_EQ(out[0], 0.5f * 3 * ((1 | 1 << 4) - 32));  // -22.5
  EXPECT_FLOAT_EQ(out[64], 0.5f * -2 * (2 - 32));           // 30
  EXPECT_FLOAT_EQ(out[1], 0.5f * 3 * -32);                  // q 0 - 32
}

// Quantized rows `data` of `type` ([rows, cols]) against the plain reference for n_rows random
// activation rows: each result within f32 rounding of the double sum, the same bits alone as in
// the batch, and one-hot activations at `hot_columns` reading out the scalar decoder's weights
// exactly (the kernels' vector decoders give its values).
void check_quantized_kernels(WeightType type, const std::vector<std::byte>& data, int rows, int cols, int n_rows,
                             std::initializer_list<int> hot_columns) {
  const WeightTensor w{.type = type, .data = data.data(), .rows = rows, .cols = cols};
  ASSERT_EQ(first_non_finite(w), -1);
  const std::vector<float> x = random_floats(size_t(n_rows) * cols, 3);
  std::vector<float> y(size_t(n_rows) * rows), ref = y;
  MatmulArgs a{.w = &w, .x = x.data(), .x_stride = size_t(cols), .y = y.data(), .y_stride = size_t(rows), .n_rows = n_rows};
  matmul_range(a, 0, rows);
  a.y = ref.data();
  matmul_reference(a);
  const std::vector<float> wide = dequantize(w);
  for (int r = 0; r < n_rows; ++r) {
    std::vector<float> alone(rows);
    const MatmulArgs one{.w = &w, .x = x.data() + size_t(r) * cols, .x_stride = size_t(cols), .y = alone.data(),
                         .y_stride = size_t(rows), .n_rows = 1};
    matmul_range(one, 0, rows);
    for (int o = 0; o < rows; ++o) {
      double magnitude = 0;
      for (int i = 0; i < cols; ++i) magnitude += std::abs(double(wide[o * cols + i]) * x[r * cols + i]);
      ASSERT_NEAR(y[r * rows + o], ref[r * rows + o], kMaxRelErrF32Dot * magnitude) << weight_type_name(type);
      ASSERT_EQ(std::bit_cast<uint32_t>(alone[o]), std::bit_cast<uint32_t>(y[r * rows + o])) << weight_type_name(type);
    }
  }
  for (int i : hot_columns) {
    if (i >= cols) continue;
    std::vector<float> hot(cols, 0.0f), out(rows);
    hot[i] = 1.0f;
    const MatmulArgs one{.w = &w, .x = hot.data(), .x_stride = size_t(cols), .y = out.data(), .y_stride = size_t(rows), .n_rows = 1};
    matmul_range(one, 0, rows);
    for (int o = 0; o < rows; ++o) ASSERT_EQ(out[o], wide[o * cols + i]) << weight_type_name(type) << " row " << o << " col " << i;
  }
}

// Random bytes of `type` rows with each block's binary16 scales (at `scale_at` in blocks of
// `block` bytes) made sane: normal magnitudes, of either sign when `signed_scales`.
std::vector<std::byte> random_quant_rows(WeightType type, int rows, int cols, size_t block,
                                         std::initializer_list<size_t> scale_at, bool signed_scales, std::mt19937& rng) {
  std::vector<std::byte> data(rows * row_bytes(type, cols));
  for (auto& x : data) x = static_cast<std::byte>(rng() & 0xff);
  for (size_t b = 0; b < data.size() / block; ++b) {
    for (size_t at : scale_at) {
      const uint16_t d = static_cast<uint16_t>(0x1c00 + rng() % 0x1000 + (signed_scales && (rng() & 1) ? 0x8000 : 0));
      std::memcpy(data.data() + b * block + at, &d, 2);
    }
  }
  return data;
}

// Random k-quant rows (sane binary16 scales, any other bytes) through check_quantized_kernels.
TEST(KQuants, KernelsMatchTheReferenceAndAreBatchInvariant) {
  std::mt19937 rng(::testing::UnitTest::GetInstance()->random_seed());
  const std::vector<std::byte> q4 = random_quant_rows(WeightType::kQ4_K, 7, 512, kQ4KBlockBytes, {0, 2}, false, rng);
  check_quantized_kernels(WeightType::kQ4_K, q4, 7, 512, 5, {0, 17, 31, 32, 100, 127, 128, 200, 255, 256, 300, 511});
  const std::vector<std::byte> q6 = random_quant_rows(WeightType::kQ6_K, 7, 512, kQ6KBlockBytes, {208}, false, rng);
  check_quantized_kernels(WeightType::kQ6_K, q6, 7, 512, 5, {0, 17, 31, 32, 100, 127, 128, 200, 255, 256, 300, 511});
}

// q4_0: d = 0.5; byte 0 = 0x3A holds element 0 (low nibble 10) and element 16 (high nibble 3).
// q4_1: d = 0.5, m = -1 over the same nibbles.
TEST(Q4Weights, BlocksByHand) {
  std::vector<std::byte> b0(kQ4_0BlockBytes, std::byte{0x88}), b1(kQ4_1BlockBytes, std::byte{0});
  const uint16_t half = 0x3800, minus_one = 0xBC00;  // 0.5 and -1 in binary16
  std::memcpy(b0.data(), &half, 2);
  b0[2] = std::byte{0x3A};
  std::memcpy(b1.data(), &half, 2);
  std::memcpy(b1.data() + 2, &minus_one, 2);
  b1[4] = std::byte{0x3A};
  b1[4 + 15] = std::byte{0xF0};  // element 15: 0, element 31: 15
  float out[kQ4BlockSize];
  dequantize_q4_0_block(b0.data(), out);
  EXPECT_EQ(out[0], 0.5f * (10 - 8));
  EXPECT_EQ(out[16], 0.5f * (3 - 8));
  EXPECT_EQ(out[1], 0.0f);  // 0x88: both nibbles 8
  dequantize_q4_1_block(b1.data(), out);
  EXPECT_EQ(out[0], 0.5f * 10 - 1);
  EXPECT_EQ(out[16], 0.5f * 3 - 1);
  EXPECT_EQ(out[15], -1.0f);
  EXPECT_EQ(out[31], 0.5f * 15 - 1);
  EXPECT_EQ(row_bytes(WeightType::kQ4_0, 64), 36u);
  EXPECT_EQ(row_bytes(WeightType::kQ4_1, 64), 40u);
  EXPECT_FALSE(row_layout_ok(WeightType::kQ4_1, 48));
  EXPECT_TRUE(row_layout_ok(WeightType::kQ4_1, 64));
}

// ggml's reference quantizers, by hand: q4_1 spans [min, max] in 15 steps, q4_0 maps the
// largest-magnitude value to -8; every value comes back within half a step (and the scales' binary16
// rounding).
TEST(Q4Weights, QuantizeAsGgmlsReferenceDoes) {
  std::vector<float> x(32);
  for (int i = 0; i < 32; ++i) x[i] = 0.1f * i - 0.5f;  // min -0.5, max 2.6
  const std::vector<std::byte> q1 = quantize(x, 1, 32, WeightType::kQ4_1);
  ASSERT_EQ(q1.size(), size_t(kQ4_1BlockBytes));
  uint16_t d, m;
  std::memcpy(&d, q1.data(), 2);
  std::memcpy(&m, q1.data() + 2, 2);
  EXPECT_EQ(d, float_to_half(3.1f / 15));
  EXPECT_EQ(m, float_to_half(-0.5f));
  EXPECT_EQ(static_cast<uint8_t>(q1[4]) & 0xF, 0);         // x[0] = min
  EXPECT_EQ(static_cast<uint8_t>(q1[4 + 15]) >> 4, 15);    // x[31] = max
  const std::vector<std::byte> q0 = quantize(x, 1, 32, WeightType::kQ4_0);
  std::memcpy(&d, q0.data(), 2);
  EXPECT_EQ(d, float_to_half(2.6f / -8));                   // the largest |x| is x[31] = 2.6
  EXPECT_EQ(static_cast<uint8_t>(q0[2 + 15]) >> 4, 0);      // 2.6 / d + 8.5 = 0.5 -> 0
  for (WeightType t : {WeightType::kQ4_0, WeightType::kQ4_1}) {
    const std::vector<std::byte> q = quantize(x, 1, 32, t);
    const std::vector<float> back = dequantize(WeightTensor{.type = t, .data = q.data(), .rows = 1, .cols = 32});
    const double step = t == WeightType::kQ4_1 ? 3.1 / 15 : 2.6 / 8;
    for (int i = 0; i < 32; ++i) EXPECT_NEAR(back[i], x[i], step / 2 * 1.02 + 1e-3) << weight_type_name(t) << " " << i;
  }
}

// Random q4 rows (scales of either sign, any nibbles) through check_quantized_kernels, in one
// tile of activation rows and past it; an infinite scale found where it is.
TEST(Q4Weights, KernelsMatchTheReferenceAndAreBatchInvariant) {
  std::mt19937 rng(::testing::UnitTest::GetInstance()->random_seed());
  for (WeightType type : {WeightType::kQ4_0, WeightType::kQ4_1}) {
    const bool q4_1 = type == WeightType::kQ4_1;
    const size_t block = q4_1 ? kQ4_1BlockBytes : kQ4_0BlockBytes;
    for (const auto [rows, cols, n_rows] : {std::tuple{37, 576, 5}, std::tuple{19, 1536, 70}, std::tuple{3, 32, 1}}) {
      std::vector<std::byte> data = q4_1 ? random_quant_rows(type, rows, cols, block, {0, 2}, true, rng)
                                         : random_quant_rows(type, rows, cols, block, {0}, true, rng);
      check_quantized_kernels(type, data, rows, cols, n_rows, {0, 15, 16, 31, 32, cols - 1});
      // The min m of q4_1, the d of q4_0, in the last block.
      const uint16_t inf = 0x7c00;
      std::memcpy(data.data() + data.size() - block + (q4_1 ? 2 : 0), &inf, 2);
      const WeightTensor w{.type = type, .data = data.data(), .rows = rows, .cols = cols};
      EXPECT_EQ(first_non_finite(w), int64_t(rows) * cols - kQ4BlockSize) << weight_type_name(type);
    }
  }
}

}  // namespace
}  // namespace kvp
