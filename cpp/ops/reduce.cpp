// Reductions: sum over any set of dims (the one registered kernel), max/argmax along a dim, amax
// (the max of all elements), and mean/var composed from them. Sums of float32 accumulate in
// float64 per output element.
// Gradients: max along a dim sends g to the returned index (first on ties), as torch's max(dim);
// amax spreads g evenly over every element equal to the max (over the NaNs when the max is NaN),
// as torch's max() and min() of all elements: [5, 5, 1].max() gives [.5, .5, 0].
// Layout: the reduced dims are moved last and the tensor made dense, so every output element
// reduces one contiguous row; a reduction over the leading dims of a dense tensor (the bias
// gradient case) instead accumulates columns without a transposing copy.
#include <algorithm>
#include <cmath>
#include <numeric>

#include "cpu_loops.h"
#include "ops.h"

namespace ls::ops {

namespace {

std::vector<int64_t> normalize_dims(std::vector<int64_t> dims, int64_t ndim, const char* op) {
  if (ndim == 0) {  // a 0-d tensor's dim 0 or -1 is the tensor itself: nothing to reduce
    for (auto d : dims) wrap_dim(d, ndim, op);
    return {};
  }
  if (dims.empty()) {
    dims.resize(ndim);
    std::iota(dims.begin(), dims.end(), 0);
  }
  for (auto& d : dims) d = wrap_dim(d, ndim, op);
  std::sort(dims.begin(), dims.end());
  LS_CHECK(std::adjacent_find(dims.begin(), dims.end()) == dims.end(), ValueError, op,
           ": repeated dimension in ", shape_str(dims));
  return dims;
}

Shape reduced_shape(const Shape& shape, const std::vector<int64_t>& dims, bool keepdim) {
  Shape out;
  for (int64_t i = 0; i < int64_t(shape.size()); ++i) {
    bool r = std::binary_search(dims.begin(), dims.end(), i);
    if (!r) out.push_back(shape[i]);
    else if (keepdim) out.push_back(1);
  }
  return out;
}

// x with `dims` moved last, dense: returns (view as rows x cols).
Tensor rows_last(const Tensor& x, const std::vector<int64_t>& dims) {
  std::vector<int64_t> perm;
  for (int64_t i = 0; i < x.dim(); ++i)
    if (!std::binary_search(dims.begin(), dims.end(), i)) perm.push_back(i);
  for (auto d : dims) perm.push_back(d);
  return contiguous(permute(x, perm));
}

template <typename T>
using acc_t = std::conditional_t<std::is_floating_point_v<T>, double, int64_t>;

Tensors sum_cpu(const Tensors& in, const Attrs& a) {
  const Tensor& x = in[0];
  auto dims = normalize_dims(a.ints("dims", {}), x.dim(), "sum");
  bool keepdim = a.b("keepdim", false);
  DType out_dtype = is_floating(x.dtype()) ? x.dtype() : DType::Int64;
  Tensor out = Tensor::empty(reduced_shape(x.shape(), dims, keepdim), out_dtype, x.device());
  int64_t cols = 1;
  for (auto d : dims) cols *= x.shape()[d];
  int64_t rows = cols ? x.numel() / cols : out.numel();

  bool leading = x.is_contiguous() && !dims.empty() && dims.back() == int64_t(dims.size()) - 1 &&
                 rows > 1;
  DISPATCH_NUMERIC(x.dtype(), "sum", {
    using T = scalar_t;
    using A = acc_t<T>;
    DISPATCH_NUMERIC(out_dtype, "sum", {
      using O = scalar_t;
      O* o = out.data<O>();
      if (leading) {  // x is (cols, rows) dense: out[r] = sum_c x[c, r]
        const T* p = x.data<T>();
        parallel_for(0, rows, 256, [&](int64_t r0, int64_t r1) {
          std::vector<A> acc(r1 - r0, A(0));
          for (int64_t c = 0; c < cols; ++c) {
            const T* row = p + c * rows;
            for (int64_t r = r0; r < r1; ++r) acc[r - r0] += A(row[r]);
          }
          for (int64_t r = r0; r < r1; ++r) o[r] = O(acc[r - r0]);
        });
      } else {
        Tensor xr = rows_last(x, dims);
        const T* p = xr.data<T>();
        cpu::parallel_rows(rows, cols, [&](int64_t r0, int64_t r1) {
          for (int64_t r = r0; r < r1; ++r) {
            const T* row = p + r * cols;
            A acc = 0;
            for (int64_t c = 0; c < cols; ++c) acc += A(row[c]);
            o[r] = O(acc);
          }
        });
      }
    });
  });
  return {out};
}

// values and int64 indices of the maximum along `dim` (first index on ties; NaN wins).
Tensors max_cpu(const Tensors& in, const Attrs& a) {
  const Tensor& x = in[0];
  int64_t dim = wrap_dim(a.i("dim"), x.dim(), "max");
  bool keepdim = a.b("keepdim", false);
  LS_CHECK(x.dim() == 0 || x.shape()[dim] > 0, IndexError, "max: cannot reduce an empty dimension ",
           dim, " of shape ", shape_str(x.shape()));
  std::vector<int64_t> dims = x.dim() ? std::vector<int64_t>{dim} : std::vector<int64_t>{};
  Shape oshape = reduced_shape(x.shape(), dims, keepdim);
  Tensor values = Tensor::empty(oshape, x.dtype(), x.device());
  Tensor indices = Tensor::empty(oshape, DType::Int64, x.device());
  int64_t cols = x.dim() ? x.shape()[dim] : 1, rows = x.numel() / std::max<int64_t>(cols, 1);
  Tensor xr = rows_last(x, dims);
  DISPATCH_NUMERIC(x.dtype(), "max", {
    const scalar_t* p = xr.data<scalar_t>();
    scalar_t* v = values.data<scalar_t>();
    int64_t* idx = indices.data<int64_t>();
    cpu::parallel_rows(rows, cols, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const scalar_t* row = p + r * cols;
        int64_t best = 0;
        for (int64_t c = 1; c < cols; ++c) {
          if (row[best] != row[best]) break;  // NaN already selected
          if (row[c] > row[best] || row[c] != row[c]) best = c;
        }
        v[r] = row[best];
        idx[r] = best;
      }
    });
  });
  return {values, indices};
}

