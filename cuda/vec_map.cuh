// A dense elementwise map with 16-byte loads and stores, shared by the activation kernels
// (gelu, silu, swiglu and their backwards) and the dense float path of the unary ops (exp, ...),
// with the sigmoid those activations use: NI input arrays and NO output arrays of one element
// type T and n elements each, all contiguous; out_k[i] = op(in_0[i], ..., in_{NI-1}[i])_k.
//
// Why not for_each_dense (elementwise.cuh): it issues one scalar load per element, which left
// 16-bit kernels at 50-72% of the copy bandwidth (bench/notes_cuda_elementwise.md). Here each
// thread moves one 16-byte pack (4 float32, 8 bf16/fp16, 2 float64) of every array per iteration
// of a grid-stride loop, so a warp issues 512-byte transactions and the conversions amortise.
// When any pointer is not 16-byte aligned (a view with an odd offset made contiguous elsewhere),
// the same kernel runs with packs of one element. The last n % pack elements form a scalar tail.
// The op computes in acc_t<T> (float for 16-bit and float32, double for float64).
#pragma once
#include <cstdint>

#include "elementwise.cuh"

namespace ls::cuda {

template <typename T, int NI, int NO>
struct MapArgs {
  const T* in[NI];
  T* out[NO];
};

// sigmoid(z) = 1 / (1 + exp(-z)) for the activation ops. In float: exp(-z) as exp2f(-z log2 e)
// (one MUFU.EX2, 2 ulp) and the reciprocal as the approximate division (one MUFU.RCP, 2 ulp),
// against some 25 instructions for expf and an IEEE division: the accurate pair made the 16-bit
// gelu and silu (8 elements per 16-byte load) compute-bound. The relative error stays at a few
// ulp of float32 (the rounding of z log2 e adds |z| 2^-24, as the rounding of z itself already
// does for expf), far inside the float32 tolerance of 1e-5 and invisible after rounding to 16
// bits. Where 1 + exp(-z) exceeds 2^126 (z < -87.3) the result is 0 instead of a value below
// 1e-38. float64 keeps the exact formula.
__device__ __forceinline__ float sigmoid(float z) {
  return __fdividef(1.0f, 1.0f + exp2f(-1.44269504088896340736f * z));
}
__device__ __forceinline__ double sigmoid(double z) { return 1.0 / (1.0 + exp(-z)); }

// One element through the op: loads convert to the compute type, results round back to T.
template <typename T, int NI, int NO, typename Op>
__device__ __forceinline__ void map_one(const Op& op, const MapArgs<T, NI, NO>& a, int64_t i) {
  using A = acc_t<T>;
  A x[NI], y[NO];
#pragma unroll
  for (int k = 0; k < NI; ++k) x[k] = convert<A>(a.in[k][i]);
  op(x, y);
#pragma unroll
  for (int k = 0; k < NO; ++k) a.out[k][i] = convert<T>(y[k]);
}

// One pack (already loaded into in) through the op, stored at pack index p.
template <int V, typename T, int NI, int NO, typename Op>
__device__ __forceinline__ void map_pack(const Op& op, const Pack<T, V> (&in)[NI], const MapArgs<T, NI, NO>& a,
                                         int64_t p) {
  using A = acc_t<T>;
  Pack<T, V> out[NO];
#pragma unroll
  for (int j = 0; j < V; ++j) {
    A x[NI], y[NO];
#pragma unroll
    for (int k = 0; k < NI; ++k) x[k] = convert<A>(in[k].v[j]);
    op(x, y);
#pragma unroll
    for (int k = 0; k < NO; ++k) out[k].v[j] = convert<T>(y[k]);
  }
#pragma unroll
  for (int k = 0; k < NO; ++k) reinterpret_cast<Pack<T, V>*>(a.out[k])[p] = out[k];
}

// One pack of every array per thread and iteration, with enough blocks that the loop runs once.
// On an H100, for bf16 gelu and silu at 32768 x 4096, this took 0.180 ms (the copy bandwidth,
// as torch). Four packs a grid stride apart took 0.183-0.184 ms, and four packs a block apart
// 0.182 ms (bench/notes_cuda_elementwise.md). The four packs (64 bytes of loads in flight per
// thread) came from an H200 measurement at 3f2420c; the H200 was not re-measured.
template <int V, typename T, int NI, int NO, typename Op>
__global__ void map_kernel(Op op, MapArgs<T, NI, NO> a, int64_t n) {
  using P = Pack<T, V>;
  const int64_t packs = n / V;
  const int64_t first = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  for (int64_t p = first; p < packs; p += int64_t(gridDim.x) * blockDim.x) {
    P in[NI];
#pragma unroll
    for (int k = 0; k < NI; ++k) in[k] = reinterpret_cast<const P*>(a.in[k])[p];
    map_pack<V>(op, in, a, p);
  }
  // tail: elements packs * V .. n - 1 (fewer than V), one per thread of the first threads
  const int64_t i = packs * V + first;
  if (i < n) map_one(op, a, i);
}

// Launcher: picks 16-byte packs when every pointer allows them.
template <typename T, int NI, int NO, typename Op>
void launch_map(const Op& op, const MapArgs<T, NI, NO>& a, int64_t n, const char* name) {
  if (n == 0) return;
  constexpr int V = kVec<T>;
  bool aligned = true;
  for (int k = 0; k < NI; ++k) aligned &= aligned16(a.in[k]);
  for (int k = 0; k < NO; ++k) aligned &= aligned16(a.out[k]);
  const int64_t per_thread = aligned ? V : 1;
  // A block per kThreads packs, capped (the loop strides over the rest); at least one block so
  // the tail runs.
  const unsigned blocks = grid_stride_blocks(n / per_thread, kThreads);
  if (aligned)
    map_kernel<V><<<blocks, kThreads, 0, current_stream()>>>(op, a, n);
  else
    map_kernel<1><<<blocks, kThreads, 0, current_stream()>>>(op, a, n);
  check_launch(name);
}

// Row strides (in elements) of a map's arrays, for map_rows.
template <int NI, int NO>
struct RowStrides {
  int64_t in[NI];
  int64_t out[NO];
};

// The same map over R rows of C elements whose arrays each have a row stride of their own: the
// two halves of a fused projection ((..., 2 C)[..., :C] and [..., C:], SwiGLU's gate and up) read
// and written where they are instead of through contiguous copies. Threads over a row's packs,
// blocks over rows (grid-stride both ways); one pack per array and iteration, as map_kernel.
template <int V, typename T, int NI, int NO, typename Op>
__global__ void map_rows_kernel(Op op, MapArgs<T, NI, NO> a, RowStrides<NI, NO> ld, int64_t R, int64_t C) {
  using P = Pack<T, V>;
  const int64_t packs = C / V;
  for (int64_t r = blockIdx.y; r < R; r += gridDim.y) {
    MapArgs<T, NI, NO> row;  // the arrays' row r
#pragma unroll
    for (int k = 0; k < NI; ++k) row.in[k] = a.in[k] + r * ld.in[k];
#pragma unroll
    for (int k = 0; k < NO; ++k) row.out[k] = a.out[k] + r * ld.out[k];
    for (int64_t p = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; p < packs; p += int64_t(gridDim.x) * blockDim.x) {
      P in[NI];
#pragma unroll
      for (int k = 0; k < NI; ++k) in[k] = reinterpret_cast<const P*>(row.in[k])[p];
      map_pack<V>(op, in, row, p);
    }
  }
}

// Launcher: 16-byte packs when C, every row stride and every pointer allow them.
template <typename T, int NI, int NO, typename Op>
void launch_map_rows(const Op& op, const MapArgs<T, NI, NO>& a, const RowStrides<NI, NO>& ld, int64_t R,
                     int64_t C, const char* name) {
  if (R == 0 || C == 0) return;
  constexpr int V = kVec<T>;
  bool packed = C % V == 0;
  for (int k = 0; k < NI; ++k) packed &= aligned16(a.in[k]) && ld.in[k] % V == 0;
  for (int k = 0; k < NO; ++k) packed &= aligned16(a.out[k]) && ld.out[k] % V == 0;
  const int64_t packs = packed ? C / V : C;
  const unsigned tx = unsigned(std::min<int64_t>(kThreads, (packs + 31) / 32 * 32));
  const dim3 grid(unsigned(std::min<int64_t>((packs + tx - 1) / tx, 1024)), unsigned(std::min<int64_t>(R, 65535)));
  if (packed)
    map_rows_kernel<V><<<grid, tx, 0, current_stream()>>>(op, a, ld, R, C);
  else
    map_rows_kernel<1><<<grid, tx, 0, current_stream()>>>(op, a, ld, R, C);
  check_launch(name);
}

// The element pointer of a tensor as the CUDA element type.
template <typename T> const T* cptr(const Tensor& t) { return static_cast<const T*>(t.raw_data()); }
template <typename T> T* mptr(const Tensor& t) { return static_cast<T*>(t.raw_data()); }

}  // namespace ls::cuda
