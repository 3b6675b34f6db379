// silu (swish) on the GPU: forward and backward, float32, float64, bfloat16, float16 (16-bit
// compute in float32), the same math as the CPU reference cpp/ops/silu.cpp:
//
//   y = x sigmoid(x)        dy/dx = s (1 + x (1 - s)),  s = sigmoid(x) = 1 / (1 + exp(-x))
//
// Shapes: any; inputs are made contiguous and mapped elementwise with 16-byte packs
// (vec_map.cuh). Registry ops: "silu" {x} -> {y}; "silu_backward" {g, x} -> {dx}.
// sigmoid is vec_map.cuh's (exp2f and the approximate reciprocal in float: the accurate expf and
// division made 16-bit silu compute-bound); for x < -87.3 (float) it returns exactly 0.
#include "core/registry.h"
#include "ops/kernel_checks.h"
#include "ops/ops.h"
#include "vec_map.cuh"

namespace ls::cuda {

namespace {

struct SiluForward {
  template <typename A> __device__ void operator()(const A (&x)[1], A (&y)[1]) const {
    y[0] = x[0] * sigmoid(x[0]);
  }
};

struct SiluBackward {  // in = {g, x}
  template <typename A> __device__ void operator()(const A (&in)[2], A (&y)[1]) const {
    const A s = sigmoid(in[1]);
    y[0] = in[0] * s * (A(1) + in[1] * (A(1) - s));
  }
};

Tensors silu_forward(const Tensors& in, const Attrs&) {
  cpu::expect_inputs(in, 1, 1, "silu");
  Tensor x = ops::contiguous(in[0]);
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  set_device(x, "silu");
  CUDA_DISPATCH_FLOAT(x.dtype(), "silu", {
    launch_map(SiluForward{}, MapArgs<scalar_t, 1, 1>{{cptr<scalar_t>(x)}, {mptr<scalar_t>(y)}},
               x.numel(), "silu");
  });
  return {y};
}

Tensors silu_backward(const Tensors& in, const Attrs&) {
  cpu::check_pointwise_backward_args(in, "silu_backward");
  Tensor g = ops::contiguous(in[0]), x = ops::contiguous(in[1]);
  Tensor dx = Tensor::empty(x.shape(), x.dtype(), x.device());
  set_device(x, "silu_backward");
  CUDA_DISPATCH_FLOAT(x.dtype(), "silu_backward", {
    launch_map(SiluBackward{},
               MapArgs<scalar_t, 2, 1>{{cptr<scalar_t>(g), cptr<scalar_t>(x)}, {mptr<scalar_t>(dx)}},
               x.numel(), "silu_backward");
  });
  return {dx};
}

}  // namespace

LS_REGISTER(silu_cuda) {
  const std::vector<DType> kFloat = {DType::Float32, DType::Float64, DType::BFloat16, DType::Float16};
  register_kernel("silu", "cuda", silu_forward, kFloat);
  register_kernel("silu_backward", "cuda", silu_backward, kFloat);
}

}  // namespace ls::cuda
