// Elementwise unary ops (neg exp log sqrt rsqrt tanh sigmoid abs sign relu sin cos), clamp, and
// the selections where(cond, a, b) and masked_fill(x, mask, value).
// Gradients: d exp = out, d log = 1/x, d sqrt = 1/(2 out), d rsqrt = -out^3/2, d tanh = 1 - out^2,
// d sigmoid = out (1 - out), d abs = sign x, d relu = 0 where out <= 0 else g (so g passes at
// NaN, as torch's threshold_backward); clamp passes g where lo <= x <= hi.
// relu and clamp propagate NaN and clamp with lo > hi gives hi, as torch (clamp_math.h, shared
// with the CUDA kernels).
#include <cmath>

#include "clamp_math.h"
#include "cpu_loops.h"
#include "op_args.h"
#include "ops.h"

namespace ls::ops {

namespace {

const std::vector<DType> kFloat = {DType::Float32, DType::Float64};

template <typename T, typename F>
void unary_loop(const Tensor& out, const Tensor& x, F f) {
  std::array<Shape, 2> st{out.strides(), x.strides()};
  T* o = out.data<T>();
  const T* px = x.data<T>();
  cpu::for_each_run(out.shape(), st, [&](auto off, auto in, int64_t n) {
    T* po = o + off[0];
    const T* xi = px + off[1];
    if (in[0] == 1 && in[1] == 1) {
      for (int64_t k = 0; k < n; ++k) po[k] = f(xi[k]);
    } else {
      for (int64_t k = 0; k < n; ++k) po[k * in[0]] = f(xi[k * in[1]]);
    }
  });
}

template <typename T>
void run_unary(const std::string& op, const Tensor& out, const Tensor& x) {
  if constexpr (!std::is_floating_point_v<T>) {  // integers: the sign-only ops
    if (op == "neg") unary_loop<T>(out, x, [](T v) { return T(-v); });
    else if (op == "abs") unary_loop<T>(out, x, [](T v) { return v < 0 ? T(-v) : v; });
    else if (op == "sign") unary_loop<T>(out, x, [](T v) { return T((v > 0) - (v < 0)); });
    else if (op == "relu") unary_loop<T>(out, x, clamp_math::relu<T>);
    else throw TypeError(::ls::cat(op, ": integer tensors are not supported; cast to a float dtype"));
    return;
  }
  if (op == "neg") unary_loop<T>(out, x, [](T v) { return T(-v); });
  else if (op == "exp") unary_loop<T>(out, x, [](T v) { return std::exp(v); });
  else if (op == "log") unary_loop<T>(out, x, [](T v) { return std::log(v); });
  else if (op == "sqrt") unary_loop<T>(out, x, [](T v) { return std::sqrt(v); });
  else if (op == "rsqrt") unary_loop<T>(out, x, [](T v) { return T(1) / std::sqrt(v); });
  else if (op == "tanh") unary_loop<T>(out, x, [](T v) { return std::tanh(v); });
  else if (op == "sigmoid") unary_loop<T>(out, x, [](T v) { return T(1) / (T(1) + std::exp(-v)); });
  else if (op == "abs") unary_loop<T>(out, x, [](T v) { return std::abs(v); });
  else if (op == "sign") unary_loop<T>(out, x, [](T v) { return T((v > T(0)) - (v < T(0))); });
  else if (op == "relu") unary_loop<T>(out, x, clamp_math::relu<T>);
  else if (op == "sin") unary_loop<T>(out, x, [](T v) { return std::sin(v); });
  else if (op == "cos") unary_loop<T>(out, x, [](T v) { return std::cos(v); });
  else throw NotImplementedError(::ls::cat("unknown unary op '", op, "'"));
}

Kernel unary_kernel(const std::string& op) {
  return [op](const Tensors& in, const Attrs&) {
    Tensor out = Tensor::empty(in[0].shape(), in[0].dtype(), in[0].device());
    switch (in[0].dtype()) {
      case DType::Float32: run_unary<float>(op, out, in[0]); break;
      case DType::Float64: run_unary<double>(op, out, in[0]); break;
      case DType::Int32: run_unary<int32_t>(op, out, in[0]); break;
      case DType::Int64: run_unary<int64_t>(op, out, in[0]); break;
      default: throw_dtype_error(op.c_str(), in[0].dtype());
    }
    return Tensors{out};
  };
}

Tensors clamp_cpu(const Tensors& in, const Attrs& a) {
  const Tensor& x = in[0];
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  double lo = a.f("min", -INFINITY), hi = a.f("max", INFINITY);
  DISPATCH_FLOAT(x.dtype(), "clamp", {
    scalar_t l = scalar_t(lo), h = scalar_t(hi);
    unary_loop<scalar_t>(out, x, [=](scalar_t v) { return clamp_math::clamp(v, l, h); });
  });
  return {out};
}

Tensors where_cpu(const Tensors& in, const Attrs&) {
  const Tensor& cond = in[0];
  const Tensor& a = in[1];
  const Tensor& b = in[2];
  Shape shape = broadcast_shapes(broadcast_shapes(cond.shape(), a.shape(), "where"), b.shape(), "where");
  Tensor out = Tensor::empty(shape, a.dtype(), a.device());
  std::array<Shape, 4> st{out.strides(), cpu::broadcast_strides(cond, shape),
                          cpu::broadcast_strides(a, shape), cpu::broadcast_strides(b, shape)};
  const bool* pc = cond.data<bool>();
  DISPATCH_ALL(a.dtype(), "where", {
    scalar_t* o = out.data<scalar_t>();
    const scalar_t* pa = a.data<scalar_t>();
    const scalar_t* pb = b.data<scalar_t>();
    cpu::for_each_run(shape, st, [&](auto off, auto s, int64_t n) {
      for (int64_t k = 0; k < n; ++k)
        o[off[0] + k * s[0]] = pc[off[1] + k * s[1]] ? pa[off[2] + k * s[2]] : pb[off[3] + k * s[3]];
    });
  });
  return {out};
}

// As torch: an integer mask is refused too, not read as nonzero (torch still takes a uint8 where
// condition, deprecated).
const Tensor& as_bool_mask(const Tensor& m, const char* op) {
  LS_CHECK(m.dtype() == DType::Bool, TypeError, op, ": the condition/mask must be a bool tensor, got ",
           dtype_name(m.dtype()));
  return m;
}

}  // namespace

Tensor unary(const std::string& op, const Tensor& x) { return call1(op, {x}); }

Tensor clamp(const Tensor& x, std::optional<double> lo, std::optional<double> hi) {
  LS_CHECK(lo || hi, ValueError, "clamp: at least one of min and max must be given");  // as torch
  Attrs a;
  if (lo) a.set("min", *lo);
  if (hi) a.set("max", *hi);
  return call1("clamp", {x}, a);
}

Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b) {
  DType d = result_type(a, b);
  return call1("where", {as_bool_mask(cond, "where"), to_dtype(a, d), to_dtype(b, d)});
}

