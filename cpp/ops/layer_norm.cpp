// layer_norm over the last dim, and its variant fused with the residual add before it
// (add_layer_norm): forward and backward, float32 and float64.
//
//   mean = sum_c x[c] / C      rstd = 1 / sqrt(sum_c (x[c] - mean)^2 / C + eps)   (biased var)
//   xhat = (x - mean) rstd     y = xhat * w + b
//   backward, per row, with dxhat = g * w:
//     dx = rstd (dxhat - mean_c(dxhat) - xhat mean_c(dxhat xhat))
//     dw = sum_rows g xhat       db = sum_rows g
//
// Shapes: x (..., C) viewed as (R, C), R = B*T in a transformer; w, b (C,) or undefined (None);
// mean, rstd (...) = x.shape[:-1].
// Registry ops: "layer_norm" {x, w?, b?} attr eps -> {y, mean, rstd};
// "layer_norm_backward" {g, x, w?, mean, rstd} attrs dweight, dbias (bools: which parameter
// gradients to compute) -> {dx, dw, db}; a parameter gradient not asked for is returned with shape
// (0,). Gradients arriving for mean and rstd are ignored (they are statistics, as in torch).
//
// Kernels: one row of C elements stays in L1 across the passes. Forward: the mean, then the sum
// of squared deviations from it (two-pass variance: no cancellation), then y written once. Backward: one pass for the two row means, one pass writing dx and adding
// g xhat and g into this thread's dw/db partials. The partials are float32 for float32 (so the
// update vectorises with dx) and flushed into float64 every kFlushRows rows; the per-thread
// float64 sums are then added in thread order, so the result does not depend on timing.
//
// add_layer_norm (pre-norm Transformer: the residual add, then the next norm, in one pass):
//   h = x + r      y = layer_norm(h; w, b, eps)
//   backward, with dh the gradient reaching h from its later uses (the residual stream):
//     dx = dr = dh + layer_norm_backward(dy)        dw, db as above
// Shapes: x, r, h (..., C) alike. Registry ops: "add_layer_norm" {x, r, w?, b?} attr eps ->
// {h, y, mean, rstd}; "add_layer_norm_backward" {dy, dh, h, w?, mean, rstd} attrs dweight,
// dbias -> {dx, dw, db} (dx is the gradient of both x and r). It lives in this file as a variant
// of layer_norm: the same row kernels with a template flag that forms h = x + r into h before
// the row's statistics (forward) or adds dh into dx (backward). Fused, the forward reads x, r
// and writes h, y once; the backward reads dy, dh, h and writes dx once.
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

// Add: h[r] = x[r] + res[r] is written first and normalised instead of x[r] (add_layer_norm).
template <typename T, bool HasW, bool HasB, bool Add>
void layer_norm_rows(const T* x, const T* res, const T* w, const T* b, T* h, T* y, T* mean,
                     T* rstd, int64_t R, int64_t C, double eps) {
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
      T mu = cpu::row_sum(xr, C) / T(C);
      T rs = T(1) / std::sqrt(cpu::row_sum_sq_dev(xr, C, mu) / T(C) + T(eps));
      for (int64_t c = 0; c < C; ++c) {
        T v = (xr[c] - mu) * rs;
        if constexpr (HasW) v *= w[c];
        if constexpr (HasB) v += b[c];
        yr[c] = v;
      }
      mean[r] = mu;
      rstd[r] = rs;
    }
  });
}

