#include "common/file_util.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

namespace kvp {
namespace {

struct FileCloser {
  void operator()(std::FILE* f) const {
    if (f) std::fclose(f);
  }
};
using FilePtr = std::unique_ptr<std::FILE, FileCloser>;

}  // namespace

Result<int64_t> regular_file_size(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    return make_error("{}: cannot open: {}", path, std::strerror(errno));
  }
  if (S_ISDIR(st.st_mode)) return make_error("{}: is a directory, expected a file", path);
  if (!S_ISREG(st.st_mode)) return make_error("{}: not a regular file", path);
  return static_cast<int64_t>(st.st_size);
}

Result<std::vector<std::byte>> read_file_bytes(const std::string& path) {
  KVP_ASSIGN_OR_RETURN(int64_t size, regular_file_size(path));
  FilePtr f(std::fopen(path.c_str(), "rb"));
  if (!f) return make_error("{}: cannot open: {}", path, std::strerror(errno));
  std::vector<std::byte> bytes(static_cast<size_t>(size));
  if (size > 0 && std::fread(bytes.data(), 1, bytes.size(), f.get()) != bytes.size()) {
    return make_error("{}: short read: expected {} bytes", path, size);
  }
  return bytes;
}

Result<std::string> read_file_text(const std::string& path) {
  KVP_ASSIGN_OR_RETURN(auto bytes, read_file_bytes(path));
  return std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size());
}

Status write_all(std::FILE* out, const void* data, size_t size, const std::string& path) {
  if (size > 0 && std::fwrite(data, 1, size, out) != size) {
    return make_error("{}: write failed: {}", path, std::strerror(errno));
  }
  return ok_status();
}

Status write_file_atomic(const std::string& path,
                         const std::function<Status(std::FILE* out)>& write) {
  namespace fs = std::filesystem;
  const fs::path target(path);
  const fs::path dir = target.has_parent_path() ? target.parent_path() : fs::path(".");
  std::string tmpl = (dir / ("." + target.filename().string() + ".tmp-XXXXXX")).string();
  int fd = ::mkstemp(tmpl.data());
  if (fd < 0) {
    return make_error("{}: cannot create a temporary file in {}: {}", path, dir.string(),
                      std::strerror(errno));
  }
  ::fchmod(fd, 0644);
  FilePtr f(::fdopen(fd, "wb"));
  auto fail = [&](Error e) -> Status {
    f.reset();
    ::unlink(tmpl.c_str());
    return e;
  };
  if (!f) return fail(make_error("{}: fdopen failed: {}", path, std::strerror(errno)));
  if (Status s = write(f.get()); !s.ok()) return fail(s.error());
  if (std::fflush(f.get()) != 0 || ::fsync(::fileno(f.get())) != 0) {
    return fail(make_error("{}: flush failed: {}", path, std::strerror(errno)));
  }
  if (std::fclose(f.release()) != 0) {
    ::unlink(tmpl.c_str());
    return make_error("{}: close failed: {}", path, std::strerror(errno));
  }
  if (::rename(tmpl.c_str(), path.c_str()) != 0) {
    ::unlink(tmpl.c_str());
    return make_error("{}: rename failed: {}", path, std::strerror(errno));
  }
  return ok_status();
}

Status write_file_atomic(const std::string& path, std::string_view contents) {
  return write_file_atomic(path, [&](std::FILE* out) {
    return write_all(out, contents.data(), contents.size(), path);
  });
}

}  // namespace kvp
