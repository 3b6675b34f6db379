// rms_norm over the last dim (LLaMA), and its variant fused with the residual add before it
// (add_rms_norm): forward and backward, float32 and float64.
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
//
// add_rms_norm (as add_layer_norm in layer_norm.cpp):
//   h = x + r      y = rms_norm(h; w, eps)      dx = dr = dh + rms_norm_backward(dy)
// Registry ops: "add_rms_norm" {x, r, w?} attr eps -> {h, y, rstd}; "add_rms_norm_backward"
// {dy, dh, h, w?, rstd} attr dweight -> {dx, dw}. The same row kernels with a template flag:
// h = x + r is written before the row's sum of squares; dh is added into dx.
#include <cmath>
#include <type_traits>

#include "cpu_loops.h"
#include "cpu_math.h"
#include "kernel_checks.h"
#include "op_args.h"
#include "ops.h"

namespace ls::ops {

namespace {

constexpr int64_t kFlushRows = 32;

// Add: h[r] = x[r] + res[r] is written first and normalised instead of x[r] (add_rms_norm).
template <typename T, bool HasW, bool Add>
void rms_norm_rows(const T* x, const T* res, const T* w, T* h, T* y, T* rstd, int64_t R, int64_t C,
                   double eps) {
  cpu::parallel_rows(R, C, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* xr = x + r * C;  // xr, yr point at row r
      T* yr = y + r * C;
      if constexpr (Add) {
        T* hr = h + r * C;
        const T* rr = res + r * C;
        for (int64_t c = 0; c < C; ++c) hr[c] = xr[c] + rr[c];
        xr = hr;  // the row stays in L1 for the passes below
      }
      T rs = T(1) / std::sqrt(cpu::row_dot(xr, xr, C) / T(C) + T(eps));
      for (int64_t c = 0; c < C; ++c) yr[c] = HasW ? xr[c] * rs * w[c] : xr[c] * rs;
      rstd[r] = rs;
    }
  });
}

// rms_norm (res undefined) -> {y, rstd}, or add_rms_norm -> {h, y, rstd}.
Tensors norm_forward(const Tensor& x_in, const Tensor& res_in, const Tensor& w_in, double eps) {
  const bool add = res_in.defined();
  Tensor x = contiguous(x_in);
  Tensor res = add ? contiguous(res_in) : Tensor();
  Tensor w = w_in.defined() ? contiguous(w_in) : Tensor();
  int64_t C = x.dim() ? x.size(-1) : 1;
  Shape stat_shape = x.dim() ? Shape(x.shape().begin(), x.shape().end() - 1) : Shape{};
  int64_t R = shape_numel(stat_shape);
  Tensor h = add ? Tensor::empty(x.shape(), x.dtype(), x.device()) : Tensor();
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  Tensor rstd = Tensor::empty(stat_shape, x.dtype(), x.device());
  DISPATCH_FLOAT(x.dtype(), "rms_norm", {
    using T = scalar_t;
    auto run = [&](auto add_tag) {
      constexpr bool Add = decltype(add_tag)::value;
      auto kernel = w.defined() ? rms_norm_rows<T, true, Add> : rms_norm_rows<T, false, Add>;
      kernel(x.data<T>(), Add ? res.data<T>() : nullptr, w.defined() ? w.data<T>() : nullptr,
             Add ? h.data<T>() : nullptr, y.data<T>(), rstd.data<T>(), R, C, eps);
    };
    if (add) run(std::true_type{});
    else run(std::false_type{});
  });
  if (add) return {h, y, rstd};
  return {y, rstd};
}

Tensors rms_norm_forward(const Tensors& in, const Attrs& a) {
  cpu::expect_inputs(in, 1, 2, "rms_norm");
  double eps = a.f("eps", 1e-6);
  Tensor w = cpu::optional_input(in, 1);
  check_norm_args(in[0], {{&w, "weight"}}, eps, "rms_norm");
  return norm_forward(in[0], Tensor(), w, eps);
}

Tensors add_rms_norm_forward(const Tensors& in, const Attrs& a) {
  const char* op = "add_rms_norm";
  cpu::expect_inputs(in, 2, 3, op);
  double eps = a.f("eps", 1e-6);
  Tensor w = cpu::optional_input(in, 2);
  check_norm_args(in[0], {{&w, "weight"}}, eps, op);
  check_norm_residual(in[0], in[1], op, "residual");
  return norm_forward(in[0], in[1], w, eps);
}

