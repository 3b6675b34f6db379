// cumsum on the GPU: running sums along one dimension (cpp/ops/cumsum.cpp).
//
//   x (A..., N, B...) -> out of the same shape, out[a, i, b] = sum_{j <= i} x[a, j, b]
//   (reverse=true: sum_{j >= i}). Integer and bool inputs give int64, floats keep their dtype.
//   Floats accumulate in float64 (as the CPU does), so only the outputs are rounded; integers in
//   int64. d x: the CPU op's backward, the same op with reverse flipped.
//
// Kernel: x is made dense with `dim` last (a transposing copy when dim is not last; the result
// is transposed back), so each row of N values is one scan. A row takes one warp (N <= 128) or a
// block of 256 threads and walks its tiles of 4 values a thread in order (from the end when
// reverse): each thread scans its 4 values, a shuffle scan gives the warp's prefixes, the warps'
// totals in shared memory the block's, and a carry takes the running total to the next tile.
// The additions run in a fixed order, so results are deterministic (they differ from the CPU's
// sequential sums only by float64 rounding). Limit: a few very long rows (the cumsum of one
// long vector) keep one block each busy; a row is not split over blocks.
#include <algorithm>

#include "core/registry.h"
#include "elementwise.cuh"
#include "ops/ops.h"

namespace ls::cuda {

namespace {

constexpr int kItems = 4;  // values per thread per tile

template <typename T>
using scan_acc_t = std::conditional_t<std::is_integral_v<T>, int64_t, double>;

template <typename A>
__device__ __forceinline__ A warp_inclusive_scan(A v, int lane) {
#pragma unroll
  for (int off = 1; off < 32; off <<= 1) {
    A o = __shfl_up_sync(0xffffffffu, v, off);
    if (lane >= off) v += o;
  }
  return v;
}

// kGroup threads (32 or kThreads) scan one row of n; kThreads / kGroup rows a block.
template <typename T, typename O, int kGroup>
__global__ void cumsum_kernel(O* __restrict__ out, const T* __restrict__ x, int64_t rows,
                              int64_t n, bool reverse) {
  using A = scan_acc_t<T>;
  constexpr int kTile = kGroup * kItems, kWarps = kThreads / 32, kGroupWarps = kGroup / 32;
  __shared__ A warp_total[kWarps];
  const int g = threadIdx.x / kGroup, t = threadIdx.x % kGroup;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t row = int64_t(blockIdx.x) * (kThreads / kGroup) + g;
  const bool live = row < rows;
  const T* xr = x + (live ? row * n : 0);  // xr points at x[row, :]
  O* orow = out + (live ? row * n : 0);
  A carry = A(0);
  for (int64_t base = 0; base < n; base += kTile) {  // every row of the block has n: same trips
    A v[kItems];
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      int64_t p = base + int64_t(t) * kItems + i;  // position in scan order
      v[i] = live && p < n ? convert<A>(xr[reverse ? n - 1 - p : p]) : A(0);
    }
#pragma unroll
    for (int i = 1; i < kItems; ++i) v[i] += v[i - 1];
    A incl = warp_inclusive_scan(v[kItems - 1], lane);
    A before = __shfl_up_sync(0xffffffffu, incl, 1);  // sum of the lanes before this one
    if (lane == 0) before = A(0);
    A tile_total = __shfl_sync(0xffffffffu, incl, 31);
    if constexpr (kGroupWarps > 1) {
      if (lane == 31) warp_total[warp] = incl;
      __syncthreads();
      const int first = warp - warp % kGroupWarps;  // the group's first warp
      A prefix = A(0);
      tile_total = A(0);
      for (int w = first; w < first + kGroupWarps; ++w) {
        if (w < warp) prefix += warp_total[w];
        tile_total += warp_total[w];
      }
      before += prefix;
      __syncthreads();  // warp_total is rewritten by the next tile
    }
    if (live) {
#pragma unroll
      for (int i = 0; i < kItems; ++i) {
        int64_t p = base + int64_t(t) * kItems + i;
        if (p < n) orow[reverse ? n - 1 - p : p] = convert<O>(carry + before + v[i]);
      }
    }
    carry += tile_total;
  }
}

Tensors cumsum_cuda(const Tensors& in, const Attrs& a) {
  LS_CHECK(in.size() == 1 && in[0].defined(), TypeError, "cumsum: expected one input tensor, got ",
           in.size());
  const Tensor& x = in[0];
  int64_t dim = wrap_dim(a.i("dim"), x.dim(), "cumsum");
  bool reverse = a.b("reverse", false);
  const int64_t last = std::max<int64_t>(x.dim(), 1) - 1;
  Tensor xt = ops::contiguous(x.dim() ? ops::transpose(x, dim, last) : ops::reshape(x, {1}));
  DType out_dtype = is_floating(x.dtype()) ? x.dtype() : DType::Int64;
  Tensor out = Tensor::empty(xt.shape(), out_dtype, x.device());
  if (out.numel() > 0) {
    const int64_t n = xt.shape().back(), rows = xt.numel() / n;
    set_device(out, "cumsum");
    CUDA_DISPATCH_ALL(x.dtype(), "cumsum", {
      using T = scalar_t;
      using O = std::conditional_t<std::is_integral_v<T>, int64_t, T>;  // out_dtype
      const T* px = static_cast<const T*>(xt.raw_data());
      O* po = static_cast<O*>(out.raw_data());
      if (n <= 32 * kItems)
        cumsum_kernel<T, O, 32><<<unsigned((rows + kThreads / 32 - 1) / (kThreads / 32)), kThreads>>>(
            po, px, rows, n, reverse);
      else
        cumsum_kernel<T, O, kThreads><<<unsigned(rows), kThreads>>>(po, px, rows, n, reverse);
    });
    check_launch("cumsum");
  }
  if (x.dim() == 0) return {ops::reshape(out, {})};
  return {ops::contiguous(ops::transpose(out, dim, last))};
}

}  // namespace

LS_REGISTER(cumsum_cuda) {
  register_kernel("cumsum", "cuda", cumsum_cuda,
                  {DType::Float32, DType::Float64, DType::BFloat16, DType::Float16, DType::Int32,
                   DType::Int64, DType::UInt8, DType::Bool});
}

}  // namespace ls::cuda
