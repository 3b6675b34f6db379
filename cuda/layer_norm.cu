// layer_norm over the last dim on the GPU, and its variant fused with the residual add before it
// (add_layer_norm): forward and backward; float32, float64, bfloat16 and float16 (16-bit inputs
// compute in float32).
//
//   mean = sum_c x[c] / C      rstd = 1 / sqrt(sum_c (x[c] - mean)^2 / C + eps)   (biased var)
//   xhat = (x - mean) rstd     y = xhat * w + b
//   backward, per row, with dxhat = g * w:
//     dx = rstd (dxhat - mean_c(dxhat) - xhat mean_c(dxhat xhat))
//     dw = sum_rows g xhat       db = sum_rows g
//
// Shapes: x (..., C) viewed as (R, C); w, b (C,) or None; mean, rstd (...) = x.shape[:-1].
// Registry ops as cpp/ops/layer_norm.cpp: "layer_norm" {x, w?, b?} attr eps -> {y, mean, rstd};
// "layer_norm_backward" {g, x, w?, mean, rstd} attrs dweight, dbias -> {dx, dw, db} (a parameter
// gradient not asked for has shape (0,)). One difference: mean and rstd are float32 for 16-bit
// inputs (float64 for float64), so the backward starts from exact statistics; the backward
// accepts statistics of either dtype.
//
// add_layer_norm: h = x + r, y = layer_norm(h); backward dx = dr = dh + layer_norm_backward(dy).
// "add_layer_norm" {x, r, w?, b?} attr eps -> {h, y, mean, rstd}; "add_layer_norm_backward"
// {dy, dh, h, w?, mean, rstd} attrs dweight, dbias -> {dx, dw, db}.
//
// Kernels: cuda/norm.cuh, shared with rms_norm (Centered = true here): the forward reads x once
// and writes y (fused: reads x and r once, writes h, rounded to the input dtype as a separate add
// would, and y); the backward reads g and x once, writes dx (fused: dh + the norm's gradient,
// rounded once) and reduces dw and db through per-block partials summed in a fixed order
// (deterministic).
#include "core/registry.h"
#include "ops/kernel_checks.h"
#include "ops/op_args.h"
#include "ops/ops.h"
#include "norm.cuh"