// HasDh: dx = dh + the norm's gradient (add_rms_norm_backward; x is then h).
template <typename T, bool HasW, bool HasDh>
void rms_norm_backward_rows(const T* g, const T* dh, const T* x, const T* w, const T* rstd, T* dx,
                            double* dw_acc, int64_t R, int64_t C) {
  // One contiguous part of the rows per thread; part p owns dw_acc[p*C .. (p+1)*C).
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(num_threads(), R));
  parallel_for(0, parts, 1, [&](int64_t p0, int64_t p1) {
    std::vector<T> pw(dw_acc ? C : 0, T(0));  // float partial of dw since the last flush
    for (int64_t p = p0; p < p1; ++p) {
      int64_t rb = R * p / parts, re = R * (p + 1) / parts;
      double* dwp = dw_acc ? dw_acc + p * C : nullptr;
      for (int64_t r = rb; r < re; ++r) {
        const T* gr = g + r * C;  // gr, xr, dxr, dhr point at row r
        const T* xr = x + r * C;
        T* dxr = dx + r * C;
        const T* dhr = HasDh ? dh + r * C : nullptr;
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
          const T d = rs * gw - xr[c] * k;
          dxr[c] = HasDh ? dhr[c] + d : d;
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

// rms_norm_backward (dh undefined) or add_rms_norm_backward: checks the shared inputs
// {g, x, weight or None, rstd} (x is h for the fused op) and runs the rows.
Tensors norm_backward(const Tensor& g_in, const Tensor& dh_in, const Tensor& x_in,
                      const Tensor& w_in, const Tensor& rstd_in, const Attrs& a, const char* op) {
  check_norm_backward_args(x_in, w_in, g_in, dh_in, op);
  cpu::expect_same_dtype(x_in, rstd_in, op, "rstd");
  check_norm_stats(x_in, Tensor(), rstd_in, false, op);
  Tensor g = contiguous(g_in), x = contiguous(x_in);
  Tensor dh = dh_in.defined() ? contiguous(dh_in) : Tensor();
  Tensor w = w_in.defined() ? contiguous(w_in) : Tensor();
  Tensor rstd = contiguous(rstd_in);
  bool want_dw = a.b("dweight", false);
  int64_t C = x.dim() ? x.size(-1) : 1;
  int64_t R = rstd.numel();
  int64_t parts = std::max<int64_t>(1, std::min<int64_t>(num_threads(), R));
  Tensor dx = Tensor::empty(x.shape(), x.dtype(), x.device());
  Tensor dw = Tensor::empty({want_dw ? C : 0}, x.dtype(), x.device());
  std::vector<double> dw_acc(want_dw ? parts * C : 0, 0.0);
  DISPATCH_FLOAT(x.dtype(), op, {
    using T = scalar_t;
    auto run = [&](auto dh_tag) {
      constexpr bool HasDh = decltype(dh_tag)::value;
      auto kernel = w.defined() ? rms_norm_backward_rows<T, true, HasDh> : rms_norm_backward_rows<T, false, HasDh>;
      kernel(g.data<T>(), HasDh ? dh.data<T>() : nullptr, x.data<T>(),
             w.defined() ? w.data<T>() : nullptr, rstd.data<T>(), dx.data<T>(),
             want_dw ? dw_acc.data() : nullptr, R, C);
    };
    if (dh.defined()) run(std::true_type{});
    else run(std::false_type{});
    for (int64_t c = 0; want_dw && c < C; ++c) {
      double s = 0;
      for (int64_t p = 0; p < parts; ++p) s += dw_acc[p * C + c];
      dw.data<T>()[c] = T(s);
    }
  });
  return {dx, dw};
}

Tensors rms_norm_backward(const Tensors& in, const Attrs& a) {
  const char* op = "rms_norm_backward";
  LS_CHECK(in.size() == 4 && in[0].defined() && in[1].defined() && in[3].defined(), ValueError, op,
           ": expected inputs {g, x, weight or None, rstd}");
  return norm_backward(in[0], Tensor(), in[1], in[2], in[3], a, op);
}

Tensors add_rms_norm_backward(const Tensors& in, const Attrs& a) {
  const char* op = "add_rms_norm_backward";
  LS_CHECK(in.size() == 5 && in[0].defined() && in[1].defined() && in[2].defined() && in[4].defined(),
           ValueError, op, ": expected inputs {dy, dh, h, weight or None, rstd}");
  return norm_backward(in[0], in[1], in[2], in[3], in[4], a, op);
}

}  // namespace

Tensor rms_norm(const Tensor& x, const Tensor& weight, double eps) {
  check_norm_args(x, {{&weight, "weight"}}, eps, "rms_norm");
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
  // add_rms_norm {x, r, w?} -> {h, y, rstd}: the gradients of h (g[0]) and y (g[1]) meet in one
  // kernel; x and r receive the same dx.
  declare_op("add_rms_norm", {[](const BackwardCtx& c, const Tensors& g) {
                                auto needs = [&](size_t i) { return i < c.needs_grad.size() && c.needs_grad[i]; };
                                Tensors r = call("add_rms_norm_backward",
                                                 {g[1], g[0], c.outputs[0], cpu::optional_input(c.inputs, 2), c.outputs[2]},
                                                 {{"dweight", needs(2)}});
                                return Tensors{needs(0) ? r[0] : Tensor(), needs(1) ? r[0] : Tensor(),
                                               needs(2) ? r[1] : Tensor()};
                              }, true, true});
  declare_op("add_rms_norm_backward", {});
  register_kernel("rms_norm", "cpu", rms_norm_forward, kFloat);
  register_kernel("rms_norm_backward", "cpu", rms_norm_backward, kFloat);
  register_kernel("add_rms_norm", "cpu", add_rms_norm_forward, kFloat);
  register_kernel("add_rms_norm_backward", "cpu", add_rms_norm_backward, kFloat);
}

}  // namespace ls::ops