Tensors max_backward(const BackwardCtx& c, const Tensors& g) {
  // The gradient flows to the selected index: g * [arange(n) == index], broadcast along dim.
  const Shape& shape = c.input_shapes[0];
  if (shape.empty()) return {g[0]};
  int64_t dim = wrap_dim(c.attrs.i("dim"), int64_t(shape.size()), "max");
  Tensor idx = c.outputs[1], gv = g[0];
  if (!c.attrs.b("keepdim", false)) {
    idx = unsqueeze(idx, dim);
    gv = unsqueeze(gv, dim);
  }
  Shape ar_shape(shape.size(), 1);
  ar_shape[dim] = shape[dim];
  Tensor ar = reshape(arange(0, double(shape[dim]), 1, DType::Int64, gv.device()), ar_shape);
  Tensor hit = to_dtype(compare(ar, idx, "eq"), gv.dtype());
  return {mul(hit, gv)};
}

// amax as an op of its own, so that its backward is not max(dim)'s: for any device, the max over
// attr dims (none: every dim, keepdim) by the "max" kernels (one autograd node, called under no
// grad): the flattened tensor for every dim, else one max(d) per dim.
Tensors amax_any(const Tensors& in, const Attrs& a) {
  const Tensor& x = in[0];
  const auto dims = normalize_dims(a.ints("dims", {}), x.dim(), "amax");
  const bool keepdim = a.b("keepdim", false);
  // An empty slice has no maximum (dims holds every dim when none are given); no slices at all
  // (a dim of size 0 not reduced) make an empty result, as torch's.
  for (int64_t d : dims)
    LS_CHECK(x.shape()[d] > 0, ValueError, "max: cannot reduce an empty tensor of shape ", shape_str(x.shape()),
             " over its dim ", d, " of size 0");
  if (x.numel() == 0) return {Tensor::empty(reduced_shape(x.shape(), dims, keepdim), x.dtype(), x.device())};
  if (int64_t(dims.size()) == x.dim()) {
    Tensor m = max(reshape(x, {-1}), 0, false)[0];
    return {keepdim ? reshape(m, reduced_shape(x.shape(), dims, true)) : m};
  }
  Tensor m = x;
  for (int64_t d : dims) m = max(m, d, true)[0];
  return {keepdim ? m : reshape(m, reduced_shape(x.shape(), dims, false))};
}

