// Elementwise binary ops with numpy broadcasting: add, sub, mul, div, pow, maximum, minimum,
// floor_divide, remainder and the comparisons (eq ne lt le gt ge, giving bool). Inputs of
// different dtypes are promoted (result_type) before the kernel runs. Gradients are reduced
// back to each input's shape.
//
// floor_divide and remainder (a // b, a % b; the math is in floor_div.h) serve every numeric dtype
// but bool, as torch. An integer zero divisor raises RuntimeError("ZeroDivisionError"), as torch on
// the CPU. floor_divide has no derivative: its backward raises, as torch's does (the result still
// requires grad). remainder: d a = g, d b = -g floor_divide(a, b).
//
// pow: floats by std::pow; integers exactly, wrapping, as torch (int_pow.h: 3 ** 40 in int64 wraps,
// 0 ** -2 is 0). Gradients, with torch's masks (where the formula is 0 * inf or log 0 but the
// derivative is 0):  d a = g b a^(b-1), 0 where b == 0 (x ** 0 is constant, even at x = 0);
// d b = g a^b ln a, 0 where a == 0 and b >= 0 (0 ** b is constant there).
#include <cmath>

#include "core/autograd.h"
#include "cpu_loops.h"
#include "floor_div.h"
#include "int_pow.h"
#include "ops.h"