// layer_norm (res undefined) -> {y, mean, rstd}, or add_layer_norm -> {h, y, mean, rstd}.
Tensors norm_forward(const Tensor& x_in, const Tensor& res_in, const Tensor& w_in,
                     const Tensor& b_in, double eps) {
  const bool add = res_in.defined();
  Tensor x = contiguous(x_in);
  Tensor res = add ? contiguous(res_in) : Tensor();
  Tensor w = w_in, b = b_in;
  if (w.defined()) w = contiguous(w);
  if (b.defined()) b = contiguous(b);
  int64_t C = x.dim() ? x.size(-1) : 1;
  int64_t R = C ? x.numel() / C : shape_numel(Shape(x.shape().begin(), x.shape().end() - 1));
  Shape stat_shape = x.dim() ? Shape(x.shape().begin(), x.shape().end() - 1) : Shape{};
  Tensor h = add ? Tensor::empty(x.shape(), x.dtype(), x.device()) : Tensor();
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  Tensor mean = Tensor::empty(stat_shape, x.dtype(), x.device());
  Tensor rstd = Tensor::empty(stat_shape, x.dtype(), x.device());
  DISPATCH_FLOAT(x.dtype(), "layer_norm", {
    using T = scalar_t;
    const T* pw = w.defined() ? w.data<T>() : nullptr;
    const T* pb = b.defined() ? b.data<T>() : nullptr;
    auto run = [&](auto add_tag) {
      constexpr bool Add = decltype(add_tag)::value;
      auto kernel = pw ? (pb ? layer_norm_rows<T, true, true, Add> : layer_norm_rows<T, true, false, Add>)
                       : (pb ? layer_norm_rows<T, false, true, Add> : layer_norm_rows<T, false, false, Add>);
      kernel(x.data<T>(), Add ? res.data<T>() : nullptr, pw, pb, Add ? h.data<T>() : nullptr,
             y.data<T>(), mean.data<T>(), rstd.data<T>(), R, C, eps);
    };
    if (add) run(std::true_type{});
    else run(std::false_type{});
  });
  if (add) return {h, y, mean, rstd};
  return {y, mean, rstd};
}

Tensors layer_norm_forward(const Tensors& in, const Attrs& a) {
  cpu::expect_inputs(in, 1, 3, "layer_norm");
  double eps = a.f("eps", 1e-5);
  Tensor w = cpu::optional_input(in, 1), b = cpu::optional_input(in, 2);
  check_norm_args(in[0], {{&w, "weight"}, {&b, "bias"}}, eps, "layer_norm");
  return norm_forward(in[0], Tensor(), w, b, eps);
}

Tensors add_layer_norm_forward(const Tensors& in, const Attrs& a) {
  const char* op = "add_layer_norm";
  cpu::expect_inputs(in, 2, 4, op);
  double eps = a.f("eps", 1e-5);
  Tensor w = cpu::optional_input(in, 2), b = cpu::optional_input(in, 3);
  check_norm_args(in[0], {{&w, "weight"}, {&b, "bias"}}, eps, op);
  check_norm_residual(in[0], in[1], op, "residual");
  return norm_forward(in[0], in[1], w, b, eps);
}

