#include "traces/safetensors_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>

#include "common/file_util.h"
#include "common/sha256.h"

namespace kvp {
namespace {

// Headers beyond this are refused before any allocation (the reference implementation uses 100 MB).
constexpr uint64_t kMaxHeaderBytes = 100u << 20;

std::string shape_string(const std::vector<int64_t>& shape) {
  return fmt::format("[{}]", fmt::join(shape, ", "));
}

}  // namespace

int64_t TensorInfo::element_count() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

SafetensorsFile::SafetensorsFile(SafetensorsFile&& o) noexcept { *this = std::move(o); }

SafetensorsFile& SafetensorsFile::operator=(SafetensorsFile&& o) noexcept {
  if (this != &o) {
    if (map_) ::munmap(const_cast<std::byte*>(map_), map_size_);
    path_ = std::move(o.path_);
    map_ = std::exchange(o.map_, nullptr);
    map_size_ = std::exchange(o.map_size_, 0);
    data_ = std::exchange(o.data_, nullptr);
    tensors_ = std::move(o.tensors_);
    by_name_ = std::move(o.by_name_);
    metadata_ = std::move(o.metadata_);
  }
  return *this;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_) ::munmap(const_cast<std::byte*>(map_), map_size_);
}

Result<SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  KVP_ASSIGN_OR_RETURN(int64_t file_size, regular_file_size(path));
  if (file_size < 8) {
    return make_error("{}: header length: expected 8 bytes, the file has {}", path, file_size);
  }
  SafetensorsFile f;
  f.path_ = path;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return make_error("{}: cannot open: {}", path, std::strerror(errno));
  void* map = ::mmap(nullptr, static_cast<size_t>(file_size), PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (map == MAP_FAILED) return make_error("{}: mmap failed: {}", path, std::strerror(errno));
  f.map_ = static_cast<const std::byte*>(map);
  f.map_size_ = static_cast<size_t>(file_size);

  uint64_t header_len = 0;
  std::memcpy(&header_len, f.map_, 8);
  if (header_len > kMaxHeaderBytes || header_len > static_cast<uint64_t>(file_size) - 8) {
    return make_error("{}: header length {} runs past the end of the {}-byte file", path,
                      header_len, file_size);
  }
  const char* header_text = reinterpret_cast<const char*>(f.map_ + 8);
  const nlohmann::json header =
      nlohmann::json::parse(header_text, header_text + header_len, nullptr, false);
  if (header.is_discarded() || !header.is_object()) {
    return make_error("{}: header: not a JSON object", path);
  }
  f.data_ = f.map_ + 8 + header_len;
  const int64_t data_size = file_size - 8 - static_cast<int64_t>(header_len);

  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object()) return make_error("{}: __metadata__: expected an object", path);
      for (const auto& [k, v] : entry.items()) {
        if (!v.is_string()) return make_error("{}: __metadata__.{}: expected a string", path, k);
        f.metadata_[k] = v.get<std::string>();
      }
      continue;
    }
    const std::string where = fmt::format("{}: tensor {}", path, name);
    if (!entry.is_object() || !entry.contains("dtype") || !entry.contains("shape") ||
        !entry.contains("data_offsets")) {
      return make_error("{}: expected an object with dtype, shape and data_offsets", where);
    }
    TensorInfo t;
    t.name = name;
    if (!entry["dtype"].is_string()) return make_error("{}: dtype: expected a string", where);
    auto dtype = parse_dtype(entry["dtype"].get<std::string>());
    if (!dtype.ok()) return dtype.error().with_context(where);
    t.dtype = *dtype;
    if (!entry["shape"].is_array()) return make_error("{}: shape: expected an array", where);
    int64_t elements = 1;
    for (const auto& d : entry["shape"]) {
      if (!d.is_number_integer() || d.get<int64_t>() < 0 || d.get<int64_t>() > (int64_t{1} << 40)) {
        return make_error("{}: shape: expected non-negative integers, found {}", where,
                          entry["shape"].dump());
      }
      t.shape.push_back(d.get<int64_t>());
      elements = t.shape.back() == 0 ? 0 : std::min<int64_t>(elements * t.shape.back(), int64_t{1} << 50);
    }
    const auto& offsets = entry["data_offsets"];
    if (!offsets.is_array() || offsets.size() != 2 || !offsets[0].is_number_unsigned() ||
        !offsets[1].is_number_unsigned()) {
      return make_error("{}: data_offsets: expected [begin, end], found {}", where, offsets.dump());
    }
    t.begin = offsets[0].get<int64_t>();
    t.end = offsets[1].get<int64_t>();
    if (t.begin > t.end || t.end > data_size) {
      return make_error("{}: data_offsets [{}, {}] out of range of the {}-byte data buffer", where,
                        t.begin, t.end, data_size);
    }
    if (t.end - t.begin != elements * dtype_bytes(t.dtype)) {
      return make_error("{}: data_offsets hold {} bytes, but dtype {} and shape {} need {}", where,
                        t.end - t.begin, dtype_name(t.dtype), shape_string(t.shape),
                        elements * dtype_bytes(t.dtype));
    }
    f.tensors_.push_back(std::move(t));
  }
  std::sort(f.tensors_.begin(), f.tensors_.end(),
            [](const TensorInfo& a, const TensorInfo& b) { return a.begin < b.begin || (a.begin == b.begin && a.end < b.end); });
  int64_t covered = 0;
  for (const TensorInfo& t : f.tensors_) {
    if (t.begin < covered) {
      return make_error("{}: tensor {}: data_offsets [{}, {}] overlap the previous tensor (ending at {})",
                        path, t.name, t.begin, t.end, covered);
    }
    if (t.begin > covered) {
      return make_error("{}: tensor {}: bytes {}..{} of the data buffer belong to no tensor", path,
                        t.name, covered, t.begin);
    }
    covered = t.end;
  }
  if (covered != data_size) {
    return make_error("{}: the data buffer has {} bytes, its tensors cover {}", path, data_size, covered);
  }
  for (size_t i = 0; i < f.tensors_.size(); ++i) f.by_name_[f.tensors_[i].name] = i;
  return f;
}

