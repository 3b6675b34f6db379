// rms_norm over the last dim (LLaMA): forward and backward, float32 and float64.
//
//   rstd = 1 / sqrt(sum_c x[c]^2 / C + eps)      y = x * rstd * w
//   backward, per row, with dxhat = g * w and xhat = x * rstd:
//     dx = rstd (dxhat - xhat mean_c(dxhat xhat)) = rstd dxhat - x rstd^3 mean_c(dxhat x)
//     dw = sum_rows g xhat
//
// Shapes: x (..., C) viewed as (R, C); w (C,) or undefined (None); rstd (...) = x.shape[:-1].
// Registry ops: "rms_norm" {x, w?} attr eps -> {y, rstd};
// "rms_norm_backward" {g, x, w?, rstd} attr dweight (bool) -> {dx, dw}, dw of shape (0,) when not
// asked for. A gradient arriving for rstd is ignored (a statistic, as in layer_norm).
//
// Kernels: as layer_norm.cpp, a row stays in L1: forward = one dot product and one scaling pass;
// backward = one dot product (dxhat . x) and one pass writing dx and adding g xhat into this
// thread's float partial of dw, flushed into float64 every kFlushRows rows and added across
// threads in a fixed order.
#include <cmath>

#include "cpu_loops.h"
#include "cpu_math.h"
#include "kernel_checks.h"
#include "ops.h"

namespace ls::ops {

namespace {

constexpr int64_t kFlushRows = 32;

template <typename T, bool HasW>
void rms_norm_rows(const T* x, const T* w, T* y, T* rstd, int64_t R, int64_t C, double eps) {
  cpu::parallel_rows(R, C, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* xr = x + r * C;  // xr, yr point at row r
      T* yr = y + r * C;
      T rs = T(1) / std::sqrt(cpu::row_dot(xr, xr, C) / T(C) + T(eps));
      for (int64_t c = 0; c < C; ++c) yr[c] = HasW ? xr[c] * rs * w[c] : xr[c] * rs;
      rstd[r] = rs;
    }
  });
}

// Validation shared by the typed wrapper and the kernel (which call() can reach directly).
void check_args(const Tensor& x, const Tensor& weight, double eps) {
  LS_CHECK(x.defined(), ValueError, "rms_norm: input is None");
  LS_CHECK(is_floating(x.dtype()), TypeError, "rms_norm: needs a floating-point input, got ",
           dtype_name(x.dtype()));
  LS_CHECK(x.dim() >= 1, ValueError, "rms_norm: input must have at least one dimension, got a 0-d tensor");
  int64_t C = x.size(-1);
  if (weight.defined()) {
    LS_CHECK(weight.shape() == Shape{C}, ValueError, "rms_norm: weight of shape ",
             shape_str(weight.shape()), " does not match the normalized dimension of input shape ",
             shape_str(x.shape()), " (expected (", C, ",))");
    cpu::expect_same_dtype(x, weight, "rms_norm", "weight");
  }
  LS_CHECK(eps >= 0, ValueError, "rms_norm: eps must be >= 0, got ", eps);
}

Tensors rms_norm_forward(const Tensors& in, const Attrs& a) {
  cpu::expect_inputs(in, 1, 2, "rms_norm");
  double eps = a.f("eps", 1e-6);
  check_args(in[0], cpu::optional_input(in, 1), eps);
  Tensor x = contiguous(in[0]);
  Tensor w = cpu::optional_input(in, 1);
  if (w.defined()) w = contiguous(w);
  int64_t C = x.dim() ? x.size(-1) : 1;
  Shape stat_shape = x.dim() ? Shape(x.shape().begin(), x.shape().end() - 1) : Shape{};
  int64_t R = shape_numel(stat_shape);
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  Tensor rstd = Tensor::empty(stat_shape, x.dtype(), x.device());
  DISPATCH_FLOAT(x.dtype(), "rms_norm", {
    using T = scalar_t;
    if (w.defined()) rms_norm_rows<T, true>(x.data<T>(), w.data<T>(), y.data<T>(), rstd.data<T>(), R, C, eps);
    else rms_norm_rows<T, false>(x.data<T>(), nullptr, y.data<T>(), rstd.data<T>(), R, C, eps);
  });
  return {y, rstd};
}

