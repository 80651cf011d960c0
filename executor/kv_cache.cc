#include "executor/kv_cache.h"

#include <sys/mman.h>

#include <algorithm>
#include <cstdlib>

namespace kvp {
namespace {

constexpr size_t kHugePageBytes = size_t{2} << 20;

}  // namespace

KvCache::KvCache(KvBudgets budgets) : KvCache(std::move(budgets), Arena{}) {}

KvCache::KvCache(KvBudgets budgets, Arena arena) : budgets_(std::move(budgets)), arena_(std::move(arena)) {
  KVP_CHECK(budgets_.dtype == KvDtype::kF32, "the host KV cache stores f32");
  KVP_CHECK(budgets_.aux_floats_per_slot <= 1);
  const size_t n_heads = static_cast<size_t>(budgets_.n_layers) * budgets_.n_kv_heads;
  KVP_CHECK(budgets_.budget_tokens.size() == n_heads);
  // 64-byte aligned, so a cache has the same alignment (and Eigen the same operation order)
  // wherever the allocator places it.
  // A cache of megabytes is asked for in transparent huge pages: 512 times fewer page faults to
  // allocate it and fewer TLB misses to stream it at every step.
  const size_t want = static_cast<size_t>(budgets_.kv_bytes());
  if (!arena_.data || arena_.bytes < want) {
    arena_ = Arena{};
    const size_t align = want >= kHugePageBytes * 2 ? kHugePageBytes : 64;
    const size_t bytes = std::max<size_t>(align, (want + align - 1) / align * align);
    arena_.data.reset(static_cast<std::byte*>(std::aligned_alloc(align, bytes)));
    KVP_CHECK(arena_.data != nullptr, "cannot allocate {} bytes of KV cache", bytes);
    arena_.bytes = bytes;
    if (align == kHugePageBytes) madvise(arena_.data.get(), bytes, MADV_HUGEPAGE);  // advice: ignored where unsupported
  }
  head_offset_.resize(n_heads);
  n_used_.assign(n_heads, 0);
  size_t at = 0;
  for (size_t i = 0; i < n_heads; ++i) {
    KVP_CHECK(budgets_.budget_tokens[i] >= 0);
    head_offset_[i] = at;
    at += static_cast<size_t>(budgets_.head_bytes(static_cast<int>(i) / budgets_.n_kv_heads,
                                                  static_cast<int>(i) % budgets_.n_kv_heads));
  }
  KVP_CHECK(at == static_cast<size_t>(budgets_.kv_bytes()));
  for (int l = 0; l < budgets_.n_layers; ++l) {
    for (int h = 0; h < budgets_.n_kv_heads; ++h) reset_compression_state(this->head(l, h));
  }
}

void KvCache::Arena::Free::operator()(std::byte* p) const { std::free(p); }

HeadCache KvCache::head(int layer_idx, int kv_head_idx) {
  const size_t i = static_cast<size_t>(layer_idx) * budgets_.n_kv_heads + kv_head_idx;
  return carve_head(arena_.data.get() + head_offset_[i], budgets_.head_shape(layer_idx, kv_head_idx), &n_used_[i]);
}

}  // namespace kvp
