// gelu on the GPU: forward and backward, float32, float64, bfloat16, float16 (16-bit compute in
// float32). The same two forms as the CPU reference cpp/ops/gelu.cpp (attr approximate):
//
//   "none" (exact, erf):  y = x Phi(x),  Phi(x) = erfc(-x / sqrt2) / 2
//                         dy/dx = Phi(x) + x phi(x),  phi(x) = exp(-x^2 / 2) / sqrt(2 pi)
//   "tanh" (GPT-2):       y = x sigmoid(2u),  u = sqrt(2/pi) (x + 0.044715 x^3)
//                         dy/dx = s + 2 x s (1 - s) u',  s = sigmoid(2u),
//                         u' = sqrt(2/pi) (1 + 3 * 0.044715 x^2)
//
// Shapes: any; inputs are made contiguous and mapped elementwise with 16-byte packs
// (vec_map.cuh). Registry ops: "gelu" {x} attr approximate -> {y};
// "gelu_backward" {g, x} attr approximate -> {dx}. Memory-bound: one read (two for the
// backward) and one write per element. The constants come from cpp/ops/gelu.h (shared with the
// CPU kernels); the tanh form's sigmoid is vec_map.cuh's (exp2f and the approximate reciprocal
// in float: with the accurate expf and division, 16-bit gelu was compute-bound).
#include <string>

#include "core/registry.h"
#include "ops/gelu.h"
#include "ops/kernel_checks.h"
#include "ops/ops.h"
#include "vec_map.cuh"

namespace ls::cuda {

namespace {

using namespace gelu_math;

// TanhForm as a template parameter: each kernel carries only its own form's code (the erfc of
// the exact form would otherwise set the register count of the tanh form too).
template <bool TanhForm>
struct GeluForward {
  template <typename A> __device__ void operator()(const A (&x)[1], A (&y)[1]) const {
    const A v = x[0];
    if constexpr (TanhForm) {
      const A u = A(kSqrt2OverPi) * (v + A(kTanhCoef) * v * v * v);
      y[0] = v * sigmoid(A(2) * u);
    } else {
      y[0] = v * A(0.5) * erfc(-v * A(kInvSqrt2));
    }
  }
};

template <bool TanhForm>
struct GeluBackward {  // x = {g, x}
  template <typename A> __device__ void operator()(const A (&in)[2], A (&y)[1]) const {
    const A g = in[0], v = in[1];
    if constexpr (TanhForm) {
      const A u = A(kSqrt2OverPi) * (v + A(kTanhCoef) * v * v * v);
      const A du = A(kSqrt2OverPi) * (A(1) + A(3 * kTanhCoef) * v * v);
      const A s = sigmoid(A(2) * u);
      y[0] = g * (s + A(2) * v * s * (A(1) - s) * du);
    } else {
      const A cdf = A(0.5) * erfc(-v * A(kInvSqrt2));
      const A pdf = A(kInvSqrt2Pi) * exp(A(-0.5) * v * v);
      y[0] = g * (cdf + v * pdf);
    }
  }
};

Tensors gelu_forward(const Tensors& in, const Attrs& attrs) {
  cpu::expect_inputs(in, 1, 1, "gelu");
  const bool tf = tanh_form(attrs, "gelu");
  Tensor x = ops::contiguous(in[0]);
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  set_device(x, "gelu");
  CUDA_DISPATCH_FLOAT(x.dtype(), "gelu", {
    const MapArgs<scalar_t, 1, 1> args{{cptr<scalar_t>(x)}, {mptr<scalar_t>(y)}};
    if (tf) launch_map(GeluForward<true>{}, args, x.numel(), "gelu");
    else launch_map(GeluForward<false>{}, args, x.numel(), "gelu");
  });
  return {y};
}

Tensors gelu_backward(const Tensors& in, const Attrs& attrs) {
  cpu::check_pointwise_backward_args(in, "gelu_backward");
  const bool tf = tanh_form(attrs, "gelu_backward");
  Tensor g = ops::contiguous(in[0]), x = ops::contiguous(in[1]);
  Tensor dx = Tensor::empty(x.shape(), x.dtype(), x.device());
  set_device(x, "gelu_backward");
  CUDA_DISPATCH_FLOAT(x.dtype(), "gelu_backward", {
    const MapArgs<scalar_t, 2, 1> args{{cptr<scalar_t>(g), cptr<scalar_t>(x)}, {mptr<scalar_t>(dx)}};
    if (tf) launch_map(GeluBackward<true>{}, args, x.numel(), "gelu_backward");
    else launch_map(GeluBackward<false>{}, args, x.numel(), "gelu_backward");
  });
  return {dx};
}

}  // namespace

LS_REGISTER(gelu_cuda) {
  const std::vector<DType> kFloat = {DType::Float32, DType::Float64, DType::BFloat16, DType::Float16};
  register_kernel("gelu", "cuda", gelu_forward, kFloat);
  register_kernel("gelu_backward", "cuda", gelu_backward, kFloat);
}

}  // namespace ls::cuda