const TensorInfo* SafetensorsFile::find(const std::string& name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &tensors_[it->second];
}

std::span<const std::byte> SafetensorsFile::bytes(const TensorInfo& t) const {
  return {data_ + t.begin, static_cast<size_t>(t.end - t.begin)};
}

Result<const TensorInfo*> SafetensorsFile::expect(const std::string& name, TensorDtype dtype,
                                                  const std::vector<int64_t>& shape) const {
  const TensorInfo* t = find(name);
  if (!t) return make_error("{}: tensor {}: missing", path_, name);
  if (t->dtype != dtype) {
    return make_error("{}: tensor {}: dtype: expected {}, found {}", path_, name, dtype_name(dtype),
                      dtype_name(t->dtype));
  }
  if (t->shape != shape) {
    return make_error("{}: tensor {}: shape: expected {}, found {}", path_, name,
                      shape_string(shape), shape_string(t->shape));
  }
  return t;
}

void SafetensorsFile::read_floats(const TensorInfo& t, std::span<float> out) const {
  KVP_CHECK(static_cast<int64_t>(out.size()) == t.element_count());
  const std::span<const std::byte> b = bytes(t);
  if (t.dtype == TensorDtype::kF32) {
    std::memcpy(out.data(), b.data(), b.size());
    return;
  }
  KVP_CHECK(t.dtype == TensorDtype::kF16 || t.dtype == TensorDtype::kBF16, "tensor {} is {}", t.name,
            dtype_name(t.dtype));
  // In blocks, so the conversion needs no copy of the whole tensor.
  constexpr size_t kBlock = 4096;
  uint16_t halves[kBlock];
  for (size_t at = 0; at < out.size(); at += kBlock) {
    const size_t n = std::min(kBlock, out.size() - at);
    std::memcpy(halves, b.data() + at * 2, n * 2);
    if (t.dtype == TensorDtype::kF16) {
      f16_to_f32(std::span(halves, n), out.subspan(at, n));
    } else {
      bf16_to_f32(std::span(halves, n), out.subspan(at, n));
    }
  }
}

void SafetensorsFile::release(std::span<const std::byte> range) const {
  if (range.empty()) return;
  static const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t begin = reinterpret_cast<uintptr_t>(range.data()) & ~(page - 1);
  const uintptr_t end = reinterpret_cast<uintptr_t>(range.data() + range.size());
  // A private read-only file mapping: dropped pages read back from the file when touched again.
  ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
}

std::string SafetensorsFile::sha256_releasing() const {
  constexpr size_t kChunk = size_t{32} << 20;
  Sha256 hash;
  for (size_t at = 0; at < map_size_; at += kChunk) {
    const size_t n = std::min(kChunk, map_size_ - at);
    hash.update(map_ + at, n);
    release({map_ + at, n});
  }
  return hash.hex();
}

}  // namespace kvp