// HasDh: dx = dh + the norm's gradient (add_layer_norm_backward; x is then h).
template <typename T, bool HasW, bool HasDh>
void layer_norm_backward_rows(const T* g, const T* dh, const T* x, const T* w, const T* mean,
                              const T* rstd, T* dx, double* dw_acc, double* db_acc, int64_t R,
                              int64_t C) {
  // Split the rows into one contiguous part per thread; part p owns dw_acc[p*C .. (p+1)*C).
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(num_threads(), R));
  parallel_for(0, parts, 1, [&](int64_t p0, int64_t p1) {
    std::vector<T> pw, pb;  // this thread's float partials of dw and db since the last flush
    if (dw_acc) pw.assign(C, T(0));
    if (db_acc) pb.assign(C, T(0));
    for (int64_t p = p0; p < p1; ++p) {
      int64_t rb = R * p / parts, re = R * (p + 1) / parts;
      double* dwp = dw_acc ? dw_acc + p * C : nullptr;
      double* dbp = db_acc ? db_acc + p * C : nullptr;
      for (int64_t r = rb; r < re; ++r) {
        const T* gr = g + r * C;  // gr, xr, dxr, dhr point at row r
        const T* xr = x + r * C;
        T* dxr = dx + r * C;
        const T* dhr = HasDh ? dh + r * C : nullptr;
        const T mu = mean[r], rs = rstd[r];
        // Pass 1: sum_c dxhat and sum_c dxhat (x - mu), in lanes (see cpu_math.h).
        constexpr int L = cpu::kLanes<T>;
        T s1[L] = {}, s2[L] = {};
        int64_t i = 0;
        for (; i + L <= C; i += L)
          for (int j = 0; j < L; ++j) {
            T gw = HasW ? gr[i + j] * w[i + j] : gr[i + j];
            s1[j] += gw;
            s2[j] += gw * (xr[i + j] - mu);
          }
        T a1 = 0, a2 = 0;
        for (; i < C; ++i) {
          T gw = HasW ? gr[i] * w[i] : gr[i];
          a1 += gw;
          a2 += gw * (xr[i] - mu);
        }
        for (int j = 0; j < L; ++j) a1 += s1[j], a2 += s2[j];
        const T mean_dxhat = a1 / T(C), mean_dxhat_xhat = a2 * rs / T(C);
        // Pass 2: dx; then the parameter-gradient partials in their own loops (measured: one
        // fused loop with three output streams ran about 2x slower here).
        for (int64_t c = 0; c < C; ++c) {
          T xhat = (xr[c] - mu) * rs;
          T gw = HasW ? gr[c] * w[c] : gr[c];
          const T d = rs * (gw - mean_dxhat - xhat * mean_dxhat_xhat);
          dxr[c] = HasDh ? dhr[c] + d : d;
        }
        if (dwp)
          for (int64_t c = 0; c < C; ++c) pw[c] += gr[c] * ((xr[c] - mu) * rs);
        if (dbp)
          for (int64_t c = 0; c < C; ++c) pb[c] += gr[c];
        if ((r - rb) % kFlushRows == kFlushRows - 1 || r == re - 1) {
          for (int64_t c = 0; dwp && c < C; ++c) dwp[c] += double(pw[c]), pw[c] = 0;
          for (int64_t c = 0; dbp && c < C; ++c) dbp[c] += double(pb[c]), pb[c] = 0;
        }
      }
    }
  });
}

// Adds the per-part float64 partials in part order into out (C,).
template <typename T>
void combine_parts(const std::vector<double>& acc, int64_t parts, int64_t C, T* out) {
  for (int64_t c = 0; c < C; ++c) {
    double s = 0;
    for (int64_t p = 0; p < parts; ++p) s += acc[p * C + c];
    out[c] = T(s);
  }
}

// layer_norm_backward (dh undefined) or add_layer_norm_backward: checks the shared inputs
// {g, x, weight or None, mean, rstd} (x is h for the fused op) and runs the rows.
Tensors norm_backward(const Tensor& g_in, const Tensor& dh_in, const Tensor& x_in,
                      const Tensor& w_in, const Tensor& mean_in, const Tensor& rstd_in,
                      const Attrs& a, const char* op) {
  check_norm_backward_args(x_in, w_in, g_in, dh_in, op);
  for (const Tensor* t : {&mean_in, &rstd_in}) cpu::expect_same_dtype(x_in, *t, op, "statistic");
  check_norm_stats(x_in, mean_in, rstd_in, true, op);
  Tensor g = contiguous(g_in), x = contiguous(x_in);
  Tensor dh = dh_in.defined() ? contiguous(dh_in) : Tensor();
  Tensor w = w_in.defined() ? contiguous(w_in) : Tensor();
  Tensor mean = contiguous(mean_in), rstd = contiguous(rstd_in);
  bool want_dw = a.b("dweight", false), want_db = a.b("dbias", false);
  int64_t C = x.dim() ? x.size(-1) : 1;
  int64_t R = mean.numel();
  int64_t parts = std::max<int64_t>(1, std::min<int64_t>(num_threads(), R));
  Tensor dx = Tensor::empty(x.shape(), x.dtype(), x.device());
  Tensor dw = Tensor::empty({want_dw ? C : 0}, x.dtype(), x.device());
  Tensor db = Tensor::empty({want_db ? C : 0}, x.dtype(), x.device());
  std::vector<double> dw_acc(want_dw ? parts * C : 0, 0.0), db_acc(want_db ? parts * C : 0, 0.0);
  DISPATCH_FLOAT(x.dtype(), op, {
    using T = scalar_t;
    auto run = [&](auto dh_tag) {
      constexpr bool HasDh = decltype(dh_tag)::value;
      auto kernel = w.defined() ? layer_norm_backward_rows<T, true, HasDh>
                                : layer_norm_backward_rows<T, false, HasDh>;
      kernel(g.data<T>(), HasDh ? dh.data<T>() : nullptr, x.data<T>(),
             w.defined() ? w.data<T>() : nullptr, mean.data<T>(), rstd.data<T>(), dx.data<T>(),
             want_dw ? dw_acc.data() : nullptr, want_db ? db_acc.data() : nullptr, R, C);
    };
    if (dh.defined()) run(std::true_type{});
    else run(std::false_type{});
    if (want_dw) combine_parts(dw_acc, parts, C, dw.data<T>());
    if (want_db) combine_parts(db_acc, parts, C, db.data<T>());
  });
  return {dx, dw, db};
}

