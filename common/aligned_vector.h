// std::vector storage aligned to 64 bytes on every machine (Eigen's aligned_allocator aligns to
// the widest packet the build targets: 32 bytes without AVX-512), for buffers whose 16-float
// packets must start on a 64-byte boundary.
#pragma once

#include <cstddef>
#include <new>
#include <vector>

namespace kvp {

template <typename T>
struct Aligned64Allocator {
  using value_type = T;
  Aligned64Allocator() = default;
  template <typename U>
  Aligned64Allocator(const Aligned64Allocator<U>&) {}  // NOLINT: rebinding is implicit by design
  T* allocate(size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t{64})); }
  void deallocate(T* p, size_t) { ::operator delete(p, std::align_val_t{64}); }
  template <typename U>
  bool operator==(const Aligned64Allocator<U>&) const { return true; }
};

template <typename T>
using Aligned64Vector = std::vector<T, Aligned64Allocator<T>>;

}  // namespace kvp
