// Reductions on the GPU: sum over any set of dims, and max along one dim (values and int64
// indices, the registry op behind max/amax/argmax; cpp/ops/reduce.cpp).
//
// sum: reducing the leading dims of a contiguous tensor (bias gradients) sums columns in place
// (col_sum_kernel). Otherwise the reduced dims are moved last and made dense (a CUDA copy when
// needed), so every output element reduces one contiguous row of C elements:
// one block of 256 threads per row, each thread striding over the row, then a shared-memory tree.
// Few long rows (the sum of a whole tensor) would leave most of the GPU idle, so then each row is
// first cut into chunks of kChunk elements reduced by their own blocks, and a second launch sums
// the per-chunk partials (a fixed order, so the result does not depend on timing).
// Accumulation is in float64 for float64 input, float32 otherwise (16-bit inputs included);
// integer inputs accumulate and return int64, as on the CPU.
//
// max: the same layout (dim moved last, dense), rows of C. A row takes one warp (C <= 1024) or a
// block of 256 threads; each thread keeps the best (value, index) of its stride, then a shuffle
// tree (and, for a block, one more over the warps' winners) picks the row's. "Best" is the CPU's:
// NaN beats every number, and among equal values (or NaNs) the lower index wins, so the result
// does not depend on the reduction order. 16-bit floats compare in float32 (exact); the value
// written is the input element itself. Few long rows (amax of a whole tensor) are cut into
// kChunk pieces as for sum, and a second launch picks each row's winner among its pieces'.
#include <algorithm>
#include <numeric>

#include "core/registry.h"
#include "ops/ops.h"
#include "vec_map.cuh"

namespace ls::cuda {

namespace {

constexpr int64_t kChunk = 1 << 15;

template <typename A>
__device__ A block_sum(A acc) {
  __shared__ A partial[kThreads];
  partial[threadIdx.x] = acc;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) partial[threadIdx.x] += partial[threadIdx.x + s];
    __syncthreads();
  }
  return partial[0];
}

// out[row] = sum of x[row, begin:end) where block (chunk, row) covers chunk * len ... + len, read
// as W-element packs (W > 1 only where W divides cols and len and x is 16-byte aligned: bf16 sums
// of one element a load ran at 77% of the copy bandwidth, 0.88x torch, at 2^26 elements).
template <int W, typename T, typename A, typename O>
__global__ void row_sum_kernel(O* out, const T* x, int64_t cols, int64_t len) {
  using P = Pack<T, W>;
  const P* row = reinterpret_cast<const P*>(x + int64_t(blockIdx.y) * cols);
  const int64_t begin = int64_t(blockIdx.x) * len, end = min(cols, begin + len);
  // Four independent accumulators keep four loads in flight per thread.
  A acc[4] = {A(0), A(0), A(0), A(0)};
  const int64_t bd = blockDim.x, last = end / W;
  int64_t p = begin / W + threadIdx.x;
  for (; p + 3 * bd < last; p += 4 * bd) {
    P v[4];
#pragma unroll
    for (int u = 0; u < 4; ++u) v[u] = row[p + u * bd];
#pragma unroll
    for (int u = 0; u < 4; ++u)
#pragma unroll
      for (int j = 0; j < W; ++j) acc[u] += convert<A>(v[u].v[j]);
  }
  for (; p < last; p += bd)
#pragma unroll
    for (int j = 0; j < W; ++j) acc[0] += convert<A>(row[p].v[j]);
  A total = block_sum((acc[0] + acc[1]) + (acc[2] + acc[3]));
  if (threadIdx.x == 0) out[int64_t(blockIdx.y) * gridDim.x + blockIdx.x] = convert<O>(total);
}

