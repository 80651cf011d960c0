#include "common/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "common/file_util.h"

namespace kvp {

Result<std::shared_ptr<const MappedFile>> MappedFile::open(const std::string& path) {
  KVP_ASSIGN_OR_RETURN(int64_t size, regular_file_size(path));
  std::shared_ptr<MappedFile> f(new MappedFile());
  f->path_ = path;
  f->size_ = static_cast<size_t>(size);
  if (size == 0) return std::shared_ptr<const MappedFile>(std::move(f));
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return make_error("{}: cannot open: {}", path, std::strerror(errno));
  // A small file is mapped whole at once (one call instead of a page fault per 16 pages: on a
  // stories260K run they cost more than its decode); a large one is faulted in as it is read.
  constexpr size_t kPopulateBytes = size_t{64} << 20;
  const int flags = MAP_PRIVATE | (f->size_ <= kPopulateBytes ? MAP_POPULATE : 0);
  void* map = ::mmap(nullptr, f->size_, PROT_READ, flags, fd, 0);
  ::close(fd);
  if (map == MAP_FAILED) return make_error("{}: mmap failed: {}", path, std::strerror(errno));
  f->data_ = static_cast<const std::byte*>(map);
  return std::shared_ptr<const MappedFile>(std::move(f));
}

std::shared_ptr<const MappedFile> MappedFile::from_bytes(const std::string& path, std::span<const std::byte> bytes) {
  std::shared_ptr<MappedFile> f(new MappedFile());
  f->path_ = path;
  f->owned_.assign(bytes.begin(), bytes.end());
  f->size_ = f->owned_.size();
  return f;
}

MappedFile::~MappedFile() {
  if (data_) ::munmap(const_cast<std::byte*>(data_), size_);
}

}  // namespace kvp
