// rms_norm over the last dim (LLaMA) on the GPU: forward and backward; float32, float64,
// bfloat16 and float16 (16-bit inputs compute in float32).
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
// Kernels: cuda/norm.cuh, shared with layer_norm (Centered = false here: mean 0, no bias): the
// forward reads x once and writes y; the backward reads g and x once, writes dx and reduces dw
// through per-block partials summed in a fixed order (deterministic).
#include "core/registry.h"
#include "ops/kernel_checks.h"
#include "ops/ops.h"
#include "norm.cuh"

namespace ls::cuda {

namespace {

Tensors rms_norm_forward_cuda(const Tensors& in, const Attrs& a) {
  const char* op = "rms_norm";
  cpu::expect_inputs(in, 1, 2, op);
  const double eps = a.f("eps", 1e-6);
  Tensor w = cpu::optional_input(in, 1);
  norm::check_args(in[0], {{&w, "weight"}}, eps, op);
  Tensor x = ops::contiguous(in[0]);
  if (w.defined()) w = ops::contiguous(w);
  const Shape stat_shape(x.shape().begin(), x.shape().end() - 1);
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  Tensor rstd = Tensor::empty(stat_shape, rows::acc_dtype(x.dtype()), x.device());
  Tensor no_mean, no_bias;
  if (rstd.numel() > 0) norm::forward<false>(y, no_mean, rstd, x, w, no_bias, eps, op);
  return {y, rstd};
}

Tensors rms_norm_backward_cuda(const Tensors& in, const Attrs& a) {
  const char* op = "rms_norm_backward";
  LS_CHECK(in.size() == 4 && in[0].defined() && in[1].defined() && in[3].defined(), ValueError, op,
           ": expected inputs {g, x, weight or None, rstd}");
  norm::check_args(in[1], {{&in[2], "weight"}}, 0.0, op);
  cpu::expect_same_dtype(in[1], in[0], op, "gradient");
  LS_CHECK(is_floating(in[3].dtype()), TypeError, op, ": rstd must be floating-point, got ",
           dtype_name(in[3].dtype()));
  LS_CHECK(in[3].numel() * in[1].size(-1) == in[1].numel(), ValueError, op, ": rstd of shape ",
           shape_str(in[3].shape()), " does not match the input shape ", shape_str(in[1].shape()));
  LS_CHECK(in[0].shape() == in[1].shape(), ValueError, op, ": gradient of shape ",
           shape_str(in[0].shape()), " does not match the input shape ", shape_str(in[1].shape()));
  Tensor g = ops::contiguous(in[0]), x = ops::contiguous(in[1]);
  Tensor w = in[2].defined() ? ops::contiguous(in[2]) : Tensor();
  const DType sd = rows::acc_dtype(x.dtype());
  Tensor rstd = ops::contiguous(in[3].dtype() == sd ? in[3] : ops::to_dtype(in[3], sd));
  const int64_t C = x.size(-1);
  Tensor dx = Tensor::empty(x.shape(), x.dtype(), x.device());
  Tensor dw = Tensor::empty({a.b("dweight", false) ? C : 0}, x.dtype(), x.device());
  Tensor no_mean, no_db;
  norm::backward<false>(dx, dw, no_db, g, x, w, no_mean, rstd, op);
  return {dx, dw};
}

}  // namespace

LS_REGISTER(rms_norm_cuda) {
  const std::vector<DType> kFloat = {DType::Float32, DType::Float64, DType::BFloat16, DType::Float16};
  register_kernel("rms_norm", "cuda", rms_norm_forward_cuda, kFloat);
  register_kernel("rms_norm_backward", "cuda", rms_norm_backward_cuda, kFloat);
}

}  // namespace ls::cuda
