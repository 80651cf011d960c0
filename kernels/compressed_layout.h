// The device form of a ThinK/Mustafar head (planner/policy/kv_compression.h has the host's): what
// one head of a compressed layer holds beside its slots' positions, scores and value norms, which
// the GPU backend keeps in its per-slot regions as for a dense cache. Every part starts at a
// multiple of 4 bytes, as in head_layout, so the parts here plus the per-slot regions are the
// memory model's bytes exactly (tests/kernels: CompressedLayout.*).
//
// Byte layout of a head block of budget B, elements of elem_bytes (f32 or binary16):
//   k        dense short keys: [kc, B] (channel-major, as the dense cache's [head_dim, B]);
//            sparse keys: B × ke packed, slot after slot
//   v        dense values: [head_dim, B]; sparse values: B × ve packed
//   k_drop   ThinK: think_recent × (head_dim − kc), ring entry position % think_recent
//   k_resid  sparse keys: dense_recent × (kc − ke), ring entry position % dense_recent
//   v_resid  sparse values: dense_recent × (head_dim − ve)
//   channels ThinK: head_dim int32, the kept channels ascending then the dropped ones ascending
//   k_mask   sparse keys: B × ⌈kc / 8⌉ bytes, bit i (byte i / 8, bit i % 8): kept channel i stored
//   v_mask   sparse values: B × ⌈head_dim / 8⌉ bytes
// A dense layer of a compressed cache is the shape with kc = ke = head_dim and ve = head_dim: its
// block is the dense cache's keys and values, nothing else.
#pragma once

#include <cstdint>

// Host and device code both read this header; launch.h (and so host code built beside the CUDA
// runtime) includes it, so it does not include gpu_compat.h.
#if defined(__CUDACC__)
#define KVP_LAYOUT_HD __host__ __device__
#else
#define KVP_LAYOUT_HD
#endif

namespace kvp {

struct CompressedShape {
  int head_dim = 0;
  int key_channels = 0;    // kc: ThinK's kept channels (head_dim: none dropped)
  int key_elements = 0;    // ke: Mustafar's kept elements of a key's kc (kc: dense)
  int value_elements = 0;  // ve (head_dim: dense)
  int think_recent = 1;    // the newest keys at full width, the new token's included
  int dense_recent = 1;    // the newest keys and values kept dense
  int elem_bytes = 4;

  KVP_LAYOUT_HD bool thin() const { return key_channels < head_dim; }
  KVP_LAYOUT_HD bool sparse_keys() const { return key_elements < key_channels; }
  KVP_LAYOUT_HD bool sparse_values() const { return value_elements < head_dim; }
  KVP_LAYOUT_HD int key_mask_bytes() const { return (key_channels + 7) / 8; }
  KVP_LAYOUT_HD int value_mask_bytes() const { return (head_dim + 7) / 8; }
};

// Byte offsets of a head block's parts (0 for a part it lacks) and its size.
struct CompressedParts {
  int64_t k = 0, v = 0, k_drop = 0, k_resid = 0, v_resid = 0, channels = 0, k_mask = 0, v_mask = 0, bytes = 0;
};

KVP_LAYOUT_HD inline CompressedParts compressed_parts(const CompressedShape& s, int64_t budget) {
  CompressedParts p;
  if (budget <= 0) return p;
  int64_t at = 0;
  auto part = [&at](int64_t bytes) {
    const int64_t offset = at;
    at += (bytes + 3) / 4 * 4;
    return offset;
  };
  const int64_t hd = s.head_dim, kc = s.key_channels, eb = s.elem_bytes;
  p.k = part(budget * (s.sparse_keys() ? s.key_elements : kc) * eb);
  p.v = part(budget * (s.sparse_values() ? s.value_elements : hd) * eb);
  if (s.thin()) p.k_drop = part(int64_t(s.think_recent) * (hd - kc) * eb);
  if (s.sparse_keys()) p.k_resid = part(int64_t(s.dense_recent) * (kc - s.key_elements) * eb);
  if (s.sparse_values()) p.v_resid = part(int64_t(s.dense_recent) * (hd - s.value_elements) * eb);
  if (s.thin()) p.channels = part(4 * hd);
  if (s.sparse_keys()) p.k_mask = part(budget * s.key_mask_bytes());
  if (s.sparse_values()) p.v_mask = part(budget * s.value_mask_bytes());
  p.bytes = at;
  return p;
}

}  // namespace kvp
