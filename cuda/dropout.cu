// Inverted dropout on the GPU, bit-identical to the CPU op cpp/ops/dropout.cpp for the same
// (p, seed, offset): y = x * keep / (1 - p), float32, float64, bfloat16, float16.
//   x any shape (N = x.numel(), element n in row-major order), attrs p, seed, offset
//   keep[n] = (philox4x32_10(offset + n / 4, seed)[n % 4] >> 8) >= ceil(p * 2^24)
// The Philox round function is the one of core/philox.h, compiled for host and device, so both
// backends draw the same stream. One Philox call gives the bits of four elements; a thread takes
// kGroups such groups (two for 16-bit types), whose elements move as one 16-byte vector (32 bytes
// for float64) when the pointers are aligned. The product x * s rounds once in the compute type (float32 for 16-bit
// inputs), exactly as the CPU computes it, so float32 masks and values match bit for bit and a
// 16-bit result equals the CPU float32 result rounded to 16 bits.
// Registry op: "dropout" {x} attrs p, seed, offset -> {y}; its backward is the same op on the
// gradient (declared with the CPU op).
#include <cmath>

#include "core/philox.h"
#include "core/registry.h"
#include "ops/kernel_checks.h"
#include "ops/ops.h"
#include "vec_map.cuh"

namespace ls::cuda {

namespace {

// G Philox groups (4 elements each) per thread: 2 for 16-bit types, so a thread's 8 elements
// move as one 16-byte vector (with 1, bf16 moved 8 bytes at a time behind 10 Philox rounds per
// 4 elements, and the kernel ran at 55% of the H200's copy bandwidth); 1 otherwise.
template <typename T>
constexpr int kGroups = sizeof(T) == 2 ? 2 : 1;

template <typename T, int G>
__global__ void dropout_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t n, uint64_t seed,
                               uint64_t offset, uint32_t threshold, acc_t<T> scale, bool vec) {
  using A = acc_t<T>;
  using P = Pack<T, 4 * G>;
  const int64_t groups = (n + 3) / 4, units = (groups + G - 1) / G;
  for (int64_t u = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; u < units;
       u += int64_t(gridDim.x) * blockDim.x) {
    Philox4 r[G];
#pragma unroll
    for (int k = 0; k < G; ++k) r[k] = philox4x32_10(offset + uint64_t(G * u + k), seed);
    const int64_t base = 4 * G * u;  // elements base .. base + 4G - 1
    auto keep = [&](int e) { return (r[e / 4].v[e % 4] >> 8) >= threshold; };
    if (vec && base + 4 * G <= n) {
      P in = reinterpret_cast<const P*>(x)[u], out;
#pragma unroll
      for (int e = 0; e < 4 * G; ++e)
        out.v[e] = keep(e) ? convert<T>(convert<A>(in.v[e]) * scale) : convert<T>(A(0));
      reinterpret_cast<P*>(y)[u] = out;
    } else {
      for (int e = 0; e < 4 * G && base + e < n; ++e)
        y[base + e] = keep(e) ? convert<T>(convert<A>(x[base + e]) * scale) : convert<T>(A(0));
    }
  }
}

Tensors dropout_forward(const Tensors& in, const Attrs& a) {
  cpu::expect_inputs(in, 1, 1, "dropout");
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
  CUDA_DISPATCH_FLOAT(x.dtype(), "dropout", {
    using T = scalar_t;
    constexpr int G = kGroups<T>;
    const int64_t units = ((n + 3) / 4 + G - 1) / G;
    const unsigned blocks = grid_stride_blocks(units, kThreads);
    const size_t pack = 4 * G * sizeof(T);
    const bool vec = reinterpret_cast<uintptr_t>(x.raw_data()) % pack == 0 &&
                     reinterpret_cast<uintptr_t>(y.raw_data()) % pack == 0;
    dropout_kernel<T, G><<<blocks, kThreads, 0, current_stream()>>>(cptr<T>(x), mptr<T>(y), n, seed, offset,
                                                                    threshold, acc_t<T>(scale), vec);
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
