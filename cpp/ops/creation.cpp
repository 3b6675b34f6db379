// Factories: full, arange and the Philox random draws (rand, randn, randint). They take no tensor
// input; device and dtype travel in the attrs. Random element i follows the stream defined in
// core/philox.h, so a CUDA implementation reproduces these numbers exactly.
#include <cmath>

#include "core/error.h"
#include "core/philox.h"
#include "cpu_loops.h"
#include "ops.h"

namespace ls::ops {

namespace {

Attrs factory_attrs(const Shape& shape, DType dtype, Device device) {
  return Attrs{{"shape", shape}, {"dtype", int64_t(dtype)}, {"device", device.str()}};
}

Tensor empty_from(const Attrs& a) {
  return Tensor::empty(a.ints("shape"), DType(a.i("dtype")), Device::parse(a.s("device", "cpu")));
}

// Fill out[i] = gen(i) for every element, in parallel.
template <typename Gen>
void fill_cpu(const Tensor& out, Gen gen) {
  DISPATCH_ALL(out.dtype(), "fill", {
    scalar_t* p = out.data<scalar_t>();
    parallel_for(0, out.numel(), 65536, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) p[i] = from_double<scalar_t>(gen(i));
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

Tensors rand_cpu(const Tensors&, const Attrs& a) {
  Tensor out = empty_from(a);
  GeneratorState g{uint64_t(a.i("seed")), uint64_t(a.i("offset"))};
  LS_CHECK(is_floating(out.dtype()), TypeError, "rand: dtype must be floating, got ",
           dtype_name(out.dtype()));
  fill_cpu(out, [g](int64_t i) { return double(philox_uniform_at(g.seed, g.offset, uint64_t(i))); });
  return {out};
}

Tensors randn_cpu(const Tensors&, const Attrs& a) {
  Tensor out = empty_from(a);
  GeneratorState g{uint64_t(a.i("seed")), uint64_t(a.i("offset"))};
  LS_CHECK(is_floating(out.dtype()), TypeError, "randn: dtype must be floating, got ",
           dtype_name(out.dtype()));
  fill_cpu(out, [g](int64_t i) { return double(philox_normal_at(g.seed, g.offset, uint64_t(i))); });
  return {out};
}

// low + bits % (high - low): the modulo bias is below 2^-32 * range, negligible for vocab sizes.
Tensors randint_cpu(const Tensors&, const Attrs& a) {
  Tensor out = empty_from(a);
  GeneratorState g{uint64_t(a.i("seed")), uint64_t(a.i("offset"))};
  int64_t low = a.i("low"), range = a.i("high") - low;
  fill_cpu(out, [=](int64_t i) {
    return double(low + int64_t(philox_bits(g.seed, g.offset, uint64_t(i)) % uint64_t(range)));
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
  return call1("full", {}, factory_attrs(shape, dtype, device).set("value", value));
}
Tensor full_like(const Tensor& t, double value) { return full(t.shape(), value, t.dtype(), t.device()); }

Tensor arange(double start, double end, double step, DType dtype, Device device) {
  LS_CHECK(step != 0, ValueError, "arange: step must be nonzero");
  int64_t n = std::max<int64_t>(0, int64_t(std::ceil((end - start) / step)));
  return call1("arange", {},
               factory_attrs({n}, dtype, device).set("start", start).set("step", step));
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
  return call1("randint", {}, random_attrs(shape, dtype, device).set("low", low).set("high", high));
}

LS_REGISTER(creation) {
  for (const char* name : {"full", "arange", "rand", "randn", "randint"}) declare_op(name, {});
  register_kernel("full", "cpu", full_cpu);
  register_kernel("arange", "cpu", arange_cpu);
  register_kernel("rand", "cpu", rand_cpu);
  register_kernel("randn", "cpu", randn_cpu);
  register_kernel("randint", "cpu", randint_cpu);
}

}  // namespace ls::ops
