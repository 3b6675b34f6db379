// softmax and log_softmax along any dim: forward and backward, float32 and float64.
//
//   softmax      y[n] = exp(x[n] - m) / s            m = max_n x[n], s = sum_n exp(x[n] - m)
//   log_softmax  y[n] = (x[n] - m) - log(s)
//   softmax backward      dx[n] = y[n] (g[n] - sum_k g[k] y[k])
//   log_softmax backward  dx[n] = g[n] - exp(y[n]) sum_k g[k]
//
// Shapes: x is viewed as (O, N, I): N is the softmax dim, O the product of the dims before it,
// I of the dims after it. Registry ops: "softmax" / "log_softmax" {x} attr dim -> {y};
// "softmax_backward" / "log_softmax_backward" {y, g} attr dim -> {dx} (both backwards need only
// the forward's output, so the input is not kept alive).
//
// Kernels: with I == 1 (dim = -1: attention scores (B, NH, T, T), logits (B*T, V)) every row is
// contiguous and the row kernel makes three passes over it (max, exp, scale) while it sits in L1,
// rows in parallel. With I > 1 a row is strided by I; rather than transposing, the column kernel
// takes a block of up to kBlock adjacent rows and walks n outer, i inner, so every load is
// contiguous and the running max/sum of the block vectorise across rows.
// Subtracting the max keeps every exponent <= 0 (exp_nonpos_ of cpu_math.h: no overflow to
// handle); a row of all -inf gives NaN, as in torch. log_softmax's backward takes exp(y), y <= 0.
// log_softmax subtracts in that order: m + log(s) rounded first would lose the low bits of log(s)
// next to a large m (rows [1e4, 1e4 + .5, 1e4 - 2] were off by 5e-4; [1e30, 1e30] gave 0, not
// -log 2), where x[n] - m is exact near the max.
#include <cmath>

#include "cpu_loops.h"
#include "cpu_math.h"
#include "kernel_checks.h"
#include "op_args.h"
#include "ops.h"

namespace ls::ops {

RowLayout row_layout(const Shape& shape, int64_t dim) {
  RowLayout l;
  if (shape.empty()) return l;  // a 0-d tensor is one row of one element
  for (int64_t d = 0; d < dim; ++d) l.O *= shape[d];
  l.N = shape[dim];
  for (int64_t d = dim + 1; d < int64_t(shape.size()); ++d) l.I *= shape[d];
  return l;
}

namespace {

constexpr int64_t kBlock = 64;  // rows per task in the column kernels

using Layout = RowLayout;

// ---- forward ----

template <typename T, bool Log>
void softmax_rows(const T* x, T* y, int64_t R, int64_t N) {
  cpu::parallel_rows(R, N, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* xr = x + r * N;  // xr points at x[r, :]
      T* yr = y + r * N;
      T m = cpu::row_max(xr, N);
      if constexpr (Log) {
        T log_s = std::log(cpu::row_sum_exp(xr, N, m));
        for (int64_t n = 0; n < N; ++n) yr[n] = (xr[n] - m) - log_s;
      } else {
        for (int64_t n = 0; n < N; ++n) yr[n] = cpu::exp_nonpos_(xr[n] - m);
        T inv = T(1) / cpu::row_sum(yr, N);
        for (int64_t n = 0; n < N; ++n) yr[n] *= inv;
      }
    }
  });
}

// Calls fn(base offset of x[o, 0, i0], block width w) for every block of adjacent rows.
template <typename Fn>
void for_each_column_block(const Layout& l, Fn&& fn) {
  int64_t nb = (l.I + kBlock - 1) / kBlock;
  int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(l.N * kBlock, 1));
  parallel_for(0, l.O * nb, grain, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      int64_t o = t / nb, i0 = (t % nb) * kBlock;
      fn(o * l.N * l.I + i0, std::min(kBlock, l.I - i0));
    }
  });
}

template <typename T, bool Log>
void softmax_cols(const T* x, T* y, const Layout& l) {
  const int64_t N = l.N, I = l.I;
  for_each_column_block(l, [&](int64_t base, int64_t w) {
    T m[kBlock], s[kBlock];
    for (int64_t b = 0; b < w; ++b) m[b] = -INFINITY, s[b] = 0;
    for (int64_t n = 0; n < N; ++n) {
      const T* xr = x + base + n * I;  // xr points at x[o, n, i0:i0+w]
      for (int64_t b = 0; b < w; ++b) m[b] = xr[b] > m[b] ? xr[b] : m[b];
    }
    for (int64_t n = 0; n < N; ++n) {
      const T* xr = x + base + n * I;
      T* yr = y + base + n * I;
      for (int64_t b = 0; b < w; ++b) {
        T e = cpu::exp_nonpos_(xr[b] - m[b]);
        s[b] += e;
        if constexpr (!Log) yr[b] = e;
      }
    }
    for (int64_t b = 0; b < w; ++b) s[b] = Log ? std::log(s[b]) : T(1) / s[b];
    for (int64_t n = 0; n < N; ++n) {
      const T* xr = x + base + n * I;
      T* yr = y + base + n * I;
      for (int64_t b = 0; b < w; ++b) {
        if constexpr (Log) yr[b] = (xr[b] - m[b]) - s[b];
        else yr[b] *= s[b];
      }
    }
  });
}