// row_sum_kernel over (rows, chunks) blocks, in 16-byte packs where cols and x allow.
template <typename T, typename A, typename O>
void launch_row_sum(O* out, const T* x, int64_t cols, int64_t len, dim3 grid) {
  if (vectorizable<T>(cols, {x}) && len % kVec<T> == 0)
    row_sum_kernel<kVec<T>, T, A, O><<<grid, kThreads, 0, current_stream()>>>(out, x, cols, len);
  else
    row_sum_kernel<1, T, A, O><<<grid, kThreads, 0, current_stream()>>>(out, x, cols, len);
}

// Column sums for a reduction over leading dims of a contiguous x viewed as (R, C) (bias
// gradients: sum over B*T rows): out[s, c] = sum of x[r, c] over split s of the rows. A block
// is 32 packs of W adjacent columns x kColY row lanes, so each warp reads 32 W adjacent elements
// of a row (no transposing copy): 16-byte packs where C and x allow (W = 8 for 16-bit input: a
// warp reads 512 bytes of a row; with one 2-byte element a lane, GPT-2's bias gradients ran at
// 55% of the copy bandwidth); the lanes' partials are added in lane order, and splits (for
// parallelism when C is small) are added by a second launch in split order: the result never
// depends on timing.
constexpr int kColX = 32, kColY = 16;

template <int W, typename T, typename A, typename O>
__global__ void col_sum_kernel(O* out, const T* x, int64_t R, int64_t C, int64_t rows_per) {
  using P = Pack<T, W>;
  __shared__ A part[kColY][kColX * W + 1];
  const int64_t c = (int64_t(blockIdx.x) * kColX + threadIdx.x) * W;  // this thread's first column
  const int64_t r0 = int64_t(blockIdx.y) * rows_per, r1 = min(R, r0 + rows_per);
  A acc[4][W] = {};
  if (c < C) {
    const P* xp = reinterpret_cast<const P*>(x + c);  // xp[r * C / W] = x[r, c : c + W]
    const int64_t cp = C / W;
    int64_t r = r0 + threadIdx.y;
    for (; r + 3 * kColY < r1; r += 4 * kColY) {  // four loads in flight per thread
      P v[4];
#pragma unroll
      for (int u = 0; u < 4; ++u) v[u] = xp[(r + u * kColY) * cp];
#pragma unroll
      for (int u = 0; u < 4; ++u)
#pragma unroll
        for (int j = 0; j < W; ++j) acc[u][j] += convert<A>(v[u].v[j]);
    }
    for (; r < r1; r += kColY) {
      const P v = xp[r * cp];
#pragma unroll
      for (int j = 0; j < W; ++j) acc[0][j] += convert<A>(v.v[j]);
    }
  }
#pragma unroll
  for (int j = 0; j < W; ++j) part[threadIdx.y][threadIdx.x * W + j] = (acc[0][j] + acc[1][j]) + (acc[2][j] + acc[3][j]);
  __syncthreads();
  // the block's kColX W columns, one a thread of the first rows of lanes
  const int tid = threadIdx.y * kColX + threadIdx.x;
  const int64_t col = int64_t(blockIdx.x) * kColX * W + tid;
  if (tid < kColX * W && col < C) {
    A t = part[0][tid];
    for (int y = 1; y < kColY; ++y) t += part[y][tid];
    out[int64_t(blockIdx.y) * C + col] = convert<O>(t);
  }
}

// Columns per thread: a 16-byte pack (at most 8 elements: the shared partials of 16 one-byte
// columns would not fit) when C and x's address allow, else 1.
template <typename T> constexpr int kColPack = std::min(8, kVec<T>);
template <typename T>
int col_sum_width(const T* x, int64_t C) {
  return C % kColPack<T> == 0 && aligned16(x) ? kColPack<T> : 1;
}

