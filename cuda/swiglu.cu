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


Tensors swiglu_forward(const Tensors& in, const Attrs&) {
  cpu::expect_inputs(in, 2, 2, "swiglu");
  ops::check_swiglu_args(in[0], in[1]);
  Tensor a = ops::contiguous(in[0]), b = ops::contiguous(in[1]);
  Tensor y = Tensor::empty(a.shape(), a.dtype(), a.device());
  set_device(a, "swiglu");
  CUDA_DISPATCH_FLOAT(a.dtype(), "swiglu", {
    using T = scalar_t;
    launch_map(SwigluForward{}, MapArgs<T, 2, 1>{{cptr<T>(a), cptr<T>(b)}, {mptr<T>(y)}},
               a.numel(), "swiglu");
  });
  return {y};
}

Tensors swiglu_backward(const Tensors& in, const Attrs& attrs) {
  cpu::expect_inputs(in, 3, 3, "swiglu_backward");
  ops::check_swiglu_args(in[1], in[2]);
  cpu::expect_same_dtype(in[1], in[0], "swiglu_backward", "gradient");
  LS_CHECK(in[0].shape() == in[1].shape(), ValueError, "swiglu_backward: shapes of g ",
           shape_str(in[0].shape()), ", a ", shape_str(in[1].shape()), " and b ",
           shape_str(in[2].shape()), " differ");
  Tensor g = ops::contiguous(in[0]), a = ops::contiguous(in[1]), b = ops::contiguous(in[2]);
  const bool want_da = attrs.b("da", true), want_db = attrs.b("db", true);
  Tensor da = Tensor::empty(want_da ? a.shape() : Shape{0}, a.dtype(), a.device());
  Tensor db = Tensor::empty(want_db ? a.shape() : Shape{0}, a.dtype(), a.device());
  set_device(a, "swiglu_backward");
  const int64_t n = a.numel();
  CUDA_DISPATCH_FLOAT(a.dtype(), "swiglu_backward", {
    using T = scalar_t;
    if (want_da && want_db)
      launch_map(SwigluBackwardBoth{},
                 MapArgs<T, 3, 2>{{cptr<T>(g), cptr<T>(a), cptr<T>(b)}, {mptr<T>(da), mptr<T>(db)}}, n,
                 "swiglu_backward");
    else if (want_da)
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
