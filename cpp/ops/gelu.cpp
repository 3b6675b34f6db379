// gelu: forward and backward, float32 and float64, two forms (attr approximate):
//
//   "none" (exact, erf):  y = x Phi(x),  Phi(x) = erfc(-x / sqrt2) / 2
//                         dy/dx = Phi(x) + x phi(x),  phi(x) = exp(-x^2 / 2) / sqrt(2 pi)
//   "tanh" (GPT-2):       y = x/2 (1 + tanh(u)) = x sigmoid(2u),  u = sqrt(2/pi) (x + 0.044715 x^3)
//                         dy/dx = s + 2 x s (1 - s) u',  s = sigmoid(2u),
//                         u' = sqrt(2/pi) (1 + 3 * 0.044715 x^2)
//
// Shapes: any; elementwise over contiguous memory, chunks of elements in parallel.
// Registry ops: "gelu" {x} attr approximate -> {y}; "gelu_backward" {g, x} attr approximate -> {dx}.
//
// Why these forms: 1 + tanh(u) = 2 sigmoid(2u) needs one exp and no cancellation; Phi written with
// erfc stays accurate in relative terms for large negative x, where 1 + erf(x / sqrt2) would lose
// every digit. float32 uses the vectorised exp/erfc of cpu_math.h.
#include <cmath>

#include "cpu_loops.h"
#include "cpu_math.h"
#include "gelu.h"
#include "kernel_checks.h"
#include "ops.h"

namespace ls::ops {

namespace {

using namespace gelu_math;

template <typename T>
void gelu_forward_kernel(const T* x, T* y, int64_t n, bool tanh_approx) {
  parallel_for(0, n, 8192, [&](int64_t i0, int64_t i1) {
    if (tanh_approx) {
      for (int64_t i = i0; i < i1; ++i) {
        T v = x[i];
        T u = T(kSqrt2OverPi) * (v + T(kTanhCoef) * v * v * v);
        y[i] = v * cpu::sigmoid_(T(2) * u);
      }
    } else {
      for (int64_t i = i0; i < i1; ++i) {
        T v = x[i];
        y[i] = v * T(0.5) * cpu::erfc_(-v * T(kInvSqrt2));
      }
    }
  });
}

template <typename T>
void gelu_backward_kernel(const T* g, const T* x, T* dx, int64_t n, bool tanh_approx) {
  parallel_for(0, n, 8192, [&](int64_t i0, int64_t i1) {
    if (tanh_approx) {
      for (int64_t i = i0; i < i1; ++i) {
        T v = x[i];
        T u = T(kSqrt2OverPi) * (v + T(kTanhCoef) * v * v * v);
        T du = T(kSqrt2OverPi) * (T(1) + T(3 * kTanhCoef) * v * v);
        T s = cpu::sigmoid_(T(2) * u);
        dx[i] = g[i] * (s + T(2) * v * s * (T(1) - s) * du);
      }
    } else {
      for (int64_t i = i0; i < i1; ++i) {
        T v = x[i];
        T cdf = T(0.5) * cpu::erfc_(-v * T(kInvSqrt2));
        T pdf = T(kInvSqrt2Pi) * cpu::exp_(T(-0.5) * v * v);
        dx[i] = g[i] * (cdf + v * pdf);
      }
    }
  });
}

Tensors gelu_forward(const Tensors& in, const Attrs& a) {
  cpu::expect_inputs(in, 1, 1, "gelu");
  bool tanh_approx = tanh_form(a, "gelu");
  Tensor x = contiguous(in[0]);
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  DISPATCH_FLOAT(x.dtype(), "gelu", gelu_forward_kernel(x.data<scalar_t>(), y.data<scalar_t>(),
                                                        x.numel(), tanh_approx));
  return {y};
}

Tensors gelu_backward(const Tensors& in, const Attrs& a) {
  cpu::check_pointwise_backward_args(in, "gelu_backward");
  bool tanh_approx = tanh_form(a, "gelu_backward");
  Tensor g = contiguous(in[0]), x = contiguous(in[1]);
  Tensor dx = Tensor::empty(x.shape(), x.dtype(), x.device());
  DISPATCH_FLOAT(x.dtype(), "gelu_backward",
                 gelu_backward_kernel(g.data<scalar_t>(), x.data<scalar_t>(),
                                      dx.data<scalar_t>(), x.numel(), tanh_approx));
  return {dx};
}

}  // namespace

Tensor gelu(const Tensor& x, const std::string& approximate) {
  LS_CHECK(x.defined(), ValueError, "gelu: input is None");
  LS_CHECK(is_floating(x.dtype()), TypeError, "gelu: needs a floating-point input, got ",
           dtype_name(x.dtype()));
  LS_CHECK(approximate == "none" || approximate == "tanh", ValueError,
           "gelu: approximate must be 'none' or 'tanh', got '", approximate, "'");
  return call1("gelu", {x}, {{"approximate", approximate}});
}

LS_REGISTER(gelu) {
  const std::vector<DType> kFloat = {DType::Float32, DType::Float64};
  declare_op("gelu", {[](const BackwardCtx& c, const Tensors& g) {
                        return Tensors{call1("gelu_backward", {g[0], c.inputs[0]}, c.attrs)};
                      }});
  declare_op("gelu_backward", {});
  register_kernel("gelu", "cpu", gelu_forward, kFloat);
  register_kernel("gelu_backward", "cpu", gelu_backward, kFloat);
}

}  // namespace ls::ops