namespace ls::ops {

namespace {

const std::vector<DType> kNumeric = {DType::Float32, DType::Float64, DType::Int32,
                                     DType::Int64,   DType::UInt8,   DType::Bool};

const std::vector<DType> kNumericNoBool = {DType::Float32, DType::Float64, DType::Int32,
                                           DType::Int64,   DType::UInt8};

template <typename T> T times(T x, T y) { return T(x * y); }
template <> bool times(bool x, bool y) { return x && y; }  // bool * bool is logical and

// f(x, y), refusing an integer zero divisor.
template <typename T, typename F> auto checked_divisor(const char* op, F f) {
  return [op, f](T x, T y) {
    if constexpr (!std::is_floating_point_v<T>)
      LS_CHECK(y != 0, RuntimeError, "ZeroDivisionError: integer ", op, " by zero");
    return f(x, y);
  };
}

template <typename T, typename F>
void binary_loop(const Tensor& out, const Tensor& a, const Tensor& b, F f) {
  using O = decltype(f(T(), T()));
  const Shape& shape = out.shape();
  std::array<Shape, 3> st{out.strides(), cpu::broadcast_strides(a, shape), cpu::broadcast_strides(b, shape)};
  O* o = out.data<O>();
  const T* pa = a.data<T>();
  const T* pb = b.data<T>();
  cpu::for_each_run(shape, st, [&](auto off, auto in, int64_t n) {
    O* po = o + off[0];
    const T* xa = pa + off[1];
    const T* xb = pb + off[2];
    if (in[0] == 1 && in[1] == 1 && in[2] == 1) {
      for (int64_t k = 0; k < n; ++k) po[k] = f(xa[k], xb[k]);
    } else if (in[0] == 1 && in[1] == 1 && in[2] == 0) {
      const T vb = *xb;
      for (int64_t k = 0; k < n; ++k) po[k] = f(xa[k], vb);
    } else if (in[0] == 1 && in[1] == 0 && in[2] == 1) {
      const T va = *xa;
      for (int64_t k = 0; k < n; ++k) po[k] = f(va, xb[k]);
    } else {
      for (int64_t k = 0; k < n; ++k) po[k * in[0]] = f(xa[k * in[1]], xb[k * in[2]]);
    }
  });
}

Kernel arith_kernel(const std::string& op) {
  return [op](const Tensors& in, const Attrs&) {
    const Tensor& a = in[0];
    const Tensor& b = in[1];
    Shape shape = broadcast_shapes(a.shape(), b.shape(), op.c_str());
    Tensor out = Tensor::empty(shape, a.dtype(), a.device());
    DISPATCH_NUMERIC(a.dtype(), op.c_str(), {
      using T = scalar_t;
      if (op == "add") binary_loop<T>(out, a, b, [](T x, T y) { return T(x + y); });
      else if (op == "sub") binary_loop<T>(out, a, b, [](T x, T y) { return T(x - y); });
      else if (op == "mul") binary_loop<T>(out, a, b, [](T x, T y) { return times(x, y); });
      else if (op == "div") {
        if constexpr (std::is_floating_point_v<T>) {
          binary_loop<T>(out, a, b, [](T x, T y) { return T(x / y); });
        } else {  // ops::div promotes integers to float first; this is only a direct call
          throw TypeError("div: integer operands must be cast to a floating dtype first");
        }
      } else if (op == "pow") {
        if constexpr (std::is_floating_point_v<T>) binary_loop<T>(out, a, b, [](T x, T y) { return T(std::pow(x, y)); });
        else binary_loop<T>(out, a, b, int_math::ipow<T>);
      }
      else if (op == "maximum") binary_loop<T>(out, a, b, [](T x, T y) { return x > y || x != x ? x : y; });
      else if (op == "minimum") binary_loop<T>(out, a, b, [](T x, T y) { return x < y || x != x ? x : y; });
      else if (op == "floor_divide")
        binary_loop<T>(out, a, b, checked_divisor<T>("floor_divide", floor_math::floor_divide<T>));
      else if (op == "remainder")
        binary_loop<T>(out, a, b, checked_divisor<T>("remainder", floor_math::remainder<T>));
    });
    return Tensors{out};
  };
}

Kernel compare_kernel(const std::string& how) {
  return [how](const Tensors& in, const Attrs&) {
    const Tensor& a = in[0];
    const Tensor& b = in[1];
    Shape shape = broadcast_shapes(a.shape(), b.shape(), how.c_str());
    Tensor out = Tensor::empty(shape, DType::Bool, a.device());
    DISPATCH_NUMERIC(a.dtype(), how.c_str(), {
      using T = scalar_t;
      if (how == "eq") binary_loop<T>(out, a, b, [](T x, T y) { return x == y; });
      else if (how == "ne") binary_loop<T>(out, a, b, [](T x, T y) { return x != y; });
      else if (how == "lt") binary_loop<T>(out, a, b, [](T x, T y) { return x < y; });
      else if (how == "le") binary_loop<T>(out, a, b, [](T x, T y) { return x <= y; });
      else if (how == "gt") binary_loop<T>(out, a, b, [](T x, T y) { return x > y; });
      else if (how == "ge") binary_loop<T>(out, a, b, [](T x, T y) { return x >= y; });
    });
    return Tensors{out};
  };
}

// Promote both operands to one dtype before dispatch.
Tensors promoted(const Tensor& a, const Tensor& b) {
  DType d = result_type(a, b);
  return {to_dtype(a, d), to_dtype(b, d)};
}

Tensor binary(const std::string& op, const Tensor& a, const Tensor& b) {
  return call1(op, promoted(a, b));
}

Tensor grad_if(const BackwardCtx& c, int i, const Tensor& g) {
  return c.needs_grad[i] ? sum_to(g, c.input_shapes[i]) : Tensor();
}

}  // namespace

Tensor add(const Tensor& a, const Tensor& b) { return binary("add", a, b); }
// As torch: the difference of two bools has no bool value (True - True would wrap).
Tensor sub(const Tensor& a, const Tensor& b) {
  LS_CHECK(a.dtype() != DType::Bool || b.dtype() != DType::Bool, TypeError,
           "sub: subtracting two bool tensors is not supported; use ^ (logical xor) instead");
  return binary("sub", a, b);
}
Tensor mul(const Tensor& a, const Tensor& b) { return binary("mul", a, b); }
Tensor div(const Tensor& a, const Tensor& b) {
  DType d = result_type(a, b);
  if (!is_floating(d)) d = DType::Float32;  // true division, as in Python 3
  return call1("div", {to_dtype(a, d), to_dtype(b, d)});
}
Tensor pow(const Tensor& a, const Tensor& b) { return binary("pow", a, b); }
Tensor maximum(const Tensor& a, const Tensor& b) { return binary("maximum", a, b); }
Tensor minimum(const Tensor& a, const Tensor& b) { return binary("minimum", a, b); }
Tensor floor_divide(const Tensor& a, const Tensor& b) { return binary("floor_divide", a, b); }
Tensor remainder(const Tensor& a, const Tensor& b) { return binary("remainder", a, b); }
Tensor compare(const Tensor& a, const Tensor& b, const std::string& how) {
  return call1(how, promoted(a, b));
}
Tensor scalar_like(double v, const Tensor& like) { return full({}, v, like.dtype(), like.device()); }
Tensor mul_scalar(const Tensor& a, double s) { return mul(a, scalar_like(s, a)); }
Tensor add_scalar(const Tensor& a, double s) { return add(a, scalar_like(s, a)); }

Tensor sum_to(const Tensor& g, const Shape& shape) {
  if (g.shape() == shape) return g;
  int64_t lead = g.dim() - int64_t(shape.size());
  std::vector<int64_t> dims;
  for (int64_t i = 0; i < g.dim(); ++i)
    if (i < lead || (shape[i - lead] == 1 && g.shape()[i] != 1)) dims.push_back(i);
  Tensor s = dims.empty() ? g : sum(g, dims, true);
  return reshape(s, shape);
}

LS_REGISTER(binary) {
  declare_op("add", {[](const BackwardCtx& c, const Tensors& g) {
                       return Tensors{grad_if(c, 0, g[0]), grad_if(c, 1, g[0])};
                     }, false});
  declare_op("sub", {[](const BackwardCtx& c, const Tensors& g) {
                       return Tensors{grad_if(c, 0, g[0]),
                                      c.needs_grad[1] ? grad_if(c, 1, unary("neg", g[0])) : Tensor()};
                     }, false});
  declare_op("mul", {[](const BackwardCtx& c, const Tensors& g) {
                       return Tensors{c.needs_grad[0] ? grad_if(c, 0, mul(g[0], c.inputs[1])) : Tensor(),
                                      c.needs_grad[1] ? grad_if(c, 1, mul(g[0], c.inputs[0])) : Tensor()};
                     }});
  declare_op("div", {[](const BackwardCtx& c, const Tensors& g) {
                       Tensor ga, gb;
                       if (c.needs_grad[0]) ga = grad_if(c, 0, div(g[0], c.inputs[1]));
                       if (c.needs_grad[1]) {
                         const Tensor &a = c.inputs[0], &b = c.inputs[1];
                         gb = grad_if(c, 1, unary("neg", div(mul(g[0], a), mul(b, b))));
                       }
                       return Tensors{ga, gb};
                     }});
  declare_op("pow", {[](const BackwardCtx& c, const Tensors& g) {
                       const Tensor& a = c.inputs[0];
                       const Tensor& b = c.inputs[1];
                       const Tensor& out = c.outputs[0];
                       Tensor ga, gb;
                       // where(mask, 0, ...) rather than a product with the mask: 0 * inf is NaN.
                       Tensor zero = scalar_like(0.0, g[0]);
                       if (c.needs_grad[0]) {  // b * a^(b-1), 0 where b == 0
                         Tensor d = mul(g[0], mul(b, pow(a, add_scalar(b, -1.0))));
                         ga = grad_if(c, 0, where(compare(b, scalar_like(0.0, b), "eq"), zero, d));
                       }
                       if (c.needs_grad[1]) {  // a^b * ln a, 0 where a == 0 and b >= 0
                         Tensor d = mul(g[0], mul(out, unary("log", a)));
                         Tensor flat = mul(compare(a, scalar_like(0.0, a), "eq"),  // bool * bool: and
                                           compare(b, scalar_like(0.0, b), "ge"));
                         gb = grad_if(c, 1, where(flat, zero, d));
                       }
                       return Tensors{ga, gb};
                     }, true, true});
  // maximum/minimum, as torch: the gradient goes to the selected input, half to each on a tie,
  // and whole to both where neither is selected over the other (a NaN). An input gets none where
  // the comparison a_loses (b_loses) holds: a < b for maximum's a.
  auto select_grad = [](const char* a_loses, const char* b_loses) {
    return [a_loses, b_loses](const BackwardCtx& c, const Tensors& g) {
      const Tensor &a = c.inputs[0], &b = c.inputs[1];
      const Tensor share = where(compare(a, b, "eq"), mul_scalar(g[0], 0.5), g[0]);
      const Tensor zero = scalar_like(0.0, g[0]);
      Tensor ga, gb;
      if (c.needs_grad[0]) ga = grad_if(c, 0, where(compare(a, b, a_loses), zero, share));
      if (c.needs_grad[1]) gb = grad_if(c, 1, where(compare(a, b, b_loses), zero, share));
      return Tensors{ga, gb};
    };
  };
  declare_op("maximum", {select_grad("lt", "gt")});
  declare_op("minimum", {select_grad("gt", "lt")});
  declare_op("floor_divide", {[](const BackwardCtx&, const Tensors&) -> Tensors {
                                throw RuntimeError("the derivative for 'floor_divide' is not implemented");
                              }, false});
  declare_op("remainder", {[](const BackwardCtx& c, const Tensors& g) {
                             Tensor ga, gb;
                             if (c.needs_grad[0]) ga = grad_if(c, 0, g[0]);
                             if (c.needs_grad[1]) {
                               const Tensor &a = c.inputs[0], &b = c.inputs[1];
                               gb = grad_if(c, 1, unary("neg", mul(g[0], floor_divide(a, b))));
                             }
                             return Tensors{ga, gb};
                           }});
  for (const char* op : {"add", "sub", "mul", "div", "pow", "maximum", "minimum"})
    register_kernel(op, "cpu", arith_kernel(op), kNumeric);
  for (const char* op : {"floor_divide", "remainder"})
    register_kernel(op, "cpu", arith_kernel(op), kNumericNoBool);
  for (const char* how : {"eq", "ne", "lt", "le", "gt", "ge"}) {
    declare_op(how, {});
    register_kernel(how, "cpu", compare_kernel(how), kNumeric);
  }
}

}  // namespace ls::ops