template <typename T, bool HasW>
void rms_norm_backward_rows(const T* g, const T* x, const T* w, const T* rstd, T* dx,
                            double* dw_acc, int64_t R, int64_t C) {
  // One contiguous part of the rows per thread; part p owns dw_acc[p*C .. (p+1)*C).
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(num_threads(), R));
  parallel_for(0, parts, 1, [&](int64_t p0, int64_t p1) {
    std::vector<T> pw(dw_acc ? C : 0, T(0));  // float partial of dw since the last flush
    for (int64_t p = p0; p < p1; ++p) {
      int64_t rb = R * p / parts, re = R * (p + 1) / parts;
      double* dwp = dw_acc ? dw_acc + p * C : nullptr;
      for (int64_t r = rb; r < re; ++r) {
        const T* gr = g + r * C;  // gr, xr, dxr point at row r
        const T* xr = x + r * C;
        T* dxr = dx + r * C;
        const T rs = rstd[r];
        // sum_c dxhat x, in lanes (see cpu_math.h)
        constexpr int L = cpu::kLanes<T>;
        T s[L] = {};
        int64_t i = 0;
        for (; i + L <= C; i += L)
          for (int j = 0; j < L; ++j) s[j] += (HasW ? gr[i + j] * w[i + j] : gr[i + j]) * xr[i + j];
        T dot = 0;
        for (; i < C; ++i) dot += (HasW ? gr[i] * w[i] : gr[i]) * xr[i];
        for (int j = 0; j < L; ++j) dot += s[j];
        const T k = rs * rs * rs * dot / T(C);
        for (int64_t c = 0; c < C; ++c) {
          T gw = HasW ? gr[c] * w[c] : gr[c];
          dxr[c] = rs * gw - xr[c] * k;
        }
        if (dwp) {
          for (int64_t c = 0; c < C; ++c) pw[c] += gr[c] * (xr[c] * rs);
          if ((r - rb) % kFlushRows == kFlushRows - 1 || r == re - 1)
            for (int64_t c = 0; c < C; ++c) dwp[c] += double(pw[c]), pw[c] = 0;
        }
      }
    }
  });
}

Tensors rms_norm_backward(const Tensors& in, const Attrs& a) {
  const char* op = "rms_norm_backward";
  LS_CHECK(in.size() == 4 && in[0].defined() && in[1].defined() && in[3].defined(), ValueError, op,
           ": expected inputs {g, x, weight or None, rstd}");
  check_args(in[1], in[2], 0.0);
  for (int i : {0, 3}) cpu::expect_same_dtype(in[1], in[i], op, i == 0 ? "gradient" : "rstd");
  LS_CHECK(in[3].numel() * in[1].size(-1) == in[1].numel(), ValueError, op, ": rstd of shape ",
           shape_str(in[3].shape()), " does not match the input shape ", shape_str(in[1].shape()));
  Tensor g = contiguous(in[0]), x = contiguous(in[1]);
  Tensor w = in[2].defined() ? contiguous(in[2]) : Tensor();
  Tensor rstd = contiguous(in[3]);
  LS_CHECK(g.shape() == x.shape(), ValueError, "rms_norm_backward: gradient of shape ",
           shape_str(g.shape()), " does not match the input shape ", shape_str(x.shape()));
  bool want_dw = a.b("dweight", false);
  int64_t C = x.dim() ? x.size(-1) : 1;
  int64_t R = rstd.numel();
  int64_t parts = std::max<int64_t>(1, std::min<int64_t>(num_threads(), R));
  Tensor dx = Tensor::empty(x.shape(), x.dtype(), x.device());
  Tensor dw = Tensor::empty({want_dw ? C : 0}, x.dtype(), x.device());
  std::vector<double> dw_acc(want_dw ? parts * C : 0, 0.0);
  DISPATCH_FLOAT(x.dtype(), "rms_norm_backward", {
    using T = scalar_t;
    auto kernel = w.defined() ? rms_norm_backward_rows<T, true> : rms_norm_backward_rows<T, false>;
    kernel(g.data<T>(), x.data<T>(), w.defined() ? w.data<T>() : nullptr, rstd.data<T>(),
           dx.data<T>(), want_dw ? dw_acc.data() : nullptr, R, C);
    for (int64_t c = 0; want_dw && c < C; ++c) {
      double s = 0;
      for (int64_t p = 0; p < parts; ++p) s += dw_acc[p * C + c];
      dw.data<T>()[c] = T(s);
    }
  });
  return {dx, dw};
}

}  // namespace

Tensor rms_norm(const Tensor& x, const Tensor& weight, double eps) {
  check_args(x, weight, eps);
  return call("rms_norm", {x, weight}, {{"eps", eps}})[0];
}

LS_REGISTER(rms_norm) {
  const std::vector<DType> kFloat = {DType::Float32, DType::Float64};
  declare_op("rms_norm", {[](const BackwardCtx& c, const Tensors& g) {
                            // the weight may have been left out of the call entirely.
                            bool need_w = c.needs_grad.size() > 1 && c.needs_grad[1];
                            Tensors r = call("rms_norm_backward",
                                             {g[0], c.inputs[0], cpu::optional_input(c.inputs, 1), c.outputs[1]},
                                             {{"dweight", need_w}});
                            return Tensors{c.needs_grad[0] ? r[0] : Tensor(), need_w ? r[1] : Tensor()};
                          }, true, true});
  declare_op("rms_norm_backward", {});
  register_kernel("rms_norm", "cpu", rms_norm_forward, kFloat);
  register_kernel("rms_norm_backward", "cpu", rms_norm_backward, kFloat);
}

}  // namespace ls::ops
