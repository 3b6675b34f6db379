// Inverted dropout on the GPU, bit-identical to the CPU op cpp/ops/dropout.cpp for the same
// (p, seed, offset): y = x * keep / (1 - p), float32, float64, bfloat16, float16.
//   x any shape (N = x.numel(), element n in row-major order), attrs p, seed, offset
//   keep[n] = (philox4x32_10(offset + n / 4, seed)[n % 4] >> 8) >= ceil(p * 2^24)
// The Philox round function is the one of core/philox.h, compiled for host and device, so both
// backends draw the same stream. One thread per group of four elements: one Philox call gives
// the bits of all four, and the four elements move as one vector (16 bytes for float32) when the
// pointers are aligned. The product x * s rounds once in the compute type (float32 for 16-bit
// inputs), exactly as the CPU computes it, so float32 masks and values match bit for bit and a
// 16-bit result equals the CPU float32 result rounded to 16 bits.
// Registry op: "dropout" {x} attrs p, seed, offset -> {y}; its backward is the same op on the
// gradient (declared with the CPU op).
#include <cmath>

#include "core/philox.h"
#include "core/registry.h"
#include "ops/ops.h"
#include "vec_map.cuh"

namespace ls::cuda {

namespace {

template <typename T>
__global__ void dropout_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t n, uint64_t seed,
                               uint64_t offset, uint32_t threshold, acc_t<T> scale, bool vec) {
  using A = acc_t<T>;
  using P = Pack<T, 4>;
  const int64_t groups = (n + 3) / 4;
  for (int64_t q = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; q < groups;
       q += int64_t(gridDim.x) * blockDim.x) {
    const Philox4 r = philox4x32_10(offset + uint64_t(q), seed);
    const int64_t base = 4 * q;  // elements base .. base + 3
    if (vec && base + 4 <= n) {
      P in = reinterpret_cast<const P*>(x)[q], out;
#pragma unroll
      for (int lane = 0; lane < 4; ++lane)
        out.v[lane] = (r.v[lane] >> 8) >= threshold ? convert<T>(convert<A>(in.v[lane]) * scale)
                                                    : convert<T>(A(0));
      reinterpret_cast<P*>(y)[q] = out;
    } else {
      for (int lane = 0; lane < 4 && base + lane < n; ++lane)
        y[base + lane] = (r.v[lane] >> 8) >= threshold ? convert<T>(convert<A>(x[base + lane]) * scale)
                                                       : convert<T>(A(0));
    }
  }
}

Tensors dropout_forward(const Tensors& in, const Attrs& a) {
  LS_CHECK(in.size() == 1 && in[0].defined(), ValueError, "dropout: expected one input tensor");
  const double p = a.f("p", 0.5);
  LS_CHECK(p >= 0.0 && p <= 1.0, ValueError, "dropout: p must be in [0, 1], got ", p);
  const uint64_t seed = uint64_t(a.i("seed")), offset = uint64_t(a.i("offset"));
  Tensor x = ops::contiguous(in[0]);
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  const int64_t n = x.numel();
  if (n == 0) return {y};
  set_device(x, "dropout");
  const uint32_t threshold = uint32_t(std::ceil(p * 16777216.0));  // keep iff (bits >> 8) >= it
  const double scale = p < 1.0 ? 1.0 / (1.0 - p) : 0.0;
  const int64_t groups = (n + 3) / 4;
  const unsigned blocks = unsigned(std::min<int64_t>((groups + kThreads - 1) / kThreads, int64_t(1) << 20));
  CUDA_DISPATCH_FLOAT(x.dtype(), "dropout", {
    using T = scalar_t;
    const size_t pack = 4 * sizeof(T);
    const bool vec = reinterpret_cast<uintptr_t>(x.raw_data()) % pack == 0 &&
                     reinterpret_cast<uintptr_t>(y.raw_data()) % pack == 0;
    dropout_kernel<T><<<blocks, kThreads, 0, current_stream()>>>(cptr<T>(x), mptr<T>(y), n, seed, offset, threshold,
                                            acc_t<T>(scale), vec);
  });
  check_launch("dropout");
  return {y};
}

}  // namespace

LS_REGISTER(dropout_cuda) {
  register_kernel("dropout", "cuda", dropout_forward,
                  {DType::Float32, DType::Float64, DType::BFloat16, DType::Float16});
}

}  // namespace ls::cuda
