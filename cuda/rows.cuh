// Shared machinery of the row kernels (softmax, layer_norm, rms_norm, cross_entropy): every one
// of them reduces a contiguous row of C elements (x viewed as (R, C)) and then writes it back.
//
// Layout: a block is (tx, ty) threads; each of its ty row lanes (threadIdx.y) works on one row at
// a time with tx threads (a multiple of 32, so a row lane is whole warps), and the block walks its
// rows grid-stride. A row is read as nvec = C / V vectors of V elements: V = 16 bytes / sizeof(T)
// when C is a multiple of that and every row start is 16-byte aligned (then each load is one
// 128-bit transaction), else V = 1. Thread x owns vectors x, x + tx, x + 2 tx, ...; its first
// kCache vectors stay in registers between the passes of a kernel, so a row of up to
// tx * kCache * V elements (16k float32 or 32k bf16 with 1024 threads; half that for kernels
// with two inputs) is read from memory once. The kernels are compiled for blocks of
// kMaxThreads (__launch_bounds__), which caps them at 64 registers per thread for 1024: the
// cache sizes fit that.
// Longer rows re-read the rest in the later passes, mostly from L2.
//
// Reductions over a row lane: a warp butterfly (every lane ends with bitwise the same value:
// a + b == b + a), then, with several warps per row, a fixed-order sum of the warp results in
// shared memory. Nothing depends on timing, so results are reproducible run to run.
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "elementwise.cuh"

namespace ls::cuda::rows {

constexpr int kCache = 4;        // vectors per thread kept in registers by one-input kernels
constexpr int kCache2 = 2;       // by kernels that read two inputs (y and g, g and x)
// Largest block of a row kernel: 1024 threads (64 registers each); 256 for float64, whose exp
// and log need more registers than that.
template <typename T> constexpr int kMaxThreads = sizeof(T) == 8 ? 256 : 1024;
constexpr int kMaxLanes = 32;    // ty <= 1024 / 32
constexpr int kLaneThreads = 128;  // tx * ty for short rows

// ---- math in the accumulation type (float for 16-bit and float32, double for float64) ----
__device__ __forceinline__ float ex(float v) { return expf(v); }
__device__ __forceinline__ double ex(double v) { return ::exp(v); }
__device__ __forceinline__ float lg(float v) { return logf(v); }
__device__ __forceinline__ double lg(double v) { return ::log(v); }
__device__ __forceinline__ float rsq(float v) { return rsqrtf(v); }
__device__ __forceinline__ double rsq(double v) { return ::rsqrt(v); }

template <typename A> __device__ __forceinline__ A neg_inf() { return -INFINITY; }

// exp inside a kernel whose input and result are of type T: for 16-bit T, ex2.approx (__expf),
// relative error about 2^-21 plus |v| 2^-24 from its scaling, far below the 2^-9 of a 16-bit
// result; float32 and float64 keep the accurate ex. The softmax and cross-entropy kernels
// evaluate one or two exps per element, and with expf their 16-bit forms were compute-bound.
template <typename T, typename A>
__device__ __forceinline__ A ex_for(A v) {
  if constexpr (sizeof(T) == 2) return __expf(v);
  else return ex(v);
}

struct Sum {
  template <typename A> __device__ __forceinline__ A operator()(A a, A b) const { return a + b; }
};
struct Max {
  template <typename A> __device__ __forceinline__ A operator()(A a, A b) const { return a > b ? a : b; }
};

template <typename A, typename Op>
__device__ __forceinline__ A warp_reduce(A v, Op op) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// v reduced over the tx threads of this row lane; every thread of the lane gets the result.
// red: shared scratch of kMaxLanes * 32 elements. Every thread of the block must call it (it
// synchronises the block when a row spans several warps).
template <typename A, typename Op>
__device__ __forceinline__ A row_reduce(A v, Op op, A* red) {
  v = warp_reduce(v, op);
  if (blockDim.x == 32) return v;
  const int lane = threadIdx.x % 32, w = threadIdx.x / 32, nw = blockDim.x / 32;
  A* mine = red + threadIdx.y * 32;
  if (lane == 0) mine[w] = v;
  __syncthreads();
  A r = mine[0];
  for (int i = 1; i < nw; ++i) r = op(r, mine[i]);
  __syncthreads();  // red is reused by the next reduction
  return r;
}

// f(j, v) with v[a] = rows[a][j] for this thread's vectors j = j0, j0 + tx, ... below nvec, in
// batches of U whose loads all issue before any is used, the last, partial batch too: there a
// vector past the end is read as vector j of the batch's first (this thread's own, and valid)
// and not passed to f. (Taken one by one, the up to U - 1 vectors of that tail were U - 1 load
// latencies in a row at the end of every row.)
template <int U, int N, typename T, int V, typename F>
__device__ __forceinline__ void stream_vectors(const Pack<T, V>* const (&rows)[N], int64_t j,
                                               int64_t nvec, F&& f) {
  const int64_t tx = blockDim.x;
  for (; j + (U - 1) * tx < nvec; j += U * tx) {
    Pack<T, V> v[U][N];
#pragma unroll
    for (int u = 0; u < U; ++u)
#pragma unroll
      for (int a = 0; a < N; ++a) v[u][a] = rows[a][j + u * tx];
#pragma unroll
    for (int u = 0; u < U; ++u) f(j + u * tx, v[u]);
  }
  if (U > 1 && j < nvec) {
    Pack<T, V> v[U][N];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t ju = j + u * tx, jl = ju < nvec ? ju : j;
#pragma unroll
      for (int a = 0; a < N; ++a) v[u][a] = rows[a][jl];
    }
#pragma unroll
    for (int u = 0; u < U; ++u)
      if (j + u * tx < nvec) f(j + u * tx, v[u]);
  }
}