Tensors layer_norm_backward(const Tensors& in, const Attrs& a) {
  const char* op = "layer_norm_backward";
  LS_CHECK(in.size() == 5 && in[0].defined() && in[1].defined() && in[3].defined() && in[4].defined(),
           ValueError, op, ": expected inputs {g, x, weight or None, mean, rstd}");
  return norm_backward(in[0], Tensor(), in[1], in[2], in[3], in[4], a, op);
}

Tensors add_layer_norm_backward(const Tensors& in, const Attrs& a) {
  const char* op = "add_layer_norm_backward";
  LS_CHECK(in.size() == 6 && in[0].defined() && in[1].defined() && in[2].defined() &&
               in[4].defined() && in[5].defined(),
           ValueError, op, ": expected inputs {dy, dh, h, weight or None, mean, rstd}");
  return norm_backward(in[0], in[1], in[2], in[3], in[4], in[5], a, op);
}

}  // namespace

void check_norm_args(const Tensor& x,
                     std::initializer_list<std::pair<const Tensor*, const char*>> params,
                     double eps, const char* op) {
  LS_CHECK(x.defined(), ValueError, op, ": input is None");
  LS_CHECK(is_floating(x.dtype()), TypeError, op, ": needs a floating-point input, got ",
           dtype_name(x.dtype()));
  LS_CHECK(x.dim() >= 1, ValueError, op, ": input must have at least one dimension, got a 0-d tensor");
  const int64_t C = x.size(-1);
  for (auto [p, name] : params) {
    if (!p->defined()) continue;
    LS_CHECK(p->shape() == Shape{C}, ValueError, op, ": ", name, " of shape ", shape_str(p->shape()),
             " does not match the normalized dimension of input shape ", shape_str(x.shape()),
             " (expected (", C, ",))");
    cpu::expect_same_dtype(x, *p, op, name);
  }
  LS_CHECK(eps >= 0, ValueError, op, ": eps must be >= 0, got ", eps);
}

void check_norm_residual(const Tensor& x, const Tensor& res, const char* op, const char* name) {
  LS_CHECK(res.defined(), ValueError, op, ": ", name, " is None");
  LS_CHECK(res.shape() == x.shape(), ValueError, op, ": ", name, " of shape ", shape_str(res.shape()),
           " does not match the input shape ", shape_str(x.shape()));
  cpu::expect_same_dtype(x, res, op, name);
}

void check_norm_backward_args(const Tensor& x, const Tensor& w, const Tensor& g, const Tensor& dh,
                              const char* op) {
  check_norm_args(x, {{&w, "weight"}}, 0.0, op);
  cpu::expect_same_dtype(x, g, op, "gradient");
  LS_CHECK(g.shape() == x.shape(), ValueError, op, ": gradient of shape ", shape_str(g.shape()),
           " does not match the input shape ", shape_str(x.shape()));
  if (dh.defined()) check_norm_residual(x, dh, op, "residual gradient");
}

