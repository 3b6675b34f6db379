// layer_norm over the last dim: forward and backward, float32 and float64.
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
#include <cmath>

#include "cpu_loops.h"
#include "cpu_math.h"
#include "kernel_checks.h"
#include "ops.h"

namespace ls::ops {

namespace {

constexpr int64_t kFlushRows = 32;

template <typename T, bool HasW, bool HasB>
void layer_norm_rows(const T* x, const T* w, const T* b, T* y, T* mean, T* rstd, int64_t R,
                     int64_t C, double eps) {
  cpu::parallel_rows(R, C, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* xr = x + r * C;  // xr, yr point at row r
      T* yr = y + r * C;
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

// Validation shared by the typed wrapper and the kernel (which call() can reach directly).
void check_args(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps) {
  LS_CHECK(x.defined(), ValueError, "layer_norm: input is None");
  LS_CHECK(is_floating(x.dtype()), TypeError, "layer_norm: needs a floating-point input, got ",
           dtype_name(x.dtype()));
  LS_CHECK(x.dim() >= 1, ValueError, "layer_norm: input must have at least one dimension, got a 0-d tensor");
  int64_t C = x.size(-1);
  for (auto [p, name] : {std::pair{&weight, "weight"}, std::pair{&bias, "bias"}}) {
    if (!p->defined()) continue;
    LS_CHECK(p->shape() == Shape{C}, ValueError, "layer_norm: ", name, " of shape ",
             shape_str(p->shape()), " does not match the normalized dimension of input shape ",
             shape_str(x.shape()), " (expected (", C, ",))");
    cpu::expect_same_dtype(x, *p, "layer_norm", name);
  }
  LS_CHECK(eps >= 0, ValueError, "layer_norm: eps must be >= 0, got ", eps);
}

Tensors layer_norm_forward(const Tensors& in, const Attrs& a) {
  cpu::expect_inputs(in, 1, 3, "layer_norm");
  double eps = a.f("eps", 1e-5);
  check_args(in[0], cpu::optional_input(in, 1), cpu::optional_input(in, 2), eps);
  Tensor x = contiguous(in[0]);
  Tensor w = cpu::optional_input(in, 1), b = cpu::optional_input(in, 2);
  if (w.defined()) w = contiguous(w);
  if (b.defined()) b = contiguous(b);
  int64_t C = x.dim() ? x.size(-1) : 1;
  int64_t R = C ? x.numel() / C : shape_numel(Shape(x.shape().begin(), x.shape().end() - 1));
  Shape stat_shape = x.dim() ? Shape(x.shape().begin(), x.shape().end() - 1) : Shape{};
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  Tensor mean = Tensor::empty(stat_shape, x.dtype(), x.device());
  Tensor rstd = Tensor::empty(stat_shape, x.dtype(), x.device());
  DISPATCH_FLOAT(x.dtype(), "layer_norm", {
    using T = scalar_t;
    const T* pw = w.defined() ? w.data<T>() : nullptr;
    const T* pb = b.defined() ? b.data<T>() : nullptr;
    auto run = [&](auto kernel) {
      kernel(x.data<T>(), pw, pb, y.data<T>(), mean.data<T>(), rstd.data<T>(), R, C, eps);
    };
    if (pw && pb) run(layer_norm_rows<T, true, true>);
    else if (pw) run(layer_norm_rows<T, true, false>);
    else if (pb) run(layer_norm_rows<T, false, true>);
    else run(layer_norm_rows<T, false, false>);
  });
  return {y, mean, rstd};
}

template <typename T, bool HasW>
void layer_norm_backward_rows(const T* g, const T* x, const T* w, const T* mean, const T* rstd,
                              T* dx, double* dw_acc, double* db_acc, int64_t R, int64_t C) {
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
        const T* gr = g + r * C;  // gr, xr, dxr point at row r
        const T* xr = x + r * C;
        T* dxr = dx + r * C;
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
          dxr[c] = rs * (gw - mean_dxhat - xhat * mean_dxhat_xhat);
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

Tensors layer_norm_backward(const Tensors& in, const Attrs& a) {
  const char* op = "layer_norm_backward";
  LS_CHECK(in.size() == 5 && in[0].defined() && in[1].defined() && in[3].defined() && in[4].defined(),
           ValueError, op, ": expected inputs {g, x, weight or None, mean, rstd}");
  check_args(in[1], in[2], Tensor(), 0.0);
  for (int i : {0, 3, 4}) cpu::expect_same_dtype(in[1], in[i], op, i == 0 ? "gradient" : "statistic");
  LS_CHECK(in[3].numel() == in[4].numel() && in[3].numel() * in[1].size(-1) == in[1].numel(),
           ValueError, op, ": statistics of shapes ", shape_str(in[3].shape()), " and ",
           shape_str(in[4].shape()), " do not match the input shape ", shape_str(in[1].shape()));
  Tensor g = contiguous(in[0]), x = contiguous(in[1]);
  Tensor w = in[2].defined() ? contiguous(in[2]) : Tensor();
  Tensor mean = contiguous(in[3]), rstd = contiguous(in[4]);
  LS_CHECK(g.shape() == x.shape(), ValueError, "layer_norm_backward: gradient of shape ",
           shape_str(g.shape()), " does not match the input shape ", shape_str(x.shape()));
  bool want_dw = a.b("dweight", false), want_db = a.b("dbias", false);
  int64_t C = x.dim() ? x.size(-1) : 1;
  int64_t R = mean.numel();
  int64_t parts = std::max<int64_t>(1, std::min<int64_t>(num_threads(), R));
  Tensor dx = Tensor::empty(x.shape(), x.dtype(), x.device());
  Tensor dw = Tensor::empty({want_dw ? C : 0}, x.dtype(), x.device());
  Tensor db = Tensor::empty({want_db ? C : 0}, x.dtype(), x.device());
  std::vector<double> dw_acc(want_dw ? parts * C : 0, 0.0), db_acc(want_db ? parts * C : 0, 0.0);
  DISPATCH_FLOAT(x.dtype(), "layer_norm_backward", {
    using T = scalar_t;
    auto kernel = w.defined() ? layer_norm_backward_rows<T, true> : layer_norm_backward_rows<T, false>;
    kernel(g.data<T>(), x.data<T>(), w.defined() ? w.data<T>() : nullptr, mean.data<T>(),
           rstd.data<T>(), dx.data<T>(), want_dw ? dw_acc.data() : nullptr,
           want_db ? db_acc.data() : nullptr, R, C);
    if (want_dw) combine_parts(dw_acc, parts, C, dw.data<T>());
    if (want_db) combine_parts(db_acc, parts, C, db.data<T>());
  });
  return {dx, dw, db};
}

}  // namespace

Tensor layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps) {
  check_args(x, weight, bias, eps);
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
  register_kernel("layer_norm", "cpu", layer_norm_forward, kFloat);
  register_kernel("layer_norm_backward", "cpu", layer_norm_backward, kFloat);
}

}  // namespace ls::ops
