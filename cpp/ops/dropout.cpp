// Inverted dropout: y = x * keep / (1 - p), with the keep mask drawn from Philox.
//   x any shape (N = x.numel(), element n in row-major order), attrs p, seed, offset
//   keep[n] = philox_uniform_at(seed, offset, n) >= p      (so P(keep) = 1 - p)
// The uniform is k / 2^24 with k = bits >> 8, so the test is exactly the integer compare
// k >= ceil(p * 2^24): no float rounding of p, and the same on every device.
// The mask is never stored: the backward is the same op on the incoming gradient with the same
// (p, seed, offset), dx = g * keep / (1 - p), which also makes dropout twice differentiable.
// Because element n of the stream is defined in core/philox.h, a CUDA kernel reproduces the
// CPU mask bit for bit. p = 1 drops everything (the 1/(1-p) scale is never applied then).
#include <cmath>

#include "core/philox.h"
#include "cpu_loops.h"
#include "kernel_checks.h"
#include "ops.h"

namespace ls::ops {

namespace {

void check_p(double p, const char* op) {
  LS_CHECK(p >= 0.0 && p <= 1.0, ValueError, op, ": p must be in [0, 1], got ", p);
}

Tensors dropout_forward(const Tensors& in, const Attrs& a) {
  cpu::expect_inputs(in, 1, 1, "dropout");
  const double p = a.f("p", 0.5);
  check_p(p, "dropout");
  const uint64_t seed = uint64_t(a.i("seed")), offset = uint64_t(a.i("offset"));
  Tensor x = contiguous(in[0]);
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  const uint32_t threshold = uint32_t(std::ceil(p * 16777216.0));  // keep iff (bits >> 8) >= it
  const double scale = p < 1.0 ? 1.0 / (1.0 - p) : 0.0;
  DISPATCH_FLOAT(x.dtype(), "dropout", {
    const scalar_t* px = x.data<scalar_t>();
    scalar_t* po = out.data<scalar_t>();
    const scalar_t s = scalar_t(scale);
    parallel_for(0, x.numel(), 16384, [&](int64_t n0, int64_t n1) {
      // One Philox call yields the bits of four consecutive elements.
      for (int64_t n = n0; n < n1;) {
        const Philox4 r = philox4x32_10(offset + uint64_t(n) / 4, seed);
        for (int lane = int(n % 4); lane < 4 && n < n1; ++lane, ++n)
          po[n] = (r.v[lane] >> 8) >= threshold ? px[n] * s : scalar_t(0);
      }
    });
  });
  return {out};
}

}  // namespace

Tensor dropout(const Tensor& x, double p, bool training) {
  LS_CHECK(x.defined(), ValueError, "dropout: input is required");
  check_p(p, "dropout");
  LS_CHECK(is_floating(x.dtype()), TypeError, "dropout: input must be floating, got ",
           dtype_name(x.dtype()));
  if (!training || p == 0.0) return x;
  GeneratorState g = reserve_random(uint64_t(x.numel()));
  return call1("dropout", {x}, {{"p", p}, {"seed", int64_t(g.seed)}, {"offset", int64_t(g.offset)}});
}

LS_REGISTER(dropout) {
  declare_op("dropout", {[](const BackwardCtx& c, const Tensors& g) {
                           return Tensors{call1("dropout", {g[0]}, c.attrs)};
                         },
                         /*save_inputs=*/false});
  register_kernel("dropout", "cpu", dropout_forward, {DType::Float32, DType::Float64});
}

}  // namespace ls::ops