// The column sums of x (R, C) into out, over `splits` parts of the rows.
template <typename T, typename A, typename O>
void launch_col_sum(O* out, const T* x, int64_t R, int64_t C, int64_t splits) {
  const int W = col_sum_width(x, C);
  const dim3 grid(unsigned((C + kColX * W - 1) / (kColX * W)), unsigned(splits)), block(kColX, kColY);
  const int64_t rows_per = (R + splits - 1) / splits;
  if (W > 1) col_sum_kernel<kColPack<T>, T, A, O><<<grid, block, 0, current_stream()>>>(out, x, R, C, rows_per);
  else col_sum_kernel<1, T, A, O><<<grid, block, 0, current_stream()>>>(out, x, R, C, rows_per);
}

// Accumulator and output types per input type (see the header).
template <typename T> struct SumTypes { using acc = float; using out = T; };
template <> struct SumTypes<double> { using acc = double; using out = double; };
template <> struct SumTypes<int32_t> { using acc = int64_t; using out = int64_t; };
template <> struct SumTypes<int64_t> { using acc = int64_t; using out = int64_t; };
template <> struct SumTypes<bool> { using acc = int64_t; using out = int64_t; };
template <> struct SumTypes<uint8_t> { using acc = int64_t; using out = int64_t; };

Tensors sum_cuda(const Tensors& in, const Attrs& a) {
  const Tensor& x = in[0];
  std::vector<int64_t> dims = a.ints("dims", {});
  if (dims.empty()) {
    dims.resize(x.dim());
    std::iota(dims.begin(), dims.end(), 0);
  }
  for (auto& d : dims) d = wrap_dim(d, x.dim(), "sum");
  std::sort(dims.begin(), dims.end());
  bool keepdim = a.b("keepdim", false);
  Shape out_shape;
  std::vector<int64_t> perm;
  int64_t cols = 1;
  for (int64_t i = 0; i < x.dim(); ++i) {
    bool r = std::binary_search(dims.begin(), dims.end(), i);
    if (!r) { out_shape.push_back(x.shape()[i]); perm.push_back(i); }
    else if (keepdim) out_shape.push_back(1);
    if (r) cols *= x.shape()[i];
  }
  for (auto d : dims) perm.push_back(d);
  bool integer = !is_floating(x.dtype());
  Tensor out = Tensor::empty(out_shape, integer ? DType::Int64 : x.dtype(), x.device());
  int64_t rows = out.numel();
  if (rows == 0) return {out};
  if (cols == 0) {
    ops::fill_(out, 0.0);
    return {out};
  }
  set_device(out, "sum");
  // Reduced dims leading and x contiguous: column sums in place.
  bool leading = x.is_contiguous() && int64_t(dims.size()) < x.dim();
  for (size_t i = 0; i < dims.size(); ++i) leading &= dims[i] == int64_t(i);
  if (leading) {
    CUDA_DISPATCH_ALL(x.dtype(), "sum", {
      using T = scalar_t;
      using O = typename SumTypes<T>::out;
      using A = typename SumTypes<T>::acc;
      const T* px = static_cast<const T*>(x.raw_data());
      const int64_t R = cols, C = rows, strip = kColX * col_sum_width(px, C), bx = (C + strip - 1) / strip;
      // about 528 blocks in all (four per SM), each of at least 64 rows
      const int64_t splits = std::clamp<int64_t>((528 + bx - 1) / bx, 1, std::max<int64_t>(1, R / 64));
      O* po = static_cast<O*>(out.raw_data());
      if (splits == 1) {
        launch_col_sum<T, A, O>(po, px, R, C, 1);
      } else {
        DType acc_dtype = std::is_same_v<A, double> ? DType::Float64
                          : std::is_same_v<A, int64_t> ? DType::Int64 : DType::Float32;
        Tensor partial = Tensor::empty({splits, C}, acc_dtype, x.device());
        A* pp = static_cast<A*>(partial.raw_data());
        launch_col_sum<T, A, A>(pp, px, R, C, splits);
        launch_col_sum<A, A, O>(po, pp, splits, C, 1);
      }
    });
    check_launch("sum");
    return {out};
  }
  Tensor xr = ops::contiguous(ops::permute(x, perm));
  CUDA_DISPATCH_ALL(x.dtype(), "sum", {
    using T = scalar_t;
    using O = typename SumTypes<T>::out;
    using A = typename SumTypes<T>::acc;
    const T* px = static_cast<const T*>(xr.raw_data());
    O* po = static_cast<O*>(out.raw_data());
    int64_t chunks = (cols + kChunk - 1) / kChunk;
    if (rows < 512 && chunks > 1) {
      DType acc_dtype = std::is_same_v<A, double> ? DType::Float64
                        : std::is_same_v<A, int64_t> ? DType::Int64 : DType::Float32;
      Tensor partial = Tensor::empty({rows, chunks}, acc_dtype, x.device());
      A* pp = static_cast<A*>(partial.raw_data());
      launch_row_sum<T, A, A>(pp, px, cols, kChunk, dim3(unsigned(chunks), unsigned(rows)));
      launch_row_sum<A, A, O>(po, pp, chunks, chunks, dim3(1, unsigned(rows)));
    } else {
      for (int64_t r0 = 0; r0 < rows; r0 += 65535) {  // grid.y holds at most 65535 rows
        unsigned nr = unsigned(std::min<int64_t>(65535, rows - r0));
        launch_row_sum<T, A, O>(po + r0, px + r0 * cols, cols, cols, dim3(1, nr));
      }
    }
  });
  check_launch("sum");
  return {out};
}

