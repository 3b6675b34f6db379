// sort / argsort: a stable sort along one dimension, returning the values and their positions.
//
//   x (A..., N, B...) -> values, indices (A..., N, B...), indices int64
//   values[a, j, b] = x[a, indices[a, j, b], b], ascending (descending when descending=true);
//   equal values keep their original order (stable) in both directions. NaN counts as larger
//   than every number (torch's order): NaNs go last ascending, first descending.
//   bfloat16/float16 are ordered through float32 (exact).
//   d x = g scattered back through the permutation: scatter_add(zeros_like(x), dim, indices, g).
//
// Kernel: x is made dense with `dim` last; each row sorts (value, position) pairs under the
// order (value, then position), a strict total order, which gives exactly the stable result
// while letting std::sort (introsort, no extra buffer) do the work. Rows run in parallel.
#include <algorithm>
#include <cmath>

#include "cpu_loops.h"
#include "ops.h"
#include "ordering.h"

namespace ls::ops {

namespace {

Tensors sort_forward_cpu(const Tensors& in, const Attrs& a) {
  LS_CHECK(in.size() == 1 && in[0].defined(), TypeError, "sort: expected one input tensor, got ",
           in.size());
  const Tensor& x = in[0];
  if (x.dtype() == DType::BFloat16 || x.dtype() == DType::Float16) {
    // 16-bit floats are ordered through float32, which holds their values exactly.
    Tensors r = sort_forward_cpu({to_dtype(x, DType::Float32)}, a);
    return {to_dtype(r[0], x.dtype()), r[1]};
  }
  bool descending = a.b("descending", false);
  int64_t dim = wrap_dim(a.i("dim", -1), x.dim(), "sort");
  const int64_t last = std::max<int64_t>(x.dim(), 1) - 1;
  Tensor xt = contiguous(x.dim() ? transpose(x, dim, last) : reshape(x, {1}));
  const int64_t n = xt.shape().back();
  Tensor values = Tensor::empty(xt.shape(), x.dtype(), x.device());
  Tensor indices = Tensor::empty(xt.shape(), DType::Int64, x.device());
  if (values.numel() > 0) {
    DISPATCH_NUMERIC(x.dtype(), "sort", {
      const scalar_t* px = xt.data<scalar_t>();
      scalar_t* pv = values.data<scalar_t>();
      int64_t* pi = indices.data<int64_t>();
      cpu::parallel_rows(xt.numel() / n, n, [&](int64_t r0, int64_t r1) {
        std::vector<std::pair<scalar_t, int64_t>> row(n);
        for (int64_t r = r0; r < r1; ++r) {
          const scalar_t* src = px + r * n;  // src points at x[a, :, b] (made contiguous)
          for (int64_t j = 0; j < n; ++j) row[j] = {src[j], j};
          std::sort(row.begin(), row.end(), [&](const auto& p, const auto& q) {
            if (before(p.first, q.first, descending)) return true;
            if (before(q.first, p.first, descending)) return false;
            return p.second < q.second;
          });
          for (int64_t j = 0; j < n; ++j) {
            pv[r * n + j] = row[j].first;
            pi[r * n + j] = row[j].second;
          }
        }
      });
    });
  }
  if (x.dim() == 0) return {reshape(values, {}), reshape(indices, {})};
  return {contiguous(transpose(values, dim, last)), contiguous(transpose(indices, dim, last))};
}

Tensors sort_backward(const BackwardCtx& c, const Tensors& g) {
  const Shape& shape = c.input_shapes[0];
  if (shape.empty()) return {g[0]};
  Tensor z = full(shape, 0.0, g[0].dtype(), g[0].device());
  return {scatter_add(z, c.attrs.i("dim", -1), c.outputs[1], g[0])};
}

}  // namespace

Tensors sort(const Tensor& x, int64_t dim, bool descending) {
  return call("sort", {x}, {{"dim", dim}, {"descending", descending}});
}

Tensor argsort(const Tensor& x, int64_t dim, bool descending) { return sort(x, dim, descending)[1]; }

LS_REGISTER(sort) {
  declare_op("sort", {sort_backward, false, true});
  register_kernel("sort", "cpu", sort_forward_cpu,
                  {DType::Float32, DType::Float64, DType::BFloat16, DType::Float16, DType::Int32,
                   DType::Int64, DType::UInt8, DType::Bool});
}

}  // namespace ls::ops
