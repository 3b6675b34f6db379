// A dense elementwise map with 16-byte loads and stores, shared by the activation kernels
// (gelu, silu, swiglu and their backwards): NI input arrays and NO output arrays of one element
// type T and n elements each, all contiguous; out_k[i] = op(in_0[i], ..., in_{NI-1}[i])_k.
//
// Why not for_each_dense (elementwise.cuh): it issues one scalar load per element, which left
// 16-bit kernels at 50-72% of the copy bandwidth (bench/notes_cuda_elementwise.md). Here each
// thread moves one 16-byte pack per array (4 float32, 8 bf16/fp16, 2 float64) per iteration of a
// grid-stride loop, so a warp issues 512-byte transactions and the element conversions amortise.
// When any pointer is not 16-byte aligned (a view with an odd offset made contiguous elsewhere),
// the same kernel runs with packs of one element. The last n % pack elements form a scalar tail.
// The op computes in acc_t<T> (float for 16-bit and float32, double for float64).
#pragma once
#include <cstdint>

#include "elementwise.cuh"

namespace ls::cuda {

template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

template <typename T, int NI, int NO>
struct MapArgs {
  const T* in[NI];
  T* out[NO];
};

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

template <int V, typename T, int NI, int NO, typename Op>
__global__ void map_kernel(Op op, MapArgs<T, NI, NO> a, int64_t n) {
  using A = acc_t<T>;
  using P = Pack<T, V>;
  const int64_t packs = n / V;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t first = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  for (int64_t p = first; p < packs; p += stride) {
    P in[NI];  // all loads of this pack are issued before any math
#pragma unroll
    for (int k = 0; k < NI; ++k) in[k] = reinterpret_cast<const P*>(a.in[k])[p];
    P out[NO];
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
    for (int k = 0; k < NO; ++k) reinterpret_cast<P*>(a.out[k])[p] = out[k];
  }
  // tail: elements packs * V .. n - 1 (fewer than V), one per thread of the first threads
  const int64_t i = packs * V + first;
  if (i < n) map_one(op, a, i);
}

// Launcher: picks 16-byte packs when every pointer allows them.
template <typename T, int NI, int NO, typename Op>
void launch_map(const Op& op, const MapArgs<T, NI, NO>& a, int64_t n, const char* name) {
  if (n == 0) return;
  constexpr int V = 16 / sizeof(T);
  bool aligned = true;
  for (int k = 0; k < NI; ++k) aligned &= reinterpret_cast<uintptr_t>(a.in[k]) % 16 == 0;
  for (int k = 0; k < NO; ++k) aligned &= reinterpret_cast<uintptr_t>(a.out[k]) % 16 == 0;
  const int64_t per_thread = aligned ? V : 1;
  // Enough blocks for one pack per thread, capped (the loop strides over the rest); at least one
  // block so the tail runs.
  int64_t blocks = (n / per_thread + kThreads - 1) / kThreads;
  blocks = std::min<int64_t>(std::max<int64_t>(blocks, 1), int64_t(1) << 20);
  if (aligned)
    map_kernel<V><<<unsigned(blocks), kThreads, 0, current_stream()>>>(op, a, n);
  else
    map_kernel<1><<<unsigned(blocks), kThreads, 0, current_stream()>>>(op, a, n);
  check_launch(name);
}

// The element pointer of a tensor as the CUDA element type.
template <typename T> const T* cptr(const Tensor& t) { return static_cast<const T*>(t.raw_data()); }
template <typename T> T* mptr(const Tensor& t) { return static_cast<T*>(t.raw_data()); }

}  // namespace ls::cuda