// g / count on each of the count elements equal to the max of their slice (NaN matching NaN), 0
// elsewhere.
Tensors amax_backward(const BackwardCtx& c, const Tensors& g) {
  const Tensor& x = c.inputs[0];
  const auto dims = normalize_dims(c.attrs.ints("dims", {}), x.dim(), "amax");
  const Shape kept = reduced_shape(x.shape(), dims, true);
  const Tensor m = reshape(c.outputs[0], kept);
  auto is_nan = [](const Tensor& t) { return compare(t, t, "ne"); };
  Tensor hit = to_dtype(compare(x, m, "eq"), g[0].dtype());
  hit = add(hit, to_dtype(mul(is_nan(x), is_nan(m)), g[0].dtype()));  // bool * bool: and
  // counted and divided in float32 (float64): in bf16, 257 ties would count as 256
  const DType acc = g[0].dtype() == DType::Float64 ? DType::Float64 : DType::Float32;
  Tensor count = sum(to_dtype(hit, acc), dims, true);
  Tensor share = to_dtype(div(to_dtype(reshape(g[0], kept), acc), count), g[0].dtype());
  return {mul(hit, share)};
}

}  // namespace

Tensor sum(const Tensor& x, std::vector<int64_t> dims, bool keepdim) {
  // On every backend a 0-d tensor's dims arrive as none, the sum of a scalar (x.sum()).
  if (x.dim() == 0) dims = normalize_dims(dims, 0, "sum");
  return call1("sum", {x}, {{"dims", dims}, {"keepdim", keepdim}});
}

Tensor mean(const Tensor& x, std::vector<int64_t> dims, bool keepdim) {
  auto nd = normalize_dims(dims, x.dim(), "mean");
  int64_t n = 1;
  for (auto d : nd) n *= x.shape()[d];
  LS_CHECK(is_floating(x.dtype()), TypeError, "mean: needs a floating dtype, got ", dtype_name(x.dtype()));
  return mul_scalar(sum(x, nd, keepdim), 1.0 / double(n));
}

Tensor var(const Tensor& x, std::vector<int64_t> dims, int64_t correction, bool keepdim) {
  auto nd = normalize_dims(dims, x.dim(), "var");
  int64_t n = 1;
  for (auto d : nd) n *= x.shape()[d];
  Tensor dev = sub(x, mean(x, nd, true));
  double denom = std::max<double>(0.0, double(n - correction));
  Tensor squares = sum(mul(dev, dev), nd, keepdim);
  if (n > 0) {
    // The corrected two-pass sum (Chan, Golub and LeVeque): less (sum of dev)^2 / n, which takes
    // out the rounded mean's error; its square otherwise adds to every deviation's (float32 at a
    // mean 10^4 times the spread: 3e-3 relative, where this gives 1e-7 as torch). Clamped at 0
    // against rounding, for a constant x. s (s / n) <= squares: finite where squares is; an
    // overflowed squares stays inf (inf - inf would be NaN).
    Tensor s = sum(dev, nd, keepdim);
    Tensor corrected = clamp(sub(squares, mul(s, mul_scalar(s, 1.0 / double(n)))), 0.0, std::nullopt);
    squares = where(compare(squares, scalar_like(INFINITY, squares), "eq"), squares, corrected);
  }
  return mul_scalar(squares, 1.0 / denom);
}

Tensors max(const Tensor& x, int64_t dim, bool keepdim) {
  return call("max", {x}, {{"dim", dim}, {"keepdim", keepdim}});
}

Tensor amax(const Tensor& x, std::vector<int64_t> dims, bool keepdim) {
  return call1("amax", {x}, {{"dims", dims}, {"keepdim", keepdim}});
}

Tensor argmax(const Tensor& x, int64_t dim, bool keepdim) { return max(x, dim, keepdim)[1]; }

LS_REGISTER(reduce) {
  declare_op("sum", {[](const BackwardCtx& c, const Tensors& g) {
                       const Shape& shape = c.input_shapes[0];
                       auto dims = normalize_dims(c.attrs.ints("dims", {}), int64_t(shape.size()), "sum");
                       Tensor gg = g[0];
                       if (!c.attrs.b("keepdim", false))
                         gg = reshape(gg, reduced_shape(shape, dims, true));
                       return Tensors{expand(gg, shape)};
                     }, false});
  declare_op("max", {max_backward, false, true});
  declare_op("amax", {amax_backward, true, true});
  register_kernel("sum", "cpu", sum_cpu,
                  {DType::Float32, DType::Float64, DType::Int32, DType::Int64, DType::UInt8, DType::Bool});
  register_kernel("max", "cpu", max_cpu,
                  {DType::Float32, DType::Float64, DType::Int32, DType::Int64, DType::UInt8});
  register_kernel("amax", "any", amax_any);
}

}  // namespace ls::ops