// Is (v, i) better than the current best (bv, bi)? bi < 0: nothing yet.
template <typename A>
__device__ __forceinline__ bool better(A v, int64_t i, A bv, int64_t bi) {
  if (i < 0) return false;
  if (bi < 0) return true;
  const bool nv = v != v, nb = bv != bv;  // NaN (never true for integers)
  if (nv || nb) return nv && (!nb || i < bi);
  return v > bv || (v == bv && i < bi);
}

template <typename A>
__device__ __forceinline__ void warp_best(A& bv, int64_t& bi) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    A ov = __shfl_xor_sync(0xffffffffu, bv, off);
    int64_t oi = __shfl_xor_sync(0xffffffffu, bi, off);
    if (better(ov, oi, bv, bi)) {
      bv = ov;
      bi = oi;
    }
  }
}

// Segment s = (row, chunk) of x (rows, cols): [chunk * len, min(cols, chunk * len + len)) of row
// `row` (chunks segments a row). values[s], indices[s] = its max and the index of its
// first position p: p itself, or xi[row, p] when xi holds the indices of x's entries (the second
// pass over per-chunk winners; those indices grow with p, so comparing positions is comparing
// indices). kGroup threads a segment (32 or kThreads), kThreads / kGroup segments a block.
template <typename T, int kGroup>
__global__ void row_max_kernel(T* __restrict__ values, int64_t* __restrict__ indices,
                               const T* __restrict__ x, const int64_t* __restrict__ xi,
                               int64_t segments, int64_t chunks, int64_t cols, int64_t len) {
  using A = acc_t<T>;
  const int g = threadIdx.x / kGroup, t = threadIdx.x % kGroup;
  const int64_t seg = int64_t(blockIdx.x) * (kThreads / kGroup) + g;
  const int64_t row = seg / chunks, begin = (seg % chunks) * len, end = min(cols, begin + len);
  A bv = A(0);
  int64_t bp = -1;
  if (seg < segments) {
    const T* xr = x + row * cols;  // xr points at x[row, :]
    for (int64_t c = begin + t; c < end; c += kGroup) {
      A v = convert<A>(xr[c]);
      if (better(v, c, bv, bp)) {
        bv = v;
        bp = c;
      }
    }
  }
  warp_best(bv, bp);
  if constexpr (kGroup > 32) {
    __shared__ A wv[kThreads / 32];
    __shared__ int64_t wp[kThreads / 32];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) {
      wv[warp] = bv;
      wp[warp] = bp;
    }
    __syncthreads();
    if (warp == 0) {
      bv = lane < kGroup / 32 ? wv[lane] : A(0);
      bp = lane < kGroup / 32 ? wp[lane] : -1;
      warp_best(bv, bp);
    }
  }
  if (t == 0 && seg < segments) {
    values[seg] = x[row * cols + bp];  // the element itself
    indices[seg] = xi ? xi[row * cols + bp] : bp;
  }
}

