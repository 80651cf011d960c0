// The digest cache of large weight files: a hit is keyed by path, size and modification time, so
// an unchanged file is not re-hashed and a changed one is.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "common/file_util.h"
#include "common/sha256.h"
#include "tests/support/test_support.h"

namespace kvp {
namespace {
namespace fs = std::filesystem;

TEST(FingerprintCache, HitsWhileSizeAndTimeStayAndRehashesWhenTheyChange) {
  const fs::path dir = fs::temp_directory_path() / ("kvplan-fpcache-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  const test::ScopedEnv env("KVPLAN_CACHE_DIR", dir.string());
  const std::string file = (dir / "weights.bin").string();
  ASSERT_TRUE(write_file_atomic(file, std::string(4096, 'a')).ok());
  const std::string real = sha256_file(file).value();

  ASSERT_EQ(sha256_file_cached(file, 1).value(), real);
  EXPECT_EQ(fingerprint_cache_path(), (dir / "fingerprints.tsv").string());
  std::string cache = read_file_text(fingerprint_cache_path()).value();
  ASSERT_EQ(cache.substr(0, 64), real);

  // Plant a different digest for the same key: a hit returns it, proving the file was not re-read.
  const std::string planted(64, 'f');
  ASSERT_TRUE(write_file_atomic(fingerprint_cache_path(), planted + cache.substr(64)).ok());
  EXPECT_EQ(sha256_file_cached(file, 1).value(), planted);
  // Files under the size threshold are always hashed.
  EXPECT_EQ(sha256_file_cached(file, 1 << 20).value(), real);

  // A new modification time is a miss: hashed again, and the stale entry replaced.
  fs::last_write_time(file, fs::last_write_time(file) + std::chrono::seconds(5));
  EXPECT_EQ(sha256_file_cached(file, 1).value(), real);
  cache = read_file_text(fingerprint_cache_path()).value();
  EXPECT_EQ(cache.find(planted), std::string::npos);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace kvp
