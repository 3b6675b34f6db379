// topk: the k largest (or smallest) entries along one dimension, sorted, with their positions.
//
//   x (A..., N, B...), 0 <= k <= N  ->  values, indices (A..., k, B...), indices int64
//   values[a, j, b] = x[a, indices[a, j, b], b], in order: largest first (smallest first when
//   largest=false). Ties go to the lower index first, so the result is fully determined.
//   NaN counts as larger than every number (torch's order): it comes first when largest, last
//   otherwise. bfloat16/float16 are ordered through float32 (exact).
//   d x = zeros_like(x) with g scattered to the selected positions: scatter_add(0, dim, indices, g)
//   (the indices along a line are distinct, so nothing actually adds).
//
// Kernel: x is made dense with `dim` last; each row of N values is one independent problem,
// solved by a partial sort of the positions 0..N-1 under a strict total order (value, then
// position), O(N log k). Rows run in parallel; the result is transposed back.
#include <algorithm>
#include <cmath>
#include <numeric>

#include "cpu_loops.h"
#include "op_args.h"
#include "ops.h"
#include "ordering.h"

namespace ls::ops {

int64_t check_topk_args(const Tensors& in, const Attrs& a) {
  LS_CHECK(in.size() == 1 && in[0].defined(), TypeError, "topk: expected one input tensor, got ",
           in.size());
  const Tensor& x = in[0];
  const int64_t k = a.i("k");
  const int64_t dim = wrap_dim(a.i("dim", -1), x.dim(), "topk");
  const int64_t n = x.dim() ? x.shape()[dim] : 1;
  LS_CHECK(k >= 0 && k <= n, IndexError, "topk: k = ", k, " is out of range for dimension ", dim,
           " of size ", n, " (input shape ", shape_str(x.shape()), ")");
  return dim;
}

namespace {

Tensors topk_forward_cpu(const Tensors& in, const Attrs& a) {
  const int64_t dim = check_topk_args(in, a);
  const Tensor& x = in[0];
  if (x.dtype() == DType::BFloat16 || x.dtype() == DType::Float16) {
    // 16-bit floats are ordered through float32, which holds their values exactly.
    Tensors r = topk_forward_cpu({to_dtype(x, DType::Float32)}, a);
    return {to_dtype(r[0], x.dtype()), r[1]};
  }
  const int64_t k = a.i("k");
  const bool largest = a.b("largest", true);
  const int64_t n = x.dim() ? x.shape()[dim] : 1;
  const int64_t last = std::max<int64_t>(x.dim(), 1) - 1;
  Tensor xt = contiguous(x.dim() ? transpose(x, dim, last) : reshape(x, {1}));
  Shape shape = xt.shape();
  shape.back() = k;
  Tensor values = Tensor::empty(shape, x.dtype(), x.device());
  Tensor indices = Tensor::empty(shape, DType::Int64, x.device());
  const int64_t rows = shape_numel(shape) / std::max<int64_t>(k, 1);
  if (values.numel() > 0) {
    DISPATCH_NUMERIC(x.dtype(), "topk", {
      const scalar_t* px = xt.data<scalar_t>();
      scalar_t* pv = values.data<scalar_t>();
      int64_t* pi = indices.data<int64_t>();
      cpu::parallel_rows(rows, n, [&](int64_t r0, int64_t r1) {
        std::vector<int64_t> order(n);
        for (int64_t r = r0; r < r1; ++r) {
          const scalar_t* row = px + r * n;  // row points at x[a, :, b] (made contiguous)
          std::iota(order.begin(), order.end(), int64_t(0));
          std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int64_t i, int64_t j) {
            if (before(row[i], row[j], largest)) return true;
            if (before(row[j], row[i], largest)) return false;
            return i < j;
          });
          for (int64_t j = 0; j < k; ++j) {
            pv[r * k + j] = row[order[j]];
            pi[r * k + j] = order[j];
          }
        }
      });
    });
  }
  if (x.dim() == 0) {
    Shape s = k == 1 ? Shape{} : Shape{0};
    return {reshape(values, s), reshape(indices, s)};
  }
  return {contiguous(transpose(values, dim, last)), contiguous(transpose(indices, dim, last))};
}

Tensors topk_backward(const BackwardCtx& c, const Tensors& g) {
  const Shape& shape = c.input_shapes[0];
  Tensor z = full(shape, 0.0, g[0].dtype(), g[0].device());
  if (shape.empty()) return {g[0].numel() ? reshape(g[0], {}) : z};
  return {scatter_add(z, c.attrs.i("dim", -1), c.outputs[1], g[0])};
}

}  // namespace

Tensors topk(const Tensor& x, int64_t k, int64_t dim, bool largest) {
  return call("topk", {x}, {{"k", k}, {"dim", dim}, {"largest", largest}});
}

LS_REGISTER(topk) {
  declare_op("topk", {topk_backward, false, true});
  register_kernel("topk", "cpu", topk_forward_cpu,
                  {DType::Float32, DType::Float64, DType::BFloat16, DType::Float16, DType::Int32,
                   DType::Int64, DType::UInt8, DType::Bool});
}

}  // namespace ls::ops
