#include "common/file_util.h"

#include <gtest/gtest.h>

#include <filesystem>

#include "common/sha256.h"
#include "tests/support/test_support.h"

namespace kvp {
namespace {

namespace fs = std::filesystem;

TEST(WriteFileAtomic, WritesAndReplaces) {
  const std::string path = test::make_temp_dir("atomic") + "/f.txt";
  ASSERT_TRUE(write_file_atomic(path, "first").ok());
  ASSERT_TRUE(write_file_atomic(path, "second").ok());
  EXPECT_EQ(*read_file_text(path), "second");
}

TEST(WriteFileAtomic, AFailedWriteLeavesTheOldFileAndNoTemporary) {
  const std::string dir = test::make_temp_dir("atomicfail");
  const std::string path = dir + "/f.txt";
  ASSERT_TRUE(write_file_atomic(path, "old").ok());
  Status s = write_file_atomic(path, [&](std::FILE* out) -> Status {
    std::fputs("half of the new con", out);
    return make_error("disk on fire");
  });
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().message(), "disk on fire");
  EXPECT_EQ(*read_file_text(path), "old");
  EXPECT_EQ(std::distance(fs::directory_iterator(dir), fs::directory_iterator{}), 1);
}

TEST(WriteFileAtomic, MissingDirectoryIsAnErrorNamingThePath) {
  Status s = write_file_atomic("/nonexistent-dir-kvplan/x.yaml", "x");
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.error().message().find("/nonexistent-dir-kvplan/x.yaml"), std::string::npos);
}

TEST(Sha256, KnownDigests) {
  // FIPS 180-2 test vectors.
  EXPECT_EQ(sha256_hex({}), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  const std::string abc = "abc";
  EXPECT_EQ(sha256_hex(std::as_bytes(std::span(abc))),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  const std::string path = test::make_temp_dir("sha") + "/abc";
  test::write_bytes(path, abc);
  EXPECT_EQ(*sha256_file(path), sha256_hex(std::as_bytes(std::span(abc))));
}

TEST(Sha256, TheDefaultModelMatchesItsPublishedChecksum) {
  EXPECT_EQ(*sha256_file(test::default_model().files.model_path),
            "b0a507e7ad0f626624f17112325e66691f9076d622e1d3274d103d00299f2696");
}

}  // namespace
}  // namespace kvp
