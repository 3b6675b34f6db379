// silu (swish): forward and backward, float32 and float64.
//
//   y = x sigmoid(x)        dy/dx = s (1 + x (1 - s)),  s = sigmoid(x)
//
// Shapes: any; elementwise over contiguous memory, chunks of elements in parallel.
// Registry ops: "silu" {x} -> {y}; "silu_backward" {g, x} -> {dx}.
// sigmoid = 1 / (1 + exp(-x)) with the vectorised float32 exp of cpu_math.h; for x < -88.7 exp
// overflows to inf and s is exactly 0, which is the correctly rounded answer there.
#include <cmath>

#include "cpu_loops.h"
#include "cpu_math.h"
#include "kernel_checks.h"
#include "ops.h"

namespace ls::ops {

namespace {

Tensors silu_forward(const Tensors& in, const Attrs&) {
  cpu::expect_inputs(in, 1, 1, "silu");
  Tensor x = contiguous(in[0]);
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  DISPATCH_FLOAT(x.dtype(), "silu", {
    using T = scalar_t;
    const T* px = x.data<T>();
    T* py = y.data<T>();
    parallel_for(0, x.numel(), 16384, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) py[i] = px[i] * cpu::sigmoid_(px[i]);
    });
  });
  return {y};
}

Tensors silu_backward(const Tensors& in, const Attrs&) {
  cpu::check_pointwise_backward_args(in, "silu_backward");
  Tensor g = contiguous(in[0]), x = contiguous(in[1]);
  Tensor dx = Tensor::empty(x.shape(), x.dtype(), x.device());
  DISPATCH_FLOAT(x.dtype(), "silu_backward", {
    using T = scalar_t;
    const T* pg = g.data<T>();
    const T* px = x.data<T>();
    T* pd = dx.data<T>();
    parallel_for(0, x.numel(), 16384, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        T s = cpu::sigmoid_(px[i]);
        pd[i] = pg[i] * s * (T(1) + px[i] * (T(1) - s));
      }
    });
  });
  return {dx};
}

}  // namespace

Tensor silu(const Tensor& x) {
  LS_CHECK(x.defined(), ValueError, "silu: input is None");
  LS_CHECK(is_floating(x.dtype()), TypeError, "silu: needs a floating-point input, got ",
           dtype_name(x.dtype()));
  return call1("silu", {x});
}

LS_REGISTER(silu) {
  const std::vector<DType> kFloat = {DType::Float32, DType::Float64};
  declare_op("silu", {[](const BackwardCtx& c, const Tensors& g) {
                        return Tensors{call1("silu_backward", {g[0], c.inputs[0]})};
                      }});
  declare_op("silu_backward", {});
  register_kernel("silu", "cpu", silu_forward, kFloat);
  register_kernel("silu_backward", "cpu", silu_backward, kFloat);
}

}  // namespace ls::ops
