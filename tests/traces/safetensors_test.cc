// The safetensors writer and validating reader: round trips in F32, F16 and I32, and every
// structural corruption refused with an error naming the file (and tensor).
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>

#include "common/sha256.h"
#include "tests/support/test_support.h"
#include "traces/safetensors_file.h"
#include "traces/safetensors_writer.h"

namespace kvp {
namespace {

namespace fs = std::filesystem;

// Largest relative error of rounding to binary16 (half an ulp at 11 significant bits).
constexpr double kMaxRelErrF16 = 1.0 / 2048;

TEST(Safetensors, F32AndI32RoundTripExactly) {
  SafetensorsWriter w;
  const std::vector<float> a = {1.5f, -0.0f, 3.0e-38f, 65504.0f, -1e30f, 0.1f};
  const std::vector<int32_t> b = {0, -1, 2147483647, -2147483647 - 1};
  w.add_f32("a", {2, 3}, a);
  w.add_i32("b", {4}, b);
  w.set_metadata("who", "test");
  const std::string path = test::make_temp_dir("st") + "/x.safetensors";
  auto digest = w.write(path);
  ASSERT_TRUE(digest.ok()) << digest.error().message();
  EXPECT_EQ(digest->size(), 64u);

  auto f = SafetensorsFile::open(path);
  ASSERT_TRUE(f.ok()) << f.error().message();
  EXPECT_EQ(f->metadata().at("who"), "test");
  auto ta = f->expect("a", TensorDtype::kF32, {2, 3});
  ASSERT_TRUE(ta.ok()) << ta.error().message();
  std::vector<float> back(6);
  f->read_floats(**ta, back);
  EXPECT_EQ(std::memcmp(back.data(), a.data(), 24), 0);  // bit for bit, -0 included
  auto tb = f->expect("b", TensorDtype::kI32, {4});
  ASSERT_TRUE(tb.ok());
  EXPECT_EQ(std::memcmp(f->bytes(**tb).data(), b.data(), 16), 0);
  // The header is padded to a multiple of 8, so the data buffer starts 8-aligned.
  uint64_t n = 0;
  std::memcpy(&n, test::read_bytes(path).data(), 8);
  EXPECT_EQ(n % 8, 0u);
}

TEST(Safetensors, F16RoundTripIsWithinHalfAnUlpAndKeepsSpecials) {
  std::vector<float> values;
  for (int i = -40; i <= 40; ++i) values.push_back(std::ldexp(1.2345f, i / 3) * (i % 2 ? -1 : 1));
  values.push_back(0.0f);
  values.push_back(65504.0f);                                   // largest half
  values.push_back(std::ldexp(1.0f, -24));                      // smallest subnormal half
  values.push_back(std::numeric_limits<float>::infinity());
  SafetensorsWriter w;
  w.add_float_as("h", TensorDtype::kF16, {static_cast<int64_t>(values.size())}, values);
  const std::string path = test::make_temp_dir("st16") + "/h.safetensors";
  ASSERT_TRUE(w.write(path).ok());
  auto f = SafetensorsFile::open(path);
  ASSERT_TRUE(f.ok());
  const TensorInfo* t = f->find("h");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->dtype, TensorDtype::kF16);
  EXPECT_EQ(t->end - t->begin, static_cast<int64_t>(values.size()) * 2);
  std::vector<float> back(values.size());
  f->read_floats(*t, back);
  for (size_t i = 0; i < values.size(); ++i) {
    if (std::isinf(values[i])) {
      EXPECT_EQ(back[i], values[i]);
    } else if (std::abs(values[i]) >= std::ldexp(1.0f, -14)) {  // normal range of binary16
      EXPECT_LE(std::abs(back[i] - values[i]), kMaxRelErrF16 * std::abs(values[i])) << values[i];
    } else {
      EXPECT_EQ(back[i], values[i]) << "exactly representable subnormal or zero";
    }
  }
}

// Builds a file from a header object and a data buffer, as a corrupt writer might.
std::string raw_file(const nlohmann::json& header, const std::string& data, int64_t header_len_override = -1) {
  std::string json = header.dump();
  uint64_t n = header_len_override >= 0 ? uint64_t(header_len_override) : json.size();
  std::string bytes(8, '\0');
  std::memcpy(bytes.data(), &n, 8);
  return bytes + json + data;
}

struct BadFile {
  std::string name;
  std::function<std::string()> bytes;
  std::string expect;
  friend void PrintTo(const BadFile& b, std::ostream* os) { *os << b.name; }
};

nlohmann::json entry(const char* dtype, std::vector<int64_t> shape, int64_t b, int64_t e) {
  return {{"dtype", dtype}, {"shape", shape}, {"data_offsets", {b, e}}};
}

std::vector<BadFile> bad_files() {
  const std::string data(16, '\x01');
  return {
      {"too_short", [] { return std::string("abc"); }, "header length"},
      {"header_length_past_end",
       [=] { return raw_file({{"a", entry("F32", {4}, 0, 16)}}, data, 1 << 20); }, "runs past the end"},
      {"header_not_json", [] { return raw_file(nullptr, "").replace(8, 4, "{{{{"); }, "not a JSON object"},
      {"unknown_dtype", [=] { return raw_file({{"a", entry("Q4", {4}, 0, 16)}}, data); }, "tensor a: dtype"},
      {"negative_shape", [=] { return raw_file({{"a", entry("F32", {-4}, 0, 16)}}, data); }, "tensor a: shape"},
      {"shape_disagrees_with_offsets",
       [=] { return raw_file({{"a", entry("F32", {3}, 0, 16)}}, data); }, "need 12"},
      {"out_of_range",
       [=] { return raw_file({{"a", entry("F32", {8}, 0, 32)}}, data); }, "out of range"},
      {"overlapping",
       [=] {
         return raw_file({{"a", entry("F32", {3}, 0, 12)}, {"b", entry("F32", {2}, 8, 16)}}, data);
       },
       "overlap"},
      {"hole",
       [=] { return raw_file({{"a", entry("F32", {2}, 0, 8)}, {"b", entry("F32", {1}, 12, 16)}}, data); },
       "belong to no tensor"},
      {"trailing_bytes", [=] { return raw_file({{"a", entry("F32", {2}, 0, 8)}}, data); }, "cover 8"},
      {"negative_offset",
       [=] { return raw_file({{"a", {{"dtype", "F32"}, {"shape", {1}}, {"data_offsets", {-4, 0}}}}}, data); },
       "data_offsets"},
  };
}

TEST(Safetensors, Bf16RoundsToNearestEvenAndKeepsSpecials) {
  // bf16 is the high half of a binary32: 8 significant bits.
  const float halfway_even = 1.0f + 1.0f / 256;      // between 0x3F80 and 0x3F81: to 0x3F80 (even)
  const float halfway_odd = 1.0f + 3.0f / 256;       // between 0x3F81 and 0x3F82: to 0x3F82 (even)
  const float above_halfway = 1.0f + 1.0f / 256 + 1.0f / 65536;  // just above: up, to 0x3F81
  const std::vector<float> in = {1.0f, -2.0f, halfway_even, halfway_odd, above_halfway, 0.0f, -0.0f,
                                 std::numeric_limits<float>::infinity(), std::numeric_limits<float>::quiet_NaN(),
                                 3.0e38f};
  std::vector<uint16_t> bits(in.size());
  f32_to_bf16(in, bits);
  EXPECT_EQ(bits[0], 0x3F80);
  EXPECT_EQ(bits[1], 0xC000);
  EXPECT_EQ(bits[2], 0x3F80);
  EXPECT_EQ(bits[3], 0x3F82);
  EXPECT_EQ(bits[4], 0x3F81);
  EXPECT_EQ(bits[5], 0x0000);
  EXPECT_EQ(bits[6], 0x8000);
  EXPECT_EQ(bits[7], 0x7F80);
  EXPECT_EQ(bits[8] & 0x7F80, 0x7F80);
  EXPECT_NE(bits[8] & 0x007F, 0) << "NaN stays NaN";
  EXPECT_EQ(bits[9], 0x7F62) << "3e38 rounds to 0x7F62 (3.0040e38), not to infinity";

  SafetensorsWriter w;
  w.add_float_as("x", TensorDtype::kBF16, {static_cast<int64_t>(in.size())}, in);
  const std::string path = test::make_temp_dir("st") + "/bf16.safetensors";
  ASSERT_TRUE(w.write(path).ok());
  auto f = SafetensorsFile::open(path);
  ASSERT_TRUE(f.ok()) << f.error().message();
  auto t = f->expect("x", TensorDtype::kBF16, {static_cast<int64_t>(in.size())});
  ASSERT_TRUE(t.ok()) << t.error().message();
  std::vector<float> back(in.size());
  f->read_floats(**t, back);
  for (size_t i = 0; i < in.size(); ++i) {
    uint32_t b;
    std::memcpy(&b, &back[i], 4);
    EXPECT_EQ(b, uint32_t{bits[i]} << 16) << "element " << i;
  }
}

// Resident bytes of the mapping that contains `p`, from /proc/self/smaps.
int64_t resident_bytes_of_mapping(const void* p) {
  std::ifstream smaps("/proc/self/smaps");
  const uintptr_t at = reinterpret_cast<uintptr_t>(p);
  bool inside = false;
  for (std::string line; std::getline(smaps, line);) {
    uintptr_t lo = 0, hi = 0;
    if (std::sscanf(line.c_str(), "%lx-%lx ", &lo, &hi) == 2 && line.find(':') > line.find(' ')) {
      inside = lo <= at && at < hi;
    } else if (inside && line.rfind("Rss:", 0) == 0) {
      return std::stoll(line.substr(4)) * 1024;  // "Rss:   1234 kB"
    }
  }
  return -1;
}

TEST(Safetensors, ReleasedPagesLeaveTheProcessAndReadBackTheSame) {
  // 16 MiB of floats: reading them makes the mapping resident; releasing drops it, not the data.
  std::vector<float> x(size_t{4} << 20);
  for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(i % 1000) * 0.5f;
  SafetensorsWriter w;
  w.add_f32("x", {static_cast<int64_t>(x.size())}, x);
  const std::string path = test::make_temp_dir("st") + "/big.safetensors";
  ASSERT_TRUE(w.write(path).ok());
  auto f = SafetensorsFile::open(path);
  ASSERT_TRUE(f.ok());
  const TensorInfo& t = *f->find("x");
  std::vector<float> back(x.size());
  f->read_floats(t, back);
  const int64_t before = resident_bytes_of_mapping(f->bytes(t).data());
  ASSERT_GE(before, int64_t{15} << 20) << "reading touched every page";
  f->release(t);
  EXPECT_LE(resident_bytes_of_mapping(f->bytes(t).data()), int64_t{8} << 10);
  std::vector<float> again(x.size());
  f->read_floats(t, again);
  EXPECT_EQ(again, x);
  // The checksum pass releases as it goes, and equals the digest of the file.
  EXPECT_EQ(f->sha256_releasing(), *sha256_file(path));
  EXPECT_LE(resident_bytes_of_mapping(f->bytes(t).data()), int64_t{8} << 10);
}

class CorruptSafetensors : public ::testing::TestWithParam<BadFile> {};

TEST_P(CorruptSafetensors, IsRefusedNamingTheFile) {
  const std::string path = test::make_temp_dir("bad") + "/bad.safetensors";
  test::write_bytes(path, GetParam().bytes());
  auto f = SafetensorsFile::open(path);
  ASSERT_FALSE(f.ok());
  EXPECT_NE(f.error().message().find(path), std::string::npos) << f.error().message();
  EXPECT_NE(f.error().message().find(GetParam().expect), std::string::npos) << f.error().message();
}

INSTANTIATE_TEST_SUITE_P(Cases, CorruptSafetensors, ::testing::ValuesIn(bad_files()),
                         [](const auto& info) { return info.param.name; });

TEST(Safetensors, ExpectNamesDtypeAndShapeMismatches) {
  SafetensorsWriter w;
  const std::vector<float> a(6, 1.0f);
  w.add_f32("a", {2, 3}, a);
  const std::string path = test::make_temp_dir("exp") + "/e.safetensors";
  ASSERT_TRUE(w.write(path).ok());
  auto f = SafetensorsFile::open(path);
  ASSERT_TRUE(f.ok());
  auto wrong_dtype = f->expect("a", TensorDtype::kF16, {2, 3});
  ASSERT_FALSE(wrong_dtype.ok());
  EXPECT_NE(wrong_dtype.error().message().find("tensor a: dtype: expected F16, found F32"), std::string::npos);
  auto wrong_shape = f->expect("a", TensorDtype::kF32, {3, 2});
  ASSERT_FALSE(wrong_shape.ok());
  EXPECT_NE(wrong_shape.error().message().find("expected [3, 2], found [2, 3]"), std::string::npos);
  EXPECT_FALSE(f->expect("b", TensorDtype::kF32, {1}).ok());
}

TEST(Safetensors, AWriteThatFailsMidwayLeavesNoFile) {
  SafetensorsWriter w;
  const std::vector<float> a(1000, 2.0f);
  w.add_f32("a", {1000}, a);
  const std::string dir = test::make_temp_dir("crash");
  const std::string path = dir + "/x.safetensors";
  auto r = w.write(path, /*fail_after_bytes=*/1500);
  ASSERT_FALSE(r.ok());
  EXPECT_FALSE(fs::exists(path));
  EXPECT_TRUE(fs::is_empty(dir)) << "the temporary file is removed too";
}

}  // namespace
}  // namespace kvp
