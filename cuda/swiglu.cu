// swiglu, the gated MLP activation of LLaMA, on the GPU: forward and backward, float32, float64,
// bfloat16, float16 (16-bit compute in float32); the math of the CPU reference cpp/ops/swiglu.cpp:
//
//   y = silu(a) * b = a sigmoid(a) b
//   da = g b s (1 + a (1 - s)),  db = g a s,   s = sigmoid(a)
//
// Shapes: a and b of one shape ((B, T, H) in an MLP), any shape works. Registry ops:
// "swiglu" {a, b} -> {y}; "swiglu_backward" {g, a, b} attrs da, db (bools: which to compute)
// -> {da, db}, one not asked for has shape (0,). The backward reads g, a, b once and writes both
// gradients in the same pass (16-byte packs, vec_map.cuh); memory-bound.
// a and b are usually the two halves of one (..., 2 H) projection, views whose rows are 2 H
// apart: they are read in place (map_rows), and the backward then writes da and db as the same
// halves of one buffer, which the split's backward takes whole (concat.cpp) instead of
// concatenating them; contiguous operands take the flat map, others are copied first.
#include <array>

#include "core/registry.h"
#include "ops/kernel_checks.h"
#include "ops/op_args.h"
#include "ops/ops.h"
#include "vec_map.cuh"

