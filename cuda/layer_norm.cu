// layer_norm over the last dim on the GPU: forward and backward; float32, float64, bfloat16 and
// float16 (16-bit inputs compute in float32).
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
// Kernels: cuda/norm.cuh, shared with rms_norm (Centered = true here): the forward reads x once
// and writes y; the backward reads g and x once, writes dx and reduces dw and db through
// per-block partials summed in a fixed order (deterministic).
#include "core/registry.h"
#include "ops/kernel_checks.h"
#include "ops/ops.h"
#include "norm.cuh"

namespace ls::cuda {

namespace {

Tensors layer_norm_forward_cuda(const Tensors& in, const Attrs& a) {
  const char* op = "layer_norm";
  cpu::expect_inputs(in, 1, 3, op);
  const double eps = a.f("eps", 1e-5);
  Tensor w = cpu::optional_input(in, 1), b = cpu::optional_input(in, 2);
  norm::check_args(in[0], {{&w, "weight"}, {&b, "bias"}}, eps, op);
  Tensor x = ops::contiguous(in[0]);
  if (w.defined()) w = ops::contiguous(w);
  if (b.defined()) b = ops::contiguous(b);
  const Shape stat_shape(x.shape().begin(), x.shape().end() - 1);
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  Tensor mean = Tensor::empty(stat_shape, rows::acc_dtype(x.dtype()), x.device());
  Tensor rstd = Tensor::empty(stat_shape, rows::acc_dtype(x.dtype()), x.device());
  if (rstd.numel() > 0) norm::forward<true>(y, mean, rstd, x, w, b, eps, op);
  return {y, mean, rstd};
}

Tensors layer_norm_backward_cuda(const Tensors& in, const Attrs& a) {
  const char* op = "layer_norm_backward";
  LS_CHECK(in.size() == 5 && in[0].defined() && in[1].defined() && in[3].defined() && in[4].defined(),
           ValueError, op, ": expected inputs {g, x, weight or None, mean, rstd}");
  norm::check_args(in[1], {{&in[2], "weight"}}, 0.0, op);
  cpu::expect_same_dtype(in[1], in[0], op, "gradient");
  for (int i : {3, 4})
    LS_CHECK(is_floating(in[i].dtype()), TypeError, op, ": statistics must be floating-point, got ",
             dtype_name(in[i].dtype()));
  LS_CHECK(in[3].numel() == in[4].numel() && in[3].numel() * in[1].size(-1) == in[1].numel(),
           ValueError, op, ": statistics of shapes ", shape_str(in[3].shape()), " and ",
           shape_str(in[4].shape()), " do not match the input shape ", shape_str(in[1].shape()));
  LS_CHECK(in[0].shape() == in[1].shape(), ValueError, op, ": gradient of shape ",
           shape_str(in[0].shape()), " does not match the input shape ", shape_str(in[1].shape()));
  Tensor g = ops::contiguous(in[0]), x = ops::contiguous(in[1]);
  Tensor w = in[2].defined() ? ops::contiguous(in[2]) : Tensor();
  const DType sd = rows::acc_dtype(x.dtype());
  Tensor mean = ops::contiguous(in[3].dtype() == sd ? in[3] : ops::to_dtype(in[3], sd));
  Tensor rstd = ops::contiguous(in[4].dtype() == sd ? in[4] : ops::to_dtype(in[4], sd));
  const int64_t C = x.size(-1);
  Tensor dx = Tensor::empty(x.shape(), x.dtype(), x.device());
  Tensor dw = Tensor::empty({a.b("dweight", false) ? C : 0}, x.dtype(), x.device());
  Tensor db = Tensor::empty({a.b("dbias", false) ? C : 0}, x.dtype(), x.device());
  norm::backward<true>(dx, dw, db, g, x, w, mean, rstd, op);
  return {dx, dw, db};
}

}  // namespace

LS_REGISTER(layer_norm_cuda) {
  const std::vector<DType> kFloat = {DType::Float32, DType::Float64, DType::BFloat16, DType::Float16};
  register_kernel("layer_norm", "cuda", layer_norm_forward_cuda, kFloat);
  register_kernel("layer_norm_backward", "cuda", layer_norm_backward_cuda, kFloat);
}

}  // namespace ls::cuda
