// Matrix-vector products of typed weights against f32 activations on the CPU.
//
// y[r, o] = Σ_i W[o, i] · x[r, i] for each output row o in [row_begin, row_end) and each activation
// row r. Every stored type is widened exactly to f32 in registers (a q8_0 weight d·q has at most 19
// significant bits), then multiplied and added with fused multiply-adds into 4 × 16 lanes in a
// fixed order, so a row's result does not depend on how many rows are computed together, which
// rows a thread takes, or buffer addresses. Vectorised with AVX-512 where the build has it, else
// with AVX2 (16 lanes as two registers); the portable path performs the same products and lane
// sums one lane at a time. All three give the same bits.
#pragma once

#include <cstddef>
#include <span>

#include "executor/model/weight_tensor.h"

namespace kvp {

struct MatmulArgs {
  const WeightTensor* w;     // [rows, cols]
  const float* x;            // [n_rows, x_stride], first cols used
  size_t x_stride;
  float* y;                  // [n_rows, y_stride], columns [row_begin, row_end) written
  size_t y_stride;
  int n_rows;
  bool accumulate = false;   // y += W x instead of y = W x
};

// Computes output rows [row_begin, row_end) of W x for every activation row.
void matmul_range(const MatmulArgs& args, int64_t row_begin, int64_t row_end);

// The plain reference: dequantize_row, then a sum in double. For tests.
void matmul_reference(const MatmulArgs& args);

// Whether the vectorised (AVX-512 or AVX2) kernels are compiled in.
bool dot_kernels_vectorised();

}  // namespace kvp
