#include "common/sha256.h"

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

}  // namespace kvp