void check_norm_stats(const Tensor& x, const Tensor& mean, const Tensor& rstd, bool centered, const char* op) {
  LS_CHECK(rstd.defined() && (!centered || mean.defined()), ValueError, op, ": the statistics (",
           centered ? "mean, rstd" : "rstd", ") must not be None");
  if (!centered) {
    LS_CHECK(is_floating(rstd.dtype()), TypeError, op, ": rstd must be floating-point, got ",
             dtype_name(rstd.dtype()));
    LS_CHECK(rstd.numel() * x.size(-1) == x.numel(), ValueError, op,
             ": rstd of shape ", shape_str(rstd.shape()), " does not match the input shape ", shape_str(x.shape()));
    return;
  }
  for (const Tensor* t : {&mean, &rstd})
    LS_CHECK(is_floating(t->dtype()), TypeError, op, ": statistics must be floating-point, got ",
             dtype_name(t->dtype()));
  LS_CHECK(mean.numel() == rstd.numel() && mean.numel() * x.size(-1) == x.numel(), ValueError, op,
           ": statistics of shapes ", shape_str(mean.shape()), " and ", shape_str(rstd.shape()),
           " do not match the input shape ", shape_str(x.shape()));
}

Tensor layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps) {
  check_norm_args(x, {{&weight, "weight"}, {&bias, "bias"}}, eps, "layer_norm");
  return call("layer_norm", {x, weight, bias}, {{"eps", eps}})[0];
}

LS_REGISTER(layer_norm) {
  const std::vector<DType> kFloat = {DType::Float32, DType::Float64};
  declare_op("layer_norm", {[](const BackwardCtx& c, const Tensors& g) {
                              // weight and bias may have been left out of the call entirely.
                              auto needs = [&](size_t i) { return i < c.needs_grad.size() && c.needs_grad[i]; };
                              Tensor w = cpu::optional_input(c.inputs, 1);
                              Tensors r = call("layer_norm_backward",
                                               {g[0], c.inputs[0], w, c.outputs[1], c.outputs[2]},
                                               {{"dweight", needs(1)}, {"dbias", needs(2)}});
                              return Tensors{needs(0) ? r[0] : Tensor(), needs(1) ? r[1] : Tensor(),
                                             needs(2) ? r[2] : Tensor()};
                            }, true, true});
  declare_op("layer_norm_backward", {});
  // add_layer_norm {x, r, w?, b?} -> {h, y, mean, rstd}: the gradients of h (g[0]) and y (g[1])
  // meet in one kernel; x and r receive the same dx.
  declare_op("add_layer_norm", {[](const BackwardCtx& c, const Tensors& g) {
                                  auto needs = [&](size_t i) { return i < c.needs_grad.size() && c.needs_grad[i]; };
                                  Tensor w = cpu::optional_input(c.inputs, 2);
                                  Tensors r = call("add_layer_norm_backward",
                                                   {g[1], g[0], c.outputs[0], w, c.outputs[2], c.outputs[3]},
                                                   {{"dweight", needs(2)}, {"dbias", needs(3)}});
                                  return Tensors{needs(0) ? r[0] : Tensor(), needs(1) ? r[0] : Tensor(),
                                                 needs(2) ? r[1] : Tensor(), needs(3) ? r[2] : Tensor()};
                                }, true, true});
  declare_op("add_layer_norm_backward", {});
  register_kernel("layer_norm", "cpu", layer_norm_forward, kFloat);
  register_kernel("layer_norm_backward", "cpu", layer_norm_backward, kFloat);
  register_kernel("add_layer_norm", "cpu", add_layer_norm_forward, kFloat);
  register_kernel("add_layer_norm_backward", "cpu", add_layer_norm_backward, kFloat);
}

}  // namespace ls::ops
