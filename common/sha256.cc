#include "common/sha256.h"

#include <cstdlib>
#include <filesystem>

#include <openssl/evp.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <vector>

#include "common/file_util.h"

namespace kvp {
struct Sha256::Impl {
  EVP_MD_CTX* ctx;
};

Sha256::Sha256() : impl_(new Impl{EVP_MD_CTX_new()}) {
  KVP_CHECK(impl_->ctx != nullptr && EVP_DigestInit_ex(impl_->ctx, EVP_sha256(), nullptr) == 1);
}

Sha256::~Sha256() {
  EVP_MD_CTX_free(impl_->ctx);
  delete impl_;
}

void Sha256::update(const void* data, size_t size) {
  KVP_CHECK(EVP_DigestUpdate(impl_->ctx, data, size) == 1);
}

std::string Sha256::hex() {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  KVP_CHECK(EVP_DigestFinal_ex(impl_->ctx, digest, &length) == 1);
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (unsigned int i = 0; i < length; ++i) {
    out += kHex[digest[i] >> 4];
    out += kHex[digest[i] & 15];
  }
  return out;
}

std::string sha256_hex(std::span<const std::byte> data) {
  Sha256 h;
  h.update(data.data(), data.size());
  return h.hex();
}

Result<std::string> sha256_file(const std::string& path) {
  KVP_RETURN_IF_ERROR(regular_file_size(path));
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> f(std::fopen(path.c_str(), "rb"), &std::fclose);
  if (!f) return make_error("{}: cannot open: {}", path, std::strerror(errno));
  Sha256 h;
  std::vector<char> buffer(1 << 20);
  size_t n;
  while ((n = std::fread(buffer.data(), 1, buffer.size(), f.get())) > 0) h.update(buffer.data(), n);
  if (std::ferror(f.get())) return make_error("{}: read failed", path);
  return h.hex();
}

std::string cache_dir() {
  namespace fs = std::filesystem;
  if (const char* d = std::getenv("KVPLAN_CACHE_DIR"); d && *d) return d;
  if (const char* d = std::getenv("XDG_CACHE_HOME"); d && *d) return (fs::path(d) / "kvplan").string();
  if (const char* d = std::getenv("HOME"); d && *d) return (fs::path(d) / ".cache" / "kvplan").string();
  return {};
}

std::string fingerprint_cache_path() {
  const std::string dir = cache_dir();
  return dir.empty() ? dir : (std::filesystem::path(dir) / "fingerprints.tsv").string();
}

Result<std::string> sha256_file_cached(const std::string& path, int64_t min_bytes) {
  namespace fs = std::filesystem;
  KVP_ASSIGN_OR_RETURN(int64_t size, regular_file_size(path));
  const std::string cache = fingerprint_cache_path();
  if (size < min_bytes || cache.empty()) return sha256_file(path);
  std::error_code ec;
  const std::string abs = fs::absolute(path, ec).lexically_normal().string();
  const auto mtime = fs::last_write_time(path, ec);
  if (ec) return sha256_file(path);
  const std::string key =
      fmt::format("{}\t{}\t{}", size, static_cast<long long>(mtime.time_since_epoch().count()), abs);
  std::vector<std::string> lines;
  if (std::FILE* f = std::fopen(cache.c_str(), "rb")) {
    char buf[8192];
    while (std::fgets(buf, sizeof(buf), f)) {
      std::string line(buf);
      if (!line.empty() && line.back() == '\n') line.pop_back();
      // "sha256<TAB>size<TAB>mtime<TAB>path"
      if (line.size() > 65 && line[64] == '\t') {
        if (line.compare(65, std::string::npos, key) == 0) {
          std::fclose(f);
          return line.substr(0, 64);
        }
        if (!line.ends_with("\t" + abs)) lines.push_back(line);  // drop stale entries of this path
      }
    }
    std::fclose(f);
  }
  KVP_ASSIGN_OR_RETURN(std::string digest, sha256_file(path));
  lines.push_back(digest + "\t" + key);
  fs::create_directories(fs::path(cache).parent_path(), ec);
  std::string text;
  for (const std::string& l : lines) text += l + "\n";
  (void)write_file_atomic(cache, text);  // best effort: a read-only cache only costs time
  return digest;
}

}  // namespace kvp