namespace ls::cuda {

namespace {

// sigmoid: vec_map.cuh's, shared with silu and gelu.

struct SwigluForward {  // in = {a, b}
  template <typename A> __device__ void operator()(const A (&in)[2], A (&y)[1]) const {
    y[0] = in[0] * sigmoid(in[0]) * in[1];
  }
};

struct SwigluBackwardBoth {  // in = {g, a, b} -> {da, db}
  template <typename A> __device__ void operator()(const A (&in)[3], A (&y)[2]) const {
    const A g = in[0], a = in[1], b = in[2], s = sigmoid(a);
    y[0] = g * b * s * (A(1) + a * (A(1) - s));
    y[1] = g * a * s;
  }
};

struct SwigluBackwardA {  // in = {g, a, b} -> {da}
  template <typename A> __device__ void operator()(const A (&in)[3], A (&y)[1]) const {
    const A s = sigmoid(in[1]);
    y[0] = in[0] * in[2] * s * (A(1) + in[1] * (A(1) - s));
  }
};

struct SwigluBackwardB {  // in = {g, a} -> {db}
  template <typename A> __device__ void operator()(const A (&in)[2], A (&y)[1]) const {
    y[0] = in[0] * in[1] * sigmoid(in[1]);
  }
};


// The row count of xs (all of one shape) with each one's row stride in ld; -1 when some x has
// no row layout.
template <size_t N>
int64_t rows_of(const std::array<const Tensor*, N>& xs, std::array<int64_t, N>& ld) {
  int64_t R = -1;
  for (size_t k = 0; k < N; ++k) {
    int64_t r;
    if (!ops::contiguous_rows(*xs[k], r, ld[k])) return -1;
    R = r;
  }
  return R;
}

Tensors swiglu_forward(const Tensors& in, const Attrs&) {
  cpu::expect_inputs(in, 2, 2, "swiglu");
  ops::check_swiglu_args(in[0], in[1]);
  Tensor y = Tensor::empty(in[0].shape(), in[0].dtype(), in[0].device());
  set_device(in[0], "swiglu");
  std::array<int64_t, 2> ld{};
  const int64_t R = in[0].is_contiguous() && in[1].is_contiguous() ? -1 : rows_of<2>({&in[0], &in[1]}, ld);
  const Tensor a = R >= 0 ? in[0] : ops::contiguous(in[0]), b = R >= 0 ? in[1] : ops::contiguous(in[1]);
  CUDA_DISPATCH_FLOAT(a.dtype(), "swiglu", {
    using T = scalar_t;
    const MapArgs<T, 2, 1> args{{cptr<T>(a), cptr<T>(b)}, {mptr<T>(y)}};
    if (R >= 0) {
      const int64_t C = a.size(-1);
      launch_map_rows(SwigluForward{}, args, RowStrides<2, 1>{{ld[0], ld[1]}, {C}}, R, C, "swiglu");
    } else {
      launch_map(SwigluForward{}, args, a.numel(), "swiglu");
    }
  });
  return {y};
}

// {da, db} for a and b that are the two adjacent halves of one tensor's last dim (same storage
// and strides, b starting C elements after a): the same halves of one buffer; else contiguous.
Tensors gradient_halves(const Tensor& a, const Tensor& b) {
  const int64_t C = a.dim() ? a.size(-1) : 1;
  Shape whole = a.shape();  // the tensor of both halves
  if (a.dim()) whole.back() = 2 * C;
  const bool halves = a.dim() >= 2 && a.strides().back() == 1 && a.strides()[a.dim() - 2] == 2 * C &&
                      ops::tiled_view({a, b}, whole, a.dim() - 1).defined();
  if (!halves) {
    return {Tensor::empty(a.shape(), a.dtype(), a.device()), Tensor::empty(a.shape(), a.dtype(), a.device())};
  }
  const Tensor buf = Tensor::empty(whole, a.dtype(), a.device());
  return {ops::slice(buf, -1, 0, C), ops::slice(buf, -1, C, 2 * C)};
}

// Both gradients in one pass: row-strided where every operand has rows (the halves of a fused
// projection), else over contiguous operands (copies where needed).
Tensors backward_both(const Tensor& g0, const Tensor& a0, const Tensor& b0) {
  Tensors d = gradient_halves(a0, b0);
  std::array<int64_t, 5> ld{};
  const bool contiguous = g0.is_contiguous() && a0.is_contiguous() && b0.is_contiguous() && d[0].is_contiguous();
  const int64_t R = contiguous ? -1 : rows_of<5>({&g0, &a0, &b0, &d[0], &d[1]}, ld);
  const Tensor g = R >= 0 ? g0 : ops::contiguous(g0), a = R >= 0 ? a0 : ops::contiguous(a0),
               b = R >= 0 ? b0 : ops::contiguous(b0);
  if (R < 0 && !d[0].is_contiguous())
    d = {Tensor::empty(a.shape(), a.dtype(), a.device()), Tensor::empty(a.shape(), a.dtype(), a.device())};
  CUDA_DISPATCH_FLOAT(a.dtype(), "swiglu_backward", {
    using T = scalar_t;
    const MapArgs<T, 3, 2> args{{cptr<T>(g), cptr<T>(a), cptr<T>(b)}, {mptr<T>(d[0]), mptr<T>(d[1])}};
    if (R >= 0) {
      const int64_t C = a.size(-1);
      launch_map_rows(SwigluBackwardBoth{}, args, RowStrides<3, 2>{{ld[0], ld[1], ld[2]}, {ld[3], ld[4]}}, R, C,
                      "swiglu_backward");
    } else {
      launch_map(SwigluBackwardBoth{}, args, a.numel(), "swiglu_backward");
    }
  });
  return d;
}

Tensors swiglu_backward(const Tensors& in, const Attrs& attrs) {
  ops::check_swiglu_backward_args(in);
  const bool want_da = attrs.b("da", true), want_db = attrs.b("db", true);
  set_device(in[1], "swiglu_backward");
  if (want_da && want_db) return backward_both(in[0], in[1], in[2]);
  Tensor g = ops::contiguous(in[0]), a = ops::contiguous(in[1]), b = ops::contiguous(in[2]);
  Tensor da = Tensor::empty(want_da ? a.shape() : Shape{0}, a.dtype(), a.device());
  Tensor db = Tensor::empty(want_db ? a.shape() : Shape{0}, a.dtype(), a.device());
  const int64_t n = a.numel();
  CUDA_DISPATCH_FLOAT(a.dtype(), "swiglu_backward", {
    using T = scalar_t;
    if (want_da)
      launch_map(SwigluBackwardA{}, MapArgs<T, 3, 1>{{cptr<T>(g), cptr<T>(a), cptr<T>(b)}, {mptr<T>(da)}},
                 n, "swiglu_backward");
    else if (want_db)
      launch_map(SwigluBackwardB{}, MapArgs<T, 2, 1>{{cptr<T>(g), cptr<T>(a)}, {mptr<T>(db)}}, n,
                 "swiglu_backward");
  });
  return {da, db};
}

}  // namespace

LS_REGISTER(swiglu_cuda) {
  const std::vector<DType> kFloat = {DType::Float32, DType::Float64, DType::BFloat16, DType::Float16};
  register_kernel("swiglu", "cuda", swiglu_forward, kFloat);
  register_kernel("swiglu_backward", "cuda", swiglu_backward, kFloat);
}

}  // namespace ls::cuda
