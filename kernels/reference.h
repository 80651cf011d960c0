// Plain C++ references of the decoder kernels (kernels/decoder_kernels.cuh): straightforward loops
// over the same per-element math, against which the emulated and the GPU kernels are tested.
#pragma once

#include <cstdint>
#include <vector>

namespace kvp::ref {

void embedding(const std::vector<int32_t>& tokens, const std::vector<float>& table, int dim, std::vector<float>& out);
void rmsnorm(const std::vector<float>& x, const std::vector<float>& w, int n, float eps, std::vector<float>& y);
void rope(std::vector<float>& x, const std::vector<int32_t>& positions, const std::vector<float>& cos_table,
          const std::vector<float>& sin_table, int n_heads, int head_dim);
void swiglu(std::vector<float>& gate, const std::vector<float>& up);
std::vector<int32_t> argmax(const std::vector<float>& x, int n);
// kernel_math.h's binary16 decoding, for tests that cannot include the kernel headers.
float half_bits_to_float(uint32_t h);
// y[rows, out] = x · Wᵀ for q8_0 blocks (binary16 scale, 32 int8), summed in double.
void q8_0_gemv(const std::vector<uint8_t>& w, int out, int in, const std::vector<float>& x, int rows,
               std::vector<double>& y);

// executor/sampler.h's rule for one row of logits in double precision, with a sort: the token, and
// how near (as a share of the walk's mass) the closest decision — where the nucleus is cut, where
// the draw lands — came to going the other way. A float implementation may differ only below it.
struct SampleRef {
  int32_t token;
  double margin;
};
SampleRef sample(const float* logits, int n, float temperature, float top_p, float uniform);

// One (row, KV head) of the ragged cache: `capacity` slots, the first n_used valid.
struct HeadSlotsRef {
  std::vector<float> k, v;  // [head_dim, capacity]
  std::vector<float> score, value_l1;
  int capacity = 0;
  int n_used = 0;
};

// Attention of `group` queries ([group, head_dim]) over the head's slots and the new token; adds
// the group-summed weights to score and returns the new token's summed weight.
float decode_attention(const std::vector<float>& q, HeadSlotsRef& head, const std::vector<float>& k_new,
                       const std::vector<float>& v_new, int group, int head_dim, std::vector<float>& out);
void insert(HeadSlotsRef& head, const std::vector<float>& k_new, const std::vector<float>& v_new, int slot,
            int head_dim);

}  // namespace kvp::ref
