// rms_norm over the last dim (LLaMA) on the GPU, and its variant fused with the residual add
// before it (add_rms_norm): forward and backward; float32, float64, bfloat16 and float16 (16-bit
// inputs compute in float32).
//
//   rstd = 1 / sqrt(sum_c x[c]^2 / C + eps)      y = x * rstd * w
//   backward, per row, with dxhat = g * w:
//     dx = rstd dxhat - x rstd^3 mean_c(dxhat x)       dw = sum_rows g x rstd
//
// Shapes: x (..., C) viewed as (R, C); w (C,) or None; rstd (...) = x.shape[:-1].
// Registry ops as cpp/ops/rms_norm.cpp: "rms_norm" {x, w?} attr eps -> {y, rstd};
// "rms_norm_backward" {g, x, w?, rstd} attr dweight -> {dx, dw} (dw of shape (0,) when not asked
// for). As in layer_norm.cu, rstd is float32 for 16-bit inputs and the backward accepts either.
//
// add_rms_norm: h = x + r, y = rms_norm(h); backward dx = dr = dh + rms_norm_backward(dy).
// "add_rms_norm" {x, r, w?} attr eps -> {h, y, rstd}; "add_rms_norm_backward"
// {dy, dh, h, w?, rstd} attr dweight -> {dx, dw}.
//
// Kernels: cuda/norm.cuh, shared with layer_norm (Centered = false here: mean 0, no bias): the
// forward reads x once and writes y (fused: reads x and r once, writes h, rounded to the input
// dtype as a separate add would, and y); the backward reads g and x once, writes dx (fused: dh +
// the norm's gradient, rounded once) and reduces dw through per-block partials summed in a fixed
// order (deterministic).
#include "core/registry.h"
#include "ops/kernel_checks.h"
#include "ops/op_args.h"
#include "ops/ops.h"
#include "norm.cuh"

namespace ls::cuda {

namespace {

// rms_norm (res undefined) -> {y, rstd}, or add_rms_norm -> {h, y, rstd}; the arguments checked
// by the caller.
Tensors norm_forward(const Tensor& x_in, const Tensor& res_in, Tensor w, double eps, const char* op) {
  const bool add = res_in.defined();
  Tensor x = ops::contiguous(x_in);
  Tensor res = add ? ops::contiguous(res_in) : Tensor();
  if (w.defined()) w = ops::contiguous(w);
  const Shape stat_shape(x.shape().begin(), x.shape().end() - 1);
  Tensor h = add ? Tensor::empty(x.shape(), x.dtype(), x.device()) : Tensor();
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  Tensor rstd = Tensor::empty(stat_shape, rows::acc_dtype(x.dtype()), x.device());
  Tensor no_mean, no_bias;
  if (rstd.numel() > 0) norm::forward<false>(y, h, no_mean, rstd, x, res, w, no_bias, eps, op);
  return add ? Tensors{h, y, rstd} : Tensors{y, rstd};
}

Tensors rms_norm_forward_cuda(const Tensors& in, const Attrs& a) {
  const char* op = "rms_norm";
  cpu::expect_inputs(in, 1, 2, op);
  const double eps = a.f("eps", 1e-6);
  Tensor w = cpu::optional_input(in, 1);
  ops::check_norm_args(in[0], {{&w, "weight"}}, eps, op);
  return norm_forward(in[0], Tensor(), w, eps, op);
}

Tensors add_rms_norm_forward_cuda(const Tensors& in, const Attrs& a) {
  const char* op = "add_rms_norm";
  cpu::expect_inputs(in, 2, 3, op);
  const double eps = a.f("eps", 1e-6);
  Tensor w = cpu::optional_input(in, 2);
  ops::check_norm_args(in[0], {{&w, "weight"}}, eps, op);
  ops::check_norm_residual(in[0], in[1], op, "residual");
  return norm_forward(in[0], in[1], w, eps, op);
}

// rms_norm_backward (dh_in undefined) or add_rms_norm_backward: checks the shared inputs
// {g, x, weight or None, rstd} (x is h for the fused op) and runs the kernels.
Tensors norm_backward(const Tensor& g_in, const Tensor& dh_in, const Tensor& x_in, const Tensor& w_in,
                      const Tensor& rstd_in, const Attrs& a, const char* op) {
  ops::check_norm_backward_args(x_in, w_in, g_in, dh_in, op);
  ops::check_norm_stats(x_in, Tensor(), rstd_in, false, op);
  Tensor g = ops::contiguous(g_in), x = ops::contiguous(x_in);
  Tensor dh = dh_in.defined() ? ops::contiguous(dh_in) : Tensor();
  Tensor w = w_in.defined() ? ops::contiguous(w_in) : Tensor();
  const DType sd = rows::acc_dtype(x.dtype());
  Tensor rstd = ops::contiguous(rstd_in.dtype() == sd ? rstd_in : ops::to_dtype(rstd_in, sd));
  const int64_t C = x.size(-1);
  Tensor dx = Tensor::empty(x.shape(), x.dtype(), x.device());
  Tensor dw = Tensor::empty({a.b("dweight", false) ? C : 0}, x.dtype(), x.device());
  Tensor no_mean, no_db;
  norm::backward<false>(dx, dw, no_db, g, dh, x, w, no_mean, rstd, op);
  return {dx, dw};
}

Tensors rms_norm_backward_cuda(const Tensors& in, const Attrs& a) {
  const char* op = "rms_norm_backward";
  LS_CHECK(in.size() == 4 && in[0].defined() && in[1].defined() && in[3].defined(), ValueError, op,
           ": expected inputs {g, x, weight or None, rstd}");
  return norm_backward(in[0], Tensor(), in[1], in[2], in[3], a, op);
}

Tensors add_rms_norm_backward_cuda(const Tensors& in, const Attrs& a) {
  const char* op = "add_rms_norm_backward";
  LS_CHECK(in.size() == 5 && in[0].defined() && in[1].defined() && in[2].defined() && in[4].defined(),
           ValueError, op, ": expected inputs {dy, dh, h, weight or None, rstd}");
  return norm_backward(in[0], in[1], in[2], in[3], in[4], a, op);
}

}  // namespace

LS_REGISTER(rms_norm_cuda) {
  const std::vector<DType> kFloat = {DType::Float32, DType::Float64, DType::BFloat16, DType::Float16};
  register_kernel("rms_norm", "cuda", rms_norm_forward_cuda, kFloat);
  register_kernel("rms_norm_backward", "cuda", rms_norm_backward_cuda, kFloat);
  register_kernel("add_rms_norm", "cuda", add_rms_norm_forward_cuda, kFloat);
  register_kernel("add_rms_norm_backward", "cuda", add_rms_norm_backward_cuda, kFloat);
}

}  // namespace ls::cuda
