// Factories: full, arange, linspace (linspace.h) and the Philox random draws (rand, randn,
// randint). They take no tensor input; device and dtype travel in the attrs. Random element i
// follows the stream defined in core/philox.h, so a CUDA implementation reproduces these numbers
// exactly.
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "core/error.h"
#include "core/philox.h"
#include "cpu_loops.h"
#include "linspace.h"
#include "op_args.h"
#include "ops.h"

namespace ls::ops {

namespace {

Attrs factory_attrs(const Shape& shape, DType dtype, Device device) {
  return Attrs{{"shape", shape}, {"dtype", int64_t(dtype)}, {"device", device.str()}};
}

Tensor empty_from(const Attrs& a) {
  return Tensor::empty(a.ints("shape"), DType(a.i("dtype")), Device::parse(a.s("device", "cpu")));
}

// Fill out[i] = gen(i) for every element, in parallel. gen returns a double, or an int64_t that
// goes to integer dtypes without passing through double (exact beyond 2^53).
template <typename T, typename V>
T convert(V v) {
  if constexpr (std::is_integral_v<V> && std::is_integral_v<T>) return T(v);  // bool: v != 0
  else return from_double<T>(double(v));
}
template <typename Gen>
void fill_cpu(const Tensor& out, Gen gen) {
  DISPATCH_ALL(out.dtype(), "fill", {
    scalar_t* p = out.data<scalar_t>();
    parallel_for(0, out.numel(), 65536, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) p[i] = convert<scalar_t>(gen(i));
    });
  });
}

Tensors full_cpu(const Tensors&, const Attrs& a) {
  Tensor out = empty_from(a);
  double v = a.f("value", 0.0);
  fill_cpu(out, [v](int64_t) { return v; });
  return {out};
}

Tensors arange_cpu(const Tensors&, const Attrs& a) {
  double start = a.f("start", 0.0), step = a.f("step", 1.0);
  Tensor out = empty_from(a);
  fill_cpu(out, [=](int64_t i) { return start + double(i) * step; });
  return {out};
}

// start, end and step arrive in the math type C (float or double, see linspace.h).
Tensors linspace_cpu(const Tensors&, const Attrs& a) {
  const double start = a.f("start", 0.0), end = a.f("end", 0.0), step = a.f("step", 0.0);
  const int64_t n = a.i("steps");
  Tensor out = empty_from(a);
  if (linspace_in_float(out.dtype()))
    fill_cpu(out, [=](int64_t i) { return linspace_at<float>(float(start), float(end), float(step), n, i); });
  else
    fill_cpu(out, [=](int64_t i) { return linspace_at<double>(start, end, step, n, i); });
  return {out};
}

// rand and randn by the dtype's significand bits d (core/philox.h): a uniform k 2^-d, exact in the
// dtype; normals in float64 math for float64 and float32 math (rounded) for the others.
Tensors rand_cpu(const Tensors&, const Attrs& a) {
  Tensor out = empty_from(a);
  GeneratorState g{uint64_t(a.i("seed")), uint64_t(a.i("offset"))};
  LS_CHECK(is_floating(out.dtype()), TypeError, "rand: dtype must be floating, got ",
           dtype_name(out.dtype()));
  int d = digits_of(out.dtype());
  fill_cpu(out, [g, d](int64_t i) { return philox_rand_at(g.seed, g.offset, uint64_t(i), d); });
  return {out};
}

Tensors randn_cpu(const Tensors&, const Attrs& a) {
  Tensor out = empty_from(a);
  GeneratorState g{uint64_t(a.i("seed")), uint64_t(a.i("offset"))};
  LS_CHECK(is_floating(out.dtype()), TypeError, "randn: dtype must be floating, got ",
           dtype_name(out.dtype()));
  if (out.dtype() == DType::Float64)
    fill_cpu(out, [g](int64_t i) { return philox_normal64_at(g.seed, g.offset, uint64_t(i)); });
  else
    fill_cpu(out, [g](int64_t i) { return double(philox_normal_at(g.seed, g.offset, uint64_t(i))); });
  return {out};
}

// low + bits % (high - low) on 32 bits, or 64 when the range is wider than 2^32, as torch's
// random_(from, to); the modulo bias is below range / 2^32 (resp. 2^64) of a value's probability.
Tensors randint_cpu(const Tensors&, const Attrs& a) {
  Tensor out = empty_from(a);
  GeneratorState g{uint64_t(a.i("seed")), uint64_t(a.i("offset"))};
  int64_t low = a.i("low");
  uint64_t range = uint64_t(a.i("high")) - uint64_t(low);  // high > low: no int64 overflow
  fill_cpu(out, [=](int64_t i) {
    return philox_randint_at(g.seed, g.offset, uint64_t(i), low, range);
  });
  return {out};
}