// One pass over this thread's vectors of N rows read together (x, or y and g, ...):
// f(j, v) with v[a] = rows[a][j]. First = true loads the first K vectors into the cache c, later
// passes read them from c; vectors past the cache are loaded every pass, in batches of U
// vectors per input that are all loaded before any is used (several 16-byte loads in flight per
// thread on long rows, for the one-pass kernels that cache nothing; the caching kernels keep
// U = 1, as a batch next to the cache would spill registers).
//
// The cache is filled by loads that are all issued before the first is used: each reads vector
// j, or vector 0 of the same row when j is past its end (an L1 hit, never used), so no load sits
// behind a branch of its own. Guarded one by one (if (j < nvec) { load; f }), they compiled to a
// branch around each load and its use: one 16-byte load in flight per thread, and the norm
// forward at two thirds of copy bandwidth (bench/notes_cuda_row_ops.md).
template <bool First, int U = 1, int N, int K, typename T, int V, typename F>
__device__ __forceinline__ void row_pass(const Pack<T, V>* const (&rows)[N], int64_t nvec,
                                         Pack<T, V> (&c)[N][K], F&& f) {
  const int64_t tx = blockDim.x;
  if (First && nvec > 0) {
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int64_t j = threadIdx.x + k * tx, jl = j < nvec ? j : 0;
#pragma unroll
      for (int a = 0; a < N; ++a) c[a][k] = rows[a][jl];
    }
  }
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const int64_t j = threadIdx.x + k * tx;
    if (j < nvec) {
      Pack<T, V> v[N];
#pragma unroll
      for (int a = 0; a < N; ++a) v[a] = c[a][k];
      f(j, v);
    }
  }
  stream_vectors<U>(rows, threadIdx.x + K * tx, nvec, f);
}

template <typename T, int V>
__device__ __forceinline__ const Pack<T, V>* as_vec(const T* p) {
  return reinterpret_cast<const Pack<T, V>*>(p);
}
template <typename T, int V>
__device__ __forceinline__ Pack<T, V>* as_vec(T* p) {
  return reinterpret_cast<Pack<T, V>*>(p);
}

// ---- host side ----

// Running (max, sum of exp(v - max)) of one thread, updated with V values at a time, for inputs
// of type T (A: its accumulation type): the online softmax of the softmax and cross-entropy
// kernels.
template <typename T>
struct Online {
  using A = acc_t<T>;
  A m = neg_inf<A>(), s = A(0);
  template <int V>
  __device__ __forceinline__ void add(const A (&v)[V]) {
    A vm = m;
#pragma unroll
    for (int i = 0; i < V; ++i) vm = v[i] > vm ? v[i] : vm;
    // vm == m also covers a row that is -inf so far (exp(-inf - -inf) would be NaN).
    A acc = vm == m ? s : s * ex_for<T>(m - vm);
#pragma unroll
    for (int i = 0; i < V; ++i) acc += ex_for<T>(v[i] - vm);
    m = vm;
    s = acc;
  }
  // A partial (m, s) rescaled to a larger max M: its share of the sum of exp(v - M); 0 for a
  // part that has seen only -inf (exp(-inf - -inf) would be NaN).
  static __device__ __forceinline__ A rescaled(A m, A s, A M) { return m == neg_inf<A>() ? A(0) : s * ex_for<T>(m - M); }
  // Row statistics (M, S) from every thread's (m, s) over the row lane.
  __device__ __forceinline__ void reduce(A* red, A& M, A& S) const {
    M = row_reduce(m, Max{}, red);
    S = row_reduce(rescaled(m, s, M), Sum{}, red);
  }
};

template <typename A, typename T, int V>
__device__ __forceinline__ void to_acc(const Pack<T, V>& v, A (&out)[V]) {
#pragma unroll
  for (int i = 0; i < V; ++i) out[i] = convert<A>(v.v[i]);
}

// Whether each of R rows, ld elements apart, starts 16-byte aligned at every pointer given: a
// kernel then reads a row's first C - C % kVec elements as vectors and the rest one by one.
template <typename T>
bool row_starts_aligned(int64_t R, int64_t ld, std::initializer_list<const void*> ptrs) {
  return (R <= 1 || ld % kVec<T> == 0) && all_aligned16(ptrs);
}

struct Launch {
  dim3 block;
  unsigned grid;
};

// Threads per row: enough that per_thread vectors each cover the row, 32 to max_tx (at most
// kMaxThreads<T>), a power of two; short rows share a block of kLaneThreads. grid: one row lane
// per row, at most max_grid blocks.
template <typename T>
Launch row_launch(int64_t R, int64_t nvec, int64_t max_grid = int64_t(1) << 30, int per_thread = kCache,
                  int max_tx = kMaxThreads<T>) {
  const int64_t want = (nvec + per_thread - 1) / per_thread;
  int tx = 32;
  while (tx < want && tx < std::min(max_tx, kMaxThreads<T>)) tx *= 2;
  const int ty = tx >= kLaneThreads ? 1 : kLaneThreads / tx;
  const int64_t groups = (R + ty - 1) / ty;
  return {dim3(unsigned(tx), unsigned(ty)), unsigned(std::clamp<int64_t>(groups, 1, max_grid))};
}

inline int device_attr(cudaDeviceAttr attr, int device) {
  int n = 0;
  check(cudaDeviceGetAttribute(&n, attr, device), "cudaDeviceGetAttribute");
  return n;
}

// Statistics and partial sums are kept in the accumulation type: float64 for float64 inputs,
// float32 for everything else (a bf16 rstd would carry a 2^-9 relative error into every
// gradient).
inline DType acc_dtype(DType t) { return t == DType::Float64 ? DType::Float64 : DType::Float32; }

}  // namespace ls::cuda::rows
