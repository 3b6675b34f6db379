// swiglu, the gated MLP activation of LLaMA: forward and backward, float32 and float64.
//
//   y = silu(a) * b = a sigmoid(a) b
//   da = g b s (1 + a (1 - s)),  db = g a s,   s = sigmoid(a)
//
// Shapes: a and b of one shape (B, T, H) in an MLP: the two halves of the up projection; any shape
// works, elementwise. Registry ops: "swiglu" {a, b} -> {y}; "swiglu_backward" {g, a, b} attrs
// da, db (bools: which to compute) -> {da, db}, one not asked for has shape (0,).
// Fused so the backward reads g, a, b once and writes both gradients in the same pass, instead of
// materialising silu(a) and running a silu backward and two multiplies.
#include <cmath>

#include "cpu_loops.h"
#include "cpu_math.h"
#include "kernel_checks.h"
#include "op_args.h"
#include "ops.h"

namespace ls::ops {

// Validation shared by the typed wrapper and the kernels of every backend.
void check_swiglu_args(const Tensor& a, const Tensor& b) {
  LS_CHECK(a.defined() && b.defined(), ValueError, "swiglu: inputs must not be None");
  LS_CHECK(is_floating(a.dtype()) && a.dtype() == b.dtype(), TypeError,
           "swiglu: needs two floating-point inputs of one dtype, got ", dtype_name(a.dtype()),
           " and ", dtype_name(b.dtype()));
  LS_CHECK(a.shape() == b.shape(), ValueError, "swiglu: shapes ", shape_str(a.shape()), " and ",
           shape_str(b.shape()), " differ (both halves must have the same shape)");
}

void check_swiglu_backward_args(const Tensors& in) {
  cpu::expect_inputs(in, 3, 3, "swiglu_backward");
  check_swiglu_args(in[1], in[2]);
  cpu::expect_same_dtype(in[1], in[0], "swiglu_backward", "gradient");
  LS_CHECK(in[0].shape() == in[1].shape(), ValueError, "swiglu_backward: shapes of g ", shape_str(in[0].shape()),
           ", a ", shape_str(in[1].shape()), " and b ", shape_str(in[2].shape()), " differ");
}

namespace {

Tensors swiglu_forward(const Tensors& in, const Attrs&) {
  cpu::expect_inputs(in, 2, 2, "swiglu");
  check_swiglu_args(in[0], in[1]);
  Tensor a = contiguous(in[0]), b = contiguous(in[1]);
  Tensor y = Tensor::empty(a.shape(), a.dtype(), a.device());
  DISPATCH_FLOAT(a.dtype(), "swiglu", {
    using T = scalar_t;
    const T* pa = a.data<T>();
    const T* pb = b.data<T>();
    T* py = y.data<T>();
    parallel_for(0, a.numel(), 16384, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) py[i] = pa[i] * cpu::sigmoid_(pa[i]) * pb[i];
    });
  });
  return {y};
}

Tensors swiglu_backward(const Tensors& in, const Attrs& attrs) {
  check_swiglu_backward_args(in);
  Tensor g = contiguous(in[0]), a = contiguous(in[1]), b = contiguous(in[2]);
  bool want_da = attrs.b("da", true), want_db = attrs.b("db", true);
  Tensor da = Tensor::empty(want_da ? a.shape() : Shape{0}, a.dtype(), a.device());
  Tensor db = Tensor::empty(want_db ? a.shape() : Shape{0}, a.dtype(), a.device());
  DISPATCH_FLOAT(a.dtype(), "swiglu_backward", {
    using T = scalar_t;
    const T* pg = g.data<T>();
    const T* pa = a.data<T>();
    const T* pb = b.data<T>();
    T* pda = want_da ? da.data<T>() : nullptr;
    T* pdb = want_db ? db.data<T>() : nullptr;
    parallel_for(0, a.numel(), 16384, [&](int64_t i0, int64_t i1) {
      if (pda && pdb) {
        for (int64_t i = i0; i < i1; ++i) {
          T s = cpu::sigmoid_(pa[i]);
          pda[i] = pg[i] * pb[i] * s * (T(1) + pa[i] * (T(1) - s));
          pdb[i] = pg[i] * pa[i] * s;
        }
      } else if (pda) {
        for (int64_t i = i0; i < i1; ++i) {
          T s = cpu::sigmoid_(pa[i]);
          pda[i] = pg[i] * pb[i] * s * (T(1) + pa[i] * (T(1) - s));
        }
      } else if (pdb) {
        for (int64_t i = i0; i < i1; ++i) pdb[i] = pg[i] * pa[i] * cpu::sigmoid_(pa[i]);
      }
    });
  });
  return {da, db};
}

}  // namespace

Tensor swiglu(const Tensor& a, const Tensor& b) {
  check_swiglu_args(a, b);
  return call1("swiglu", {a, b});
}

LS_REGISTER(swiglu) {
  const std::vector<DType> kFloat = {DType::Float32, DType::Float64};
  declare_op("swiglu", {[](const BackwardCtx& c, const Tensors& g) {
                          Tensors r = call("swiglu_backward", {g[0], c.inputs[0], c.inputs[1]},
                                           {{"da", bool(c.needs_grad[0])}, {"db", bool(c.needs_grad[1])}});
                          return Tensors{c.needs_grad[0] ? r[0] : Tensor(),
                                         c.needs_grad[1] ? r[1] : Tensor()};
                        }});
  declare_op("swiglu_backward", {});
  register_kernel("swiglu", "cpu", swiglu_forward, kFloat);
  register_kernel("swiglu_backward", "cpu", swiglu_backward, kFloat);
}

}  // namespace ls::ops