template <bool Log>
Tensors softmax_forward(const Tensors& in, const Attrs& a) {
  const char* op = Log ? "log_softmax" : "softmax";
  cpu::expect_inputs(in, 1, 1, op);
  Tensor x = contiguous(in[0]);
  Layout l = row_layout(x.shape(), wrap_dim(a.i("dim"), x.dim(), op));
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  if (x.numel() == 0) return {y};
  DISPATCH_FLOAT(x.dtype(), op, {
    if (l.I == 1) softmax_rows<scalar_t, Log>(x.data<scalar_t>(), y.data<scalar_t>(), l.O, l.N);
    else softmax_cols<scalar_t, Log>(x.data<scalar_t>(), y.data<scalar_t>(), l);
  });
  return {y};
}

// ---- backward ----

template <typename T, bool Log>
void softmax_backward_rows(const T* y, const T* g, T* dx, int64_t R, int64_t N) {
  cpu::parallel_rows(R, N, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* yr = y + r * N;  // yr, gr, dxr point at row r
      const T* gr = g + r * N;
      T* dxr = dx + r * N;
      if constexpr (Log) {
        T sg = cpu::row_sum(gr, N);
        for (int64_t n = 0; n < N; ++n) dxr[n] = gr[n] - cpu::exp_nonpos_(yr[n]) * sg;
      } else {
        T dot = cpu::row_dot(gr, yr, N);
        for (int64_t n = 0; n < N; ++n) dxr[n] = yr[n] * (gr[n] - dot);
      }
    }
  });
}

template <typename T, bool Log>
void softmax_backward_cols(const T* y, const T* g, T* dx, const Layout& l) {
  const int64_t N = l.N, I = l.I;
  for_each_column_block(l, [&](int64_t base, int64_t w) {
    T s[kBlock];  // sum_k g[k] (log) or sum_k g[k] y[k], per row of the block
    for (int64_t b = 0; b < w; ++b) s[b] = 0;
    for (int64_t n = 0; n < N; ++n) {
      const T* yr = y + base + n * I;
      const T* gr = g + base + n * I;
      for (int64_t b = 0; b < w; ++b) s[b] += Log ? gr[b] : gr[b] * yr[b];
    }
    for (int64_t n = 0; n < N; ++n) {
      const T* yr = y + base + n * I;
      const T* gr = g + base + n * I;
      T* dxr = dx + base + n * I;
      for (int64_t b = 0; b < w; ++b) {
        if constexpr (Log) dxr[b] = gr[b] - cpu::exp_nonpos_(yr[b]) * s[b];
        else dxr[b] = yr[b] * (gr[b] - s[b]);
      }
    }
  });
}

}  // namespace

void check_softmax_backward_args(const Tensor& y, const Tensor& g, const char* op) {
  cpu::expect_same_dtype(y, g, op, "gradient");
  LS_CHECK(y.shape() == g.shape(), ValueError, op, ": gradient of shape ", shape_str(g.shape()),
           " does not match the output shape ", shape_str(y.shape()));
}

namespace {

template <bool Log>
Tensors softmax_backward(const Tensors& in, const Attrs& a) {
  const char* op = Log ? "log_softmax_backward" : "softmax_backward";
  cpu::expect_inputs(in, 2, 2, op);
  check_softmax_backward_args(in[0], in[1], op);
  Tensor y = contiguous(in[0]), g = contiguous(in[1]);
  Layout l = row_layout(y.shape(), wrap_dim(a.i("dim"), y.dim(), op));
  Tensor dx = Tensor::empty(y.shape(), y.dtype(), y.device());
  if (y.numel() == 0) return {dx};
  DISPATCH_FLOAT(y.dtype(), op, {
    using T = scalar_t;
    if (l.I == 1) softmax_backward_rows<T, Log>(y.data<T>(), g.data<T>(), dx.data<T>(), l.O, l.N);
    else softmax_backward_cols<T, Log>(y.data<T>(), g.data<T>(), dx.data<T>(), l);
  });
  return {dx};
}

Tensor checked_call(const char* op, const Tensor& x, int64_t dim) {
  LS_CHECK(x.defined(), ValueError, op, ": input is None");
  LS_CHECK(is_floating(x.dtype()), TypeError, op, ": needs a floating-point input, got ",
           dtype_name(x.dtype()));
  wrap_dim(dim, x.dim(), op);  // IndexError naming the op for an out-of-range dim
  return call1(op, {x}, {{"dim", dim}});
}

}  // namespace

Tensor softmax(const Tensor& x, int64_t dim) { return checked_call("softmax", x, dim); }
Tensor log_softmax(const Tensor& x, int64_t dim) { return checked_call("log_softmax", x, dim); }

LS_REGISTER(softmax) {
  const std::vector<DType> kFloat = {DType::Float32, DType::Float64};
  for (bool log : {false, true}) {
    std::string name = log ? "log_softmax" : "softmax";
    std::string bw = name + "_backward";
    // Only the output is saved: both gradients are functions of y and g.
    declare_op(name, {[bw](const BackwardCtx& c, const Tensors& g) {
                        return Tensors{call1(bw, {c.outputs[0], g[0]}, c.attrs)};
                      }, false, true});
    declare_op(bw, {});
  }
  register_kernel("softmax", "cpu", softmax_forward<false>, kFloat);
  register_kernel("log_softmax", "cpu", softmax_forward<true>, kFloat);
  register_kernel("softmax_backward", "cpu", softmax_backward<false>, kFloat);
  register_kernel("log_softmax_backward", "cpu", softmax_backward<true>, kFloat);
}

}  // namespace ls::ops
