// cumsum: running sums along one dimension.
//
//   x (A..., N, B...) -> out of the same shape
//   out[a, i, b] = sum_{j <= i} x[a, j, b]          (reverse=true: sum_{j >= i})
//   Integer and bool inputs give int64, floats keep their dtype (float32 accumulates in float64,
//   as torch does on the CPU, so long rows do not drift; bfloat16/float16 are summed the same
//   way and only the outputs are rounded, never the running sum).
//   d x = reverse cumsum of g: dx[a, j, b] = sum_{i >= j} g[a, i, b], i.e. the same kernel with
//   reverse flipped (no flip op, no extra copies).
//
// Kernel: x is made dense and viewed as (outer, N, inner). With dim last (inner = 1) each row is
// one running sum. Otherwise a work item is one outer index and a block of up to 256 inner
// columns; it walks i = 0..N-1 (or backwards) keeping one accumulator per column, so reads and
// writes stay contiguous whichever dimension is summed. Rows / items run in parallel.
#include <array>

#include "cpu_loops.h"
#include "ops.h"

namespace ls::ops {

namespace {

template <typename T>
using acc_t = std::conditional_t<std::is_floating_point_v<T>, double, int64_t>;

// dim last: one running sum per row of n.
template <typename T, typename O>
void cumsum_rows(const T* px, O* po, int64_t rows, int64_t n, bool reverse) {
  using A = acc_t<T>;
  cpu::parallel_rows(rows, n, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* xr = px + r * n;  // xr points at x[r, :]
      O* orow = po + r * n;
      A acc = 0;
      if (reverse) {
        for (int64_t i = n - 1; i >= 0; --i) orow[i] = O(acc += A(xr[i]));
      } else {
        for (int64_t i = 0; i < n; ++i) orow[i] = O(acc += A(xr[i]));
      }
    }
  });
}

// (outer, n, inner) with inner > 1: items of (o, block of columns), one accumulator per column.
template <typename T, typename O>
void cumsum_columns(const T* px, O* po, int64_t outer, int64_t n, int64_t inner, bool reverse) {
  using A = acc_t<T>;
  constexpr int64_t kBlock = 256;
  const int64_t nblocks = (inner + kBlock - 1) / kBlock;
  const int64_t work = n * std::min(inner, kBlock);
  parallel_for(0, outer * nblocks, std::max<int64_t>(1, 32768 / work), [&](int64_t w0, int64_t w1) {
    std::array<A, kBlock> acc;
    for (int64_t w = w0; w < w1; ++w) {
      int64_t o = w / nblocks, c0 = (w % nblocks) * kBlock;
      int64_t len = std::min(inner - c0, kBlock);
      acc.fill(A(0));
      for (int64_t s = 0; s < n; ++s) {
        int64_t i = reverse ? n - 1 - s : s;
        const T* xr = px + (o * n + i) * inner + c0;  // xr points at x[o, i, c0:]
        O* orow = po + (o * n + i) * inner + c0;
        for (int64_t c = 0; c < len; ++c) {
          acc[c] += A(xr[c]);
          orow[c] = O(acc[c]);
        }
      }
    }
  });
}

Tensors cumsum_forward_cpu(const Tensors& in, const Attrs& a) {
  LS_CHECK(in.size() == 1 && in[0].defined(), TypeError, "cumsum: expected one input tensor, got ",
           in.size());
  const Tensor& x0 = in[0];
  if (x0.dtype() == DType::BFloat16 || x0.dtype() == DType::Float16)  // the float32 path, rounded back
    return {to_dtype(cumsum_forward_cpu({to_dtype(x0, DType::Float32)}, a)[0], x0.dtype())};
  int64_t dim = wrap_dim(a.i("dim"), x0.dim(), "cumsum");
  bool reverse = a.b("reverse", false);
  Tensor x = contiguous(x0.dim() ? x0 : reshape(x0, {1}));
  DType out_dtype = is_floating(x.dtype()) ? x.dtype() : DType::Int64;
  Tensor out = Tensor::empty(x.shape(), out_dtype, x.device());
  if (out.numel() > 0) {
    const Shape& shape = x.shape();
    const int64_t n = shape[dim];
    int64_t outer = 1, inner = 1;
    for (int64_t d = 0; d < dim; ++d) outer *= shape[d];
    for (int64_t d = dim + 1; d < int64_t(shape.size()); ++d) inner *= shape[d];
    DISPATCH_NUMERIC(x.dtype(), "cumsum", {
      using O = std::conditional_t<std::is_floating_point_v<scalar_t>, scalar_t, int64_t>;  // out_dtype
      if (inner == 1) {
        cumsum_rows(x.data<scalar_t>(), out.data<O>(), outer, n, reverse);
      } else {
        cumsum_columns(x.data<scalar_t>(), out.data<O>(), outer, n, inner, reverse);
      }
    });
  }
  if (x0.dim() == 0) out = reshape(out, {});
  return {out};
}

}  // namespace

Tensor cumsum(const Tensor& x, int64_t dim) { return call1("cumsum", {x}, {{"dim", dim}}); }

LS_REGISTER(cumsum) {
  declare_op("cumsum", {[](const BackwardCtx& c, const Tensors& g) {
                          Attrs a{{"dim", c.attrs.i("dim")}, {"reverse", !c.attrs.b("reverse", false)}};
                          return Tensors{call1("cumsum", {g[0]}, a)};
                        }, false});
  register_kernel("cumsum", "cpu", cumsum_forward_cpu,
                  {DType::Float32, DType::Float64, DType::BFloat16, DType::Float16, DType::Int32,
                   DType::Int64, DType::UInt8, DType::Bool});
}

}  // namespace ls::ops
