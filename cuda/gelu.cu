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
// backward) and one write per element.
#include <string>

#include "core/registry.h"
#include "ops/kernel_checks.h"
#include "ops/ops.h"
#include "vec_map.cuh"

namespace ls::cuda {

namespace {

constexpr double kInvSqrt2 = 0.70710678118654752440;
constexpr double kInvSqrt2Pi = 0.39894228040143267794;
constexpr double kSqrt2OverPi = 0.79788456080286535588;
constexpr double kTanhCoef = 0.044715;

template <typename A> __device__ __forceinline__ A sigmoid(A z) { return A(1) / (A(1) + exp(-z)); }

struct GeluForward {
  bool tanh_form;
  template <typename A> __device__ void operator()(const A (&x)[1], A (&y)[1]) const {
    const A v = x[0];
    if (tanh_form) {
      const A u = A(kSqrt2OverPi) * (v + A(kTanhCoef) * v * v * v);
      y[0] = v * sigmoid(A(2) * u);
    } else {
      y[0] = v * A(0.5) * erfc(-v * A(kInvSqrt2));
    }
  }
};

struct GeluBackward {  // x = {g, x}
  bool tanh_form;
  template <typename A> __device__ void operator()(const A (&in)[2], A (&y)[1]) const {
    const A g = in[0], v = in[1];
    if (tanh_form) {
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

bool tanh_form(const Attrs& a, const char* op) {
  std::string approx = a.s("approximate", "none");
  LS_CHECK(approx == "none" || approx == "tanh", ValueError, op,
           ": approximate must be 'none' or 'tanh', got '", approx, "'");
  return approx == "tanh";
}

Tensors gelu_forward(const Tensors& in, const Attrs& attrs) {
  cpu::expect_inputs(in, 1, 1, "gelu");
  const bool tf = tanh_form(attrs, "gelu");
  Tensor x = ops::contiguous(in[0]);
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  set_device(x, "gelu");
  CUDA_DISPATCH_FLOAT(x.dtype(), "gelu", {
    launch_map(GeluForward{tf}, MapArgs<scalar_t, 1, 1>{{cptr<scalar_t>(x)}, {mptr<scalar_t>(y)}},
               x.numel(), "gelu");
  });
  return {y};
}

Tensors gelu_backward(const Tensors& in, const Attrs& attrs) {
  cpu::expect_inputs(in, 2, 2, "gelu_backward");
  cpu::expect_same_dtype(in[1], in[0], "gelu_backward", "gradient");
  const bool tf = tanh_form(attrs, "gelu_backward");
  LS_CHECK(in[0].shape() == in[1].shape(), ValueError, "gelu_backward: gradient of shape ",
           shape_str(in[0].shape()), " does not match the input shape ", shape_str(in[1].shape()));
  Tensor g = ops::contiguous(in[0]), x = ops::contiguous(in[1]);
  Tensor dx = Tensor::empty(x.shape(), x.dtype(), x.device());
  set_device(x, "gelu_backward");
  CUDA_DISPATCH_FLOAT(x.dtype(), "gelu_backward", {
    launch_map(GeluBackward{tf},
               MapArgs<scalar_t, 2, 1>{{cptr<scalar_t>(g), cptr<scalar_t>(x)}, {mptr<scalar_t>(dx)}},
               x.numel(), "gelu_backward");
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