namespace ls::cuda {

namespace {

// layer_norm (res undefined) -> {y, mean, rstd}, or add_layer_norm -> {h, y, mean, rstd}; the
// arguments checked by the caller.
Tensors norm_forward(const Tensor& x_in, const Tensor& res_in, Tensor w, Tensor b, double eps,
                     const char* op) {
  const bool add = res_in.defined();
  Tensor x = ops::contiguous(x_in);
  Tensor res = add ? ops::contiguous(res_in) : Tensor();
  if (w.defined()) w = ops::contiguous(w);
  if (b.defined()) b = ops::contiguous(b);
  const Shape stat_shape(x.shape().begin(), x.shape().end() - 1);
  Tensor h = add ? Tensor::empty(x.shape(), x.dtype(), x.device()) : Tensor();
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  Tensor mean = Tensor::empty(stat_shape, rows::acc_dtype(x.dtype()), x.device());
  Tensor rstd = Tensor::empty(stat_shape, rows::acc_dtype(x.dtype()), x.device());
  if (rstd.numel() > 0) norm::forward<true>(y, h, mean, rstd, x, res, w, b, eps, op);
  return add ? Tensors{h, y, mean, rstd} : Tensors{y, mean, rstd};
}

Tensors layer_norm_forward_cuda(const Tensors& in, const Attrs& a) {
  const char* op = "layer_norm";
  cpu::expect_inputs(in, 1, 3, op);
  const double eps = a.f("eps", 1e-5);
  Tensor w = cpu::optional_input(in, 1), b = cpu::optional_input(in, 2);
  ops::check_norm_args(in[0], {{&w, "weight"}, {&b, "bias"}}, eps, op);
  return norm_forward(in[0], Tensor(), w, b, eps, op);
}

Tensors add_layer_norm_forward_cuda(const Tensors& in, const Attrs& a) {
  const char* op = "add_layer_norm";
  cpu::expect_inputs(in, 2, 4, op);
  const double eps = a.f("eps", 1e-5);
  Tensor w = cpu::optional_input(in, 2), b = cpu::optional_input(in, 3);
  ops::check_norm_args(in[0], {{&w, "weight"}, {&b, "bias"}}, eps, op);
  ops::check_norm_residual(in[0], in[1], op, "residual");
  return norm_forward(in[0], in[1], w, b, eps, op);
}

// layer_norm_backward (dh_in undefined) or add_layer_norm_backward: checks the shared inputs
// {g, x, weight or None, mean, rstd} (x is h for the fused op) and runs the kernels.
Tensors norm_backward(const Tensor& g_in, const Tensor& dh_in, const Tensor& x_in, const Tensor& w_in,
                 const Tensor& mean_in, const Tensor& rstd_in, const Attrs& a, const char* op) {
  ops::check_norm_backward_args(x_in, w_in, g_in, dh_in, op);
  ops::check_norm_stats(x_in, mean_in, rstd_in, true, op);
  Tensor g = ops::contiguous(g_in), x = ops::contiguous(x_in);
  Tensor dh = dh_in.defined() ? ops::contiguous(dh_in) : Tensor();
  Tensor w = w_in.defined() ? ops::contiguous(w_in) : Tensor();
  const DType sd = rows::acc_dtype(x.dtype());
  Tensor mean = ops::contiguous(mean_in.dtype() == sd ? mean_in : ops::to_dtype(mean_in, sd));
  Tensor rstd = ops::contiguous(rstd_in.dtype() == sd ? rstd_in : ops::to_dtype(rstd_in, sd));
  const int64_t C = x.size(-1);
  Tensor dx = Tensor::empty(x.shape(), x.dtype(), x.device());
  Tensor dw = Tensor::empty({a.b("dweight", false) ? C : 0}, x.dtype(), x.device());
  Tensor db = Tensor::empty({a.b("dbias", false) ? C : 0}, x.dtype(), x.device());
  norm::backward<true>(dx, dw, db, g, dh, x, w, mean, rstd, op);
  return {dx, dw, db};
}

Tensors layer_norm_backward_cuda(const Tensors& in, const Attrs& a) {
  const char* op = "layer_norm_backward";
  LS_CHECK(in.size() == 5 && in[0].defined() && in[1].defined() && in[3].defined() && in[4].defined(),
           ValueError, op, ": expected inputs {g, x, weight or None, mean, rstd}");
  return norm_backward(in[0], Tensor(), in[1], in[2], in[3], in[4], a, op);
}

Tensors add_layer_norm_backward_cuda(const Tensors& in, const Attrs& a) {
  const char* op = "add_layer_norm_backward";
  LS_CHECK(in.size() == 6 && in[0].defined() && in[1].defined() && in[2].defined() &&
               in[4].defined() && in[5].defined(),
           ValueError, op, ": expected inputs {dy, dh, h, weight or None, mean, rstd}");
  return norm_backward(in[0], in[1], in[2], in[3], in[4], in[5], a, op);
}

}  // namespace

LS_REGISTER(layer_norm_cuda) {
  const std::vector<DType> kFloat = {DType::Float32, DType::Float64, DType::BFloat16, DType::Float16};
  register_kernel("layer_norm", "cuda", layer_norm_forward_cuda, kFloat);
  register_kernel("layer_norm_backward", "cuda", layer_norm_backward_cuda, kFloat);
  register_kernel("add_layer_norm", "cuda", add_layer_norm_forward_cuda, kFloat);
  register_kernel("add_layer_norm_backward", "cuda", add_layer_norm_backward_cuda, kFloat);
}

}  // namespace ls::cuda