Attrs random_attrs(const Shape& shape, DType dtype, Device device) {
  Attrs a = factory_attrs(shape, dtype, device);
  GeneratorState g = reserve_random(uint64_t(shape_numel(shape)));
  a.set("seed", int64_t(g.seed)).set("offset", int64_t(g.offset));
  return a;
}

}  // namespace

Tensor full(const Shape& shape, double value, DType dtype, Device device) {
  check_fill_value(value, dtype, "full");
  return call1("full", {}, factory_attrs(shape, dtype, device).set("value", value));
}
Tensor full_like(const Tensor& t, double value) { return full(t.shape(), value, t.dtype(), t.device()); }

Tensor arange(double start, double end, double step, DType dtype, Device device) {
  if (!is_floating(dtype) && dtype != DType::Bool) {  // as torch's int64 arange: truncated first
    start = std::trunc(start);
    end = std::trunc(end);
    step = std::trunc(step);
  }
  LS_CHECK(step != 0, ValueError, "arange: step must be nonzero");
  int64_t n = std::max<int64_t>(0, int64_t(std::ceil((end - start) / step)));
  return call1("arange", {},
               factory_attrs({n}, dtype, device).set("start", start).set("step", step));
}

namespace {
// An integer linspace's end point as torch converts it to the dtype first: truncated, refused
// past the dtype's range, and for uint8 a negative value down to -255 wrapped (two's complement).
double to_linspace_int(double v, DType dtype) {
  const double t = std::trunc(v);
  double lo = -0x1p63, past = 0x1p63;  // [lo, past): bounds exact in double
  if (dtype == DType::Int32) lo = -0x1p31, past = 0x1p31;
  if (dtype == DType::UInt8) lo = -255, past = 256;
  LS_CHECK(t >= lo && t < past, ValueError, "linspace: ", v, " does not fit in ", dtype_name(dtype));
  return dtype == DType::UInt8 && t < 0 ? t + 256 : t;
}
}  // namespace

Tensor linspace(double start, double end, int64_t steps, DType dtype, Device device) {
  LS_CHECK(steps >= 0, ValueError, "linspace: number of steps must be non-negative, got ", steps);
  LS_CHECK(dtype != DType::Bool, TypeError, "linspace: bool is not a supported dtype");
  double step = 0;
  if (linspace_in_float(dtype)) {
    const float s = float(start), e = float(end);
    start = s, end = e;
    if (steps > 1) step = (e - s) / float(steps - 1);
  } else {
    if (!is_floating(dtype)) start = to_linspace_int(start, dtype), end = to_linspace_int(end, dtype);
    if (steps > 1) step = (end - start) / double(steps - 1);
  }
  Attrs a = factory_attrs({steps}, dtype, device);
  a.set("start", start).set("end", end).set("step", step).set("steps", steps);
  return call1("linspace", {}, a);
}

Tensor rand(const Shape& shape, DType dtype, Device device) {
  return call1("rand", {}, random_attrs(shape, dtype, device));
}
Tensor randn(const Shape& shape, DType dtype, Device device) {
  return call1("randn", {}, random_attrs(shape, dtype, device));
}
Tensor randint(int64_t low, int64_t high, const Shape& shape, DType dtype, Device device) {
  LS_CHECK(high > low, ValueError, "randint: high (", high, ") must be greater than low (", low, ")");
  LS_CHECK(!is_floating(dtype) || dtype == DType::Float32 || dtype == DType::Float64, TypeError,
           "randint: unsupported dtype ", dtype_name(dtype));
  // As torch's random_: low and high - 1 must be values of an integer dtype (a float dtype rounds
  // integers beyond 2^digits, where torch only warns).
  int64_t lo = INT64_MIN, hi = INT64_MAX;
  switch (dtype) {
    case DType::Int32: lo = INT32_MIN; hi = INT32_MAX; break;
    case DType::UInt8: lo = 0; hi = 255; break;
    case DType::Bool: lo = 0; hi = 1; break;
    default: break;
  }
  LS_CHECK(low >= lo && high - 1 <= hi, ValueError, "randint: [", low, ", ", high,
           ") does not fit in ", dtype_name(dtype), " (values ", lo, " to ", hi, ")");
  return call1("randint", {}, random_attrs(shape, dtype, device).set("low", low).set("high", high));
}

LS_REGISTER(creation) {
  for (const char* name : {"full", "arange", "linspace", "rand", "randn", "randint"}) declare_op(name, {});
  register_kernel("full", "cpu", full_cpu);
  register_kernel("arange", "cpu", arange_cpu);
  register_kernel("linspace", "cpu", linspace_cpu);
  register_kernel("rand", "cpu", rand_cpu);
  register_kernel("randn", "cpu", randn_cpu);
  register_kernel("randint", "cpu", randint_cpu);
}

}  // namespace ls::ops
