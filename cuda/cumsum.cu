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
// Few long rows (the cumsum of one long vector) would keep only a few blocks busy, so then rows
// are cut into pieces of kSegment: one launch sums each piece, a second scans those sums per
// row, a third scans each piece starting from the sum of the pieces before it. The additions run
// in a fixed order, so results are deterministic (they differ from the CPU's sequential sums
// only by float64 rounding).
#include <algorithm>

#include "core/registry.h"
#include "elementwise.cuh"
#include "ops/ops.h"

namespace ls::cuda {

namespace {

constexpr int kItems = 4;           // values per thread per tile
constexpr int64_t kSegment = 16384;  // piece of a long row scanned by one block (few-row case)

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

// Segment s = (row, piece) is the scan positions [piece * len, min(n, piece * len + len)) of row
// `row` of x (rows, n), pieces segments a row. It writes its running sums to out (when given),
// starting from carry_in[s - 1] (when given and piece > 0: the sum of the row's earlier pieces),
// and its total to totals[s] (when given). kGroup threads (32 or kThreads) a segment,
// kThreads / kGroup segments a block.
template <typename T, typename O, int kGroup>
__global__ void cumsum_kernel(O* __restrict__ out, const T* __restrict__ x,
                              const scan_acc_t<T>* __restrict__ carry_in,
                              scan_acc_t<T>* __restrict__ totals, int64_t segments, int64_t pieces,
                              int64_t n, int64_t len, bool reverse) {
  using A = scan_acc_t<T>;
  constexpr int kTile = kGroup * kItems, kWarps = kThreads / 32, kGroupWarps = kGroup / 32;
  __shared__ A warp_total[kWarps];
  const int g = threadIdx.x / kGroup, t = threadIdx.x % kGroup;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t seg = int64_t(blockIdx.x) * (kThreads / kGroup) + g;
  const bool live = seg < segments;
  const int64_t row = live ? seg / pieces : 0, piece = live ? seg % pieces : 0;
  const int64_t begin = piece * len, end = min(n, begin + len);
  const T* xr = x + row * n;  // xr points at x[row, :]
  O* orow = out ? out + row * n : nullptr;
  A carry = carry_in && live && piece > 0 ? carry_in[seg - 1] : A(0), total = A(0);
  for (int64_t base = begin; base < begin + len; base += kTile) {  // same trips for every group
    A v[kItems];
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      int64_t p = base + int64_t(t) * kItems + i;  // position in scan order
      v[i] = live && p < end ? convert<A>(xr[reverse ? n - 1 - p : p]) : A(0);
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
    if (live && orow) {
#pragma unroll
      for (int i = 0; i < kItems; ++i) {
        int64_t p = base + int64_t(t) * kItems + i;
        if (p < end) orow[reverse ? n - 1 - p : p] = convert<O>(carry + before + v[i]);
      }
    }
    carry += tile_total;
    total += tile_total;
  }
  if (totals && live && t == 0) totals[seg] = total;
}

template <typename T, typename O>
void launch_cumsum(O* out, const T* x, const scan_acc_t<T>* carry_in, scan_acc_t<T>* totals,
                   int64_t rows, int64_t n, int64_t len, bool reverse) {
  const int64_t pieces = (n + len - 1) / len, segments = rows * pieces;
  if (len <= 32 * kItems)
    cumsum_kernel<T, O, 32><<<unsigned((segments + kThreads / 32 - 1) / (kThreads / 32)), kThreads, 0, current_stream()>>>(
        out, x, carry_in, totals, segments, pieces, n, len, reverse);
  else
    cumsum_kernel<T, O, kThreads><<<unsigned(segments), kThreads, 0, current_stream()>>>(out, x, carry_in, totals,
                                                                    segments, pieces, n, len, reverse);
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
      using A = scan_acc_t<T>;
      const T* px = static_cast<const T*>(xt.raw_data());
      O* po = static_cast<O*>(out.raw_data());
      if (rows < 256 && n > 2 * kSegment) {
        // Few long rows: the pieces' totals, their running sums (a scan of rows x pieces), then
        // each piece's running sums from the sum of the pieces before it.
        const int64_t pieces = (n + kSegment - 1) / kSegment;
        const DType acc_dtype = std::is_same_v<A, double> ? DType::Float64 : DType::Int64;
        Tensor totals = Tensor::empty({rows, pieces}, acc_dtype, x.device());
        Tensor before = Tensor::empty({rows, pieces}, acc_dtype, x.device());
        A* pt = static_cast<A*>(totals.raw_data());
        A* pb = static_cast<A*>(before.raw_data());
        launch_cumsum<T, O>(nullptr, px, nullptr, pt, rows, n, kSegment, reverse);
        launch_cumsum<A, A>(pb, pt, nullptr, nullptr, rows, pieces, pieces, false);
        launch_cumsum<T, O>(po, px, pb, nullptr, rows, n, kSegment, reverse);
      } else {
        launch_cumsum<T, O>(po, px, nullptr, nullptr, rows, n, n, reverse);
      }
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
