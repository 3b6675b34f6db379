// Loops shared by the CPU kernels: walking several equally-shaped strided operands together
// (elementwise ops, casts, strided copies) and splitting row-wise work over the thread pool.
#pragma once
#include <array>

#include "core/error.h"
#include "core/parallel.h"
#include "core/tensor.h"

namespace ls::cpu {

// Strides of `t` viewed with broadcasting as `shape` (0 where t is broadcast).
inline Shape broadcast_strides(const Tensor& t, const Shape& shape) {
  Shape st(shape.size(), 0);
  size_t lead = shape.size() - t.shape().size();
  for (size_t i = 0; i < t.shape().size(); ++i)
    st[lead + i] = t.shape()[i] == 1 ? 0 : t.strides()[i];
  return st;
}

// Calls body(offsets, inner_strides, n) for runs of n elements along the last dimension, where
// offsets[k] is operand k's element offset at the run's start. Outer rows run in parallel.
template <size_t N, typename Body>
void for_each_run(const Shape& shape, const std::array<Shape, N>& strides, Body&& body) {
  const int64_t nd = int64_t(shape.size());
  if (shape_numel(shape) == 0) return;
  if (nd == 0) {
    std::array<int64_t, N> off{}, inner{};
    body(off, inner, int64_t(1));
    return;
  }
  const int64_t inner_n = shape[nd - 1];
  std::array<int64_t, N> inner;
  for (size_t k = 0; k < N; ++k) inner[k] = strides[k][nd - 1];
  const int64_t rows = shape_numel(shape) / inner_n;
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(inner_n, 1));
  parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      std::array<int64_t, N> off{};
      int64_t rem = r;
      for (int64_t d = nd - 2; d >= 0; --d) {
        int64_t i = rem % shape[d];
        rem /= shape[d];
        for (size_t k = 0; k < N; ++k) off[k] += i * strides[k][d];
      }
      body(off, inner, inner_n);
    }
  });
}

// Calls fn(row_begin, row_end) over `rows` rows of `row_len` elements each, in parallel.
template <typename Fn>
void parallel_rows(int64_t rows, int64_t row_len, Fn&& fn) {
  int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(row_len, 1));
  parallel_for(0, rows, grain, fn);
}

}  // namespace ls::cpu