template <typename T>
void launch_row_max(T* values, int64_t* indices, const T* x, const int64_t* xi, int64_t rows,
                    int64_t cols, int64_t len) {
  const int64_t chunks = (cols + len - 1) / len, segments = rows * chunks;
  if (len <= 1024)
    row_max_kernel<T, 32><<<unsigned((segments + kThreads / 32 - 1) / (kThreads / 32)), kThreads, 0, current_stream()>>>(
        values, indices, x, xi, segments, chunks, cols, len);
  else
    row_max_kernel<T, kThreads><<<unsigned(segments), kThreads, 0, current_stream()>>>(values, indices, x, xi, segments,
                                                                  chunks, cols, len);
}

Tensors max_cuda(const Tensors& in, const Attrs& a) {
  const Tensor& x = in[0];
  int64_t dim = wrap_dim(a.i("dim"), x.dim(), "max");
  bool keepdim = a.b("keepdim", false);
  LS_CHECK(x.dim() == 0 || x.shape()[dim] > 0, IndexError, "max: cannot reduce an empty dimension ",
           dim, " of shape ", shape_str(x.shape()));
  Shape out_shape;
  std::vector<int64_t> perm;
  for (int64_t i = 0; i < x.dim(); ++i) {
    if (i == dim) {
      if (keepdim) out_shape.push_back(1);
    } else {
      out_shape.push_back(x.shape()[i]);
      perm.push_back(i);
    }
  }
  if (x.dim()) perm.push_back(dim);
  Tensor values = Tensor::empty(out_shape, x.dtype(), x.device());
  Tensor indices = Tensor::empty(out_shape, DType::Int64, x.device());
  const int64_t rows = values.numel(), cols = x.dim() ? x.shape()[dim] : 1;
  if (rows == 0) return {values, indices};
  Tensor xr = ops::contiguous(x.dim() ? ops::permute(x, perm) : x);
  set_device(values, "max");
  CUDA_DISPATCH_ALL(x.dtype(), "max", {
    using T = scalar_t;
    T* pv = static_cast<T*>(values.raw_data());
    const T* px = static_cast<const T*>(xr.raw_data());
    const int64_t chunks = (cols + kChunk - 1) / kChunk;
    if (rows < 512 && chunks > 1) {  // few long rows: winners per chunk, then per row
      Tensor part_v = Tensor::empty({rows, chunks}, x.dtype(), x.device());
      Tensor part_i = Tensor::empty({rows, chunks}, DType::Int64, x.device());
      T* ppv = static_cast<T*>(part_v.raw_data());
      launch_row_max<T>(ppv, part_i.data<int64_t>(), px, nullptr, rows, cols, kChunk);
      launch_row_max<T>(pv, indices.data<int64_t>(), ppv, part_i.data<int64_t>(), rows, chunks, chunks);
    } else {
      launch_row_max<T>(pv, indices.data<int64_t>(), px, nullptr, rows, cols, cols);
    }
  });
  check_launch("max");
  return {values, indices};
}

}  // namespace

LS_REGISTER(reduce_cuda) {
  register_kernel("sum", "cuda", sum_cuda);
  register_kernel("max", "cuda", max_cuda,
                  {DType::Float32, DType::Float64, DType::BFloat16, DType::Float16, DType::Int32,
                   DType::Int64, DType::UInt8});
}

}  // namespace ls::cuda
