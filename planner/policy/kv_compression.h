// ThinK (key channels dropped, query-driven) and Mustafar (per-vector magnitude sparsity) on the
// tokens a policy keeps (docs/METHODS.md): how much of each cached key and value a layer stores, the
// byte layout of one head that does so, and the operations on it — store, attention, the choice
// of channels and elements. One implementation for the executor's CPU cache and the planner's
// replay, as layer_step is.
//
// A compressed head of B slots stores every slot's key in its short form (ThinK's kept channels,
// and of those Mustafar's kept elements) and every value in its sparse form, and beside them rings
// of what the newest tokens lose: ThinK's dropped channels of the newest `think_recent` keys and
// Mustafar's dropped elements of the newest `dense_recent` keys and values, at ring entry
// position % window. So the newest tokens attend at full width and the others compressed, with no
// data moved as a token ages, and the bytes are fixed: B short slots plus the rings.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "common/status.h"
#include "kernels/compressed_layout.h"

namespace kvp {

// One layer's compression. key_channels == 0: a dense layer (none of the below).
struct SlotCompression {
  int key_channels = 0;    // ThinK: channels kept of keys older than think_recent (head_dim: none dropped)
  int key_elements = 0;    // Mustafar: elements kept of each key's key_channels (== key_channels: dense)
  int value_elements = 0;  // Mustafar: elements kept of each value (== head_dim: dense)
  int think_recent = 32;   // ThinK: the newest keys, the new token's included, at full width
  int think_queries = 32;  // ThinK: the last prompt queries whose q² scores the channels
  int dense_recent = 32;   // Mustafar: the newest keys and values, the new token's included, kept dense

  bool compressed() const { return key_channels > 0; }
  bool thin(int head_dim) const { return compressed() && key_channels < head_dim; }
  bool sparse_keys() const { return compressed() && key_elements < key_channels; }
  bool sparse_values(int head_dim) const { return compressed() && value_elements < head_dim; }
  bool operator==(const SlotCompression&) const = default;
};

// The counts of a layer from its ratios: ThinK drops ⌊ratio · head_dim⌋ channels, Mustafar drops
// ⌊sparsity · n⌋ of a vector's n elements (keys: of the kept channels). Errors name `field` when a
// ratio is outside [0, 1) or leaves no element (think_field, keys_field, values_field: the
// flags or plan fields of the three ratios). All three 0: a dense layer.
Result<SlotCompression> slot_compression(int head_dim, double think_ratio, double key_sparsity, double value_sparsity,
                                         const std::string& think_field, const std::string& keys_field,
                                         const std::string& values_field);

// One head's storage: what it holds and where (byte offsets in its block).
struct HeadShape {
  int32_t budget = 0;
  int head_dim = 0;
  int elem_bytes = 4;       // of keys and values (the host stores f32)
  int aux_floats = 0;       // the policy's per-slot floats
  SlotCompression compression;  // dense when !compressed()
  bool query_sums = false;  // a prefill scratch for ThinK: [head_dim] Σ q² of the last prompt queries
};

// Byte layout of a head, in this order (each part starts at a multiple of 4 bytes):
//   k        dense: B × kc elements (blocked, slot_attention.h); sparse keys: B × ke packed
//   v        dense: B × head_dim (blocked); sparse values: B × ve packed
//   k_drop   ThinK: think_recent × (head_dim − kc) elements
//   k_resid  sparse keys: dense_recent × (kc − ke)
//   v_resid  sparse values: dense_recent × (head_dim − ve)
//   pos      B int32;  score  B f32;  aux  B × aux_floats f32
//   channels ThinK: head_dim int32, the kept channels ascending then the dropped ones ascending
//   query_sums  head_dim f32 (HeadShape::query_sums)
//   k_mask   sparse keys: B × ⌈kc / 8⌉ bytes, bit i of a slot's mask: kept channel i is stored
//   v_mask   sparse values: B × ⌈head_dim / 8⌉ bytes
// then padding to a multiple of 4 bytes. A head of budget 0 takes 0 bytes. A dense head takes
// B × (2 · head_dim · elem_bytes + 8 + 4 · aux_floats) bytes, the layout of every dense cache.
struct HeadLayout {
  size_t k = 0, v = 0, k_drop = 0, k_resid = 0, v_resid = 0, pos = 0, score = 0, aux = 0, channels = 0,
         query_sums = 0, k_mask = 0, v_mask = 0, bytes = 0;
};
HeadLayout head_layout(const HeadShape& shape);

// A layer's compression as the device kernels take it (kernels/compressed_layout.h): a dense layer
// is the shape that keeps every channel and element.
CompressedShape compressed_shape(const SlotCompression& c, int head_dim, int elem_bytes);

}  // namespace kvp
