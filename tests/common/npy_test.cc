// .npy files byte by byte: what numpy.load reads.
#include "common/npy.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

namespace kvp {
namespace {

TEST(Npy, HeaderAndValuesAsNumpyWritesThem) {
  const std::vector<float> v = {1, 2, 3, 4, 5, 6};
  const std::string file = npy_f32({2, 3}, v);
  const std::string dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
  ASSERT_EQ(file.substr(0, 8), std::string("\x93NUMPY\x01\x00", 8));
  const size_t header_len = uint8_t(file[8]) | size_t(uint8_t(file[9])) << 8;
  EXPECT_EQ((10 + header_len) % 64, 0u) << "the data starts on a 64-byte boundary";
  const std::string header = file.substr(10, header_len);
  EXPECT_EQ(header.substr(0, dict.size()), dict);
  EXPECT_EQ(header.find_first_not_of(' ', dict.size()), header_len - 1);
  EXPECT_EQ(header.back(), '\n');
  ASSERT_EQ(file.size(), 10 + header_len + 6 * sizeof(float));
  float back[6];
  std::memcpy(back, file.data() + 10 + header_len, sizeof back);
  for (int i = 0; i < 6; ++i) EXPECT_EQ(back[i], v[i]);
  // One dimension is a one-element tuple.
  const std::string one = npy_f32({3}, std::vector<float>{1, 2, 3});
  EXPECT_NE(one.find("'shape': (3,), }"), std::string::npos);
  EXPECT_DEATH_IF_SUPPORTED(npy_f32({2, 2}, v), "shape holds 4 values, given 6");
}

TEST(Npy, RowsOfDifferentLengthsArePaddedWithNan) {
  const std::vector<float> a = {1, 2, 3}, b = {4};
  const std::vector<const std::vector<float>*> rows = {&a, &b};
  const std::string file = npy_rows_f32({2}, rows);
  EXPECT_NE(file.find("'shape': (2, 3), }"), std::string::npos) << "the longest row's length last";
  const size_t data = 10 + (uint8_t(file[8]) | size_t(uint8_t(file[9])) << 8);
  ASSERT_EQ(file.size(), data + 6 * sizeof(float));
  float out[6];
  std::memcpy(out, file.data() + data, sizeof out);
  EXPECT_EQ(out[0], 1);
  EXPECT_EQ(out[3], 4);
  EXPECT_TRUE(std::isnan(out[4]) && std::isnan(out[5]));
}

}  // namespace
}  // namespace kvp
