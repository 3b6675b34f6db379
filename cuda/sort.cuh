// Row sorting shared by sort and topk (cuda/sort.cu).
#pragma once
#include "core/tensor.h"

namespace ls::cuda {

// The least power of two >= v (1 for v <= 1).
inline int64_t pow2_ceil(int64_t v) {
  int64_t p = 1;
  while (p < v) p <<= 1;
  return p;
}

// x: dense (rows, n); values (x's dtype) and indices (int64): dense (rows, k_out), k_out <= n.
// Writes the first k_out entries of each row in the order of cuda/order_keys.cuh (ascending, or
// descending; ties by position). rows * n > 0.
void sort_rows(const Tensor& x, int64_t rows, int64_t n, int64_t k_out, bool descending,
               const Tensor& values, const Tensor& indices, const char* op);

}  // namespace ls::cuda