Tensor masked_fill(const Tensor& x, const Tensor& mask, const Tensor& value) {
  LS_CHECK(value.dim() == 0, ValueError, "masked_fill: value must be a 0-d tensor, got shape ",
           shape_str(value.shape()));
  Tensor m = as_bool_mask(mask, "masked_fill");
  LS_CHECK(broadcast_shapes(x.shape(), m.shape(), "masked_fill") == x.shape(), ValueError,
           "masked_fill: mask of shape ", shape_str(m.shape()), " does not broadcast to ",
           shape_str(x.shape()));
  return where(m, to_dtype(value, x.dtype()), x);
}

Tensor masked_fill(const Tensor& x, const Tensor& mask, double value) {
  check_fill_value(value, x.dtype(), "masked_fill");
  return masked_fill(x, mask, scalar_like(value, x));
}

LS_REGISTER(unary) {
  using G = const Tensors&;
  using C = const BackwardCtx&;
  auto out_based = [](auto f) { return OpSchema{[f](C c, G g) { return Tensors{f(c.outputs[0], g[0])}; }, false, true}; };
  auto in_based = [](auto f) { return OpSchema{[f](C c, G g) { return Tensors{f(c.inputs[0], g[0])}; }, true, false}; };
  declare_op("neg", {[](C, G g) { return Tensors{unary("neg", g[0])}; }, false});
  declare_op("exp", out_based([](const Tensor& o, const Tensor& g) { return mul(g, o); }));
  declare_op("log", in_based([](const Tensor& x, const Tensor& g) { return div(g, x); }));
  declare_op("sqrt", out_based([](const Tensor& o, const Tensor& g) { return div(g, mul_scalar(o, 2.0)); }));
  declare_op("rsqrt", out_based([](const Tensor& o, const Tensor& g) {
               return mul(g, mul_scalar(mul(o, mul(o, o)), -0.5));
             }));
  declare_op("tanh", out_based([](const Tensor& o, const Tensor& g) {
               return mul(g, add_scalar(unary("neg", mul(o, o)), 1.0));
             }));
  declare_op("sigmoid", out_based([](const Tensor& o, const Tensor& g) {
               return mul(g, mul(o, add_scalar(unary("neg", o), 1.0)));
             }));
  declare_op("abs", in_based([](const Tensor& x, const Tensor& g) { return mul(g, unary("sign", x)); }));
  // piecewise constant: a zero gradient, as torch (the output stays in the graph)
  declare_op("sign", OpSchema{[](C, G g) { return Tensors{full_like(g[0], 0.0)}; }, false, false});
  // where, not g * [out > 0]: NaN > 0 is false, and torch passes g at a NaN output.
  declare_op("relu", out_based([](const Tensor& o, const Tensor& g) {
               return where(compare(o, scalar_like(0.0, o), "le"), scalar_like(0.0, g), g);
             }));
  declare_op("sin", in_based([](const Tensor& x, const Tensor& g) { return mul(g, unary("cos", x)); }));
  declare_op("cos", in_based([](const Tensor& x, const Tensor& g) {
               return mul(g, unary("neg", unary("sin", x)));
             }));
  for (const char* op : {"neg", "exp", "log", "sqrt", "rsqrt", "tanh", "sigmoid", "abs", "sign",
                         "relu", "sin", "cos"})
    register_kernel(op, "cpu", unary_kernel(op), kFloat);
  for (const char* op : {"neg", "abs", "sign", "relu"})
    register_kernel(op, "cpu", unary_kernel(op), {DType::Float32, DType::Float64, DType::Int32, DType::Int64});

  // where, not g * [lo <= x <= hi]: a NaN or inf upstream gradient at a clamped position gives
  // 0, as torch's clamp_backward.
  declare_op("clamp", {[](C c, G g) {
                         const Tensor& x = c.inputs[0];
                         Tensor dx = g[0], zero = scalar_like(0.0, g[0]);
                         if (c.attrs.has("min"))
                           dx = where(compare(x, scalar_like(c.attrs.f("min", 0), x), "ge"), dx, zero);
                         if (c.attrs.has("max"))
                           dx = where(compare(x, scalar_like(c.attrs.f("max", 0), x), "le"), dx, zero);
                         return Tensors{dx};
                       }});
  register_kernel("clamp", "cpu", clamp_cpu, kFloat);

  declare_op("where", {[](C c, G g) {
                         const Tensor& cond = c.inputs[0];
                         Tensor zero = scalar_like(0.0, g[0]);
                         Tensor ga, gb;
                         if (c.needs_grad[1]) ga = sum_to(where(cond, g[0], zero), c.input_shapes[1]);
                         if (c.needs_grad[2]) gb = sum_to(where(cond, zero, g[0]), c.input_shapes[2]);
                         return Tensors{Tensor(), ga, gb};
                       }});
  register_kernel("where", "cpu", where_cpu);
}

}  // namespace ls::ops
