// Shared machinery of the elementwise CUDA kernels (copy, cast, binary, unary, where):
//   - device element types for every DType and their float/double compute types;
//   - an Indexer that turns a flat output index into the element offsets of up to 4 strided,
//     broadcast operands (dims collapsed on the host, at most kMaxDims after collapsing);
//   - launch helpers: one thread per output element, grid-stride loop;
//   - the 16-byte packs (Pack, kVec, store_streaming) and their checks (aligned16,
//     all_aligned16, vectorizable) of every CUDA file that reads packs (maps, row kernels, sums,
//     embedding, attention, matmul, MoE, AdamW).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <array>
#include <cstdint>
#include <initializer_list>

#include "core/tensor.h"
#include "cuda_check.cuh"

namespace ls::cuda {

// ---- element types ----
template <typename T> struct Acc { using type = T; };
template <> struct Acc<__nv_bfloat16> { using type = float; };
template <> struct Acc<__half> { using type = float; };
template <typename T> using acc_t = typename Acc<T>::type;

template <typename To, typename From> __device__ __forceinline__ To convert(From v) {
  if constexpr (std::is_same_v<From, __nv_bfloat16> || std::is_same_v<From, __half>) {
    return convert<To>(float(v));
  } else if constexpr (std::is_same_v<To, __nv_bfloat16>) {
    return __float2bfloat16_rn(float(v));
  } else if constexpr (std::is_same_v<To, __half>) {
    return __float2half_rn(float(v));
  } else if constexpr (std::is_same_v<To, bool>) {
    return v != From(0);
  } else {
    return To(v);
  }
}

// ---- 16-byte packs ----
// Elements of T in one 16-byte load or store (8 bf16/fp16, 4 float32, 2 float64).
template <typename T> constexpr int kVec = 16 / int(sizeof(T));

// V elements of T loaded or stored as one (a 16-byte pack at V = kVec<T>).
template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

// *p = v as a streaming store (st.global.cs: the line is first to leave the caches), for results
// that are not read again soon and should not push out of L2 what is.
template <typename T, int V>
__device__ __forceinline__ void store_streaming(Pack<T, V>* p, const Pack<T, V>& v) {
  if constexpr (sizeof(Pack<T, V>) == 16) {
    __stcs(reinterpret_cast<int4*>(p), *reinterpret_cast<const int4*>(&v));
  } else if constexpr (sizeof(Pack<T, V>) == 8) {
    __stcs(reinterpret_cast<int2*>(p), *reinterpret_cast<const int2*>(&v));
  } else if constexpr (sizeof(Pack<T, V>) == 4) {
    __stcs(reinterpret_cast<int*>(p), *reinterpret_cast<const int*>(&v));
  } else if constexpr (sizeof(Pack<T, V>) == 2) {
    __stcs(reinterpret_cast<short*>(p), *reinterpret_cast<const short*>(&v));
  } else {
    *p = v;
  }
}

// *p as a streaming load (ld.global.cs: the line is first to leave the caches), for inputs read
// once, so that they do not push out of L2 what is read again.
template <typename T, int V>
__device__ __forceinline__ Pack<T, V> load_streaming(const Pack<T, V>* p) {
  Pack<T, V> v;
  if constexpr (sizeof(Pack<T, V>) == 16) {
    *reinterpret_cast<int4*>(&v) = __ldcs(reinterpret_cast<const int4*>(p));
  } else if constexpr (sizeof(Pack<T, V>) == 8) {
    *reinterpret_cast<int2*>(&v) = __ldcs(reinterpret_cast<const int2*>(p));
  } else if constexpr (sizeof(Pack<T, V>) == 4) {
    *reinterpret_cast<int*>(&v) = __ldcs(reinterpret_cast<const int*>(p));
  } else if constexpr (sizeof(Pack<T, V>) == 2) {
    *reinterpret_cast<short*>(&v) = __ldcs(reinterpret_cast<const short*>(p));
  } else {
    v = *p;
  }
  return v;
}

// Whether p is 16-byte aligned, so that 16-byte packs may be read or written from there on.
inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }
inline bool aligned16(const Tensor& t) { return aligned16(t.raw_data()); }

// Whether every pointer given is 16-byte aligned (a null pointer, an operand the kernel does not
// have, is skipped).
inline bool all_aligned16(std::initializer_list<const void*> ptrs) {
  for (const void* p : ptrs)
    if (p && !aligned16(p)) return false;
  return true;
}

// Whether rows of C elements of T can be read as 16-byte packs from every pointer given.
template <typename T>
bool vectorizable(int64_t C, std::initializer_list<const void*> ptrs) {
  return C % kVec<T> == 0 && all_aligned16(ptrs);
}

#define LS_CUDA_CASE(enum_v, type, ...) \
  case ::ls::DType::enum_v: { using scalar_t = type; __VA_ARGS__; break; }
#define CUDA_DISPATCH_ALL(dt, op, ...)                         \
  switch (dt) {                                                \
    LS_CUDA_CASE(Float32, float, __VA_ARGS__)                  \
    LS_CUDA_CASE(Float64, double, __VA_ARGS__)                 \
    LS_CUDA_CASE(BFloat16, __nv_bfloat16, __VA_ARGS__)         \
    LS_CUDA_CASE(Float16, __half, __VA_ARGS__)                 \
    LS_CUDA_CASE(Int32, int32_t, __VA_ARGS__)                  \
    LS_CUDA_CASE(Int64, int64_t, __VA_ARGS__)                  \
    LS_CUDA_CASE(Bool, bool, __VA_ARGS__)                      \
    LS_CUDA_CASE(UInt8, uint8_t, __VA_ARGS__)                  \
  }
#define CUDA_DISPATCH_FLOAT(dt, op, ...)                       \
  switch (dt) {                                                \
    LS_CUDA_CASE(Float32, float, __VA_ARGS__)                  \
    LS_CUDA_CASE(Float64, double, __VA_ARGS__)                 \
    LS_CUDA_CASE(BFloat16, __nv_bfloat16, __VA_ARGS__)         \
    LS_CUDA_CASE(Float16, __half, __VA_ARGS__)                 \
    default: ::ls::throw_dtype_error(op, dt);                  \
  }

// ---- indexing ----
constexpr int kMaxDims = 8;

template <int N>
struct Indexer {
  int nd;
  bool small;  // every index and offset fits in 32 bits: the cheap division path
  int64_t size[kMaxDims];
  int64_t stride[N][kMaxDims];  // in elements; 0 where broadcast

  __device__ __forceinline__ void offsets(int64_t i, int64_t (&off)[N]) const {
#pragma unroll
    for (int k = 0; k < N; ++k) off[k] = 0;
    if (small) {  // 64-bit division costs several times the 32-bit one on the GPU
      uint32_t j = uint32_t(i);
      int32_t o[N] = {};
      for (int d = nd - 1; d >= 0; --d) {
        const uint32_t sz = uint32_t(size[d]);
        const uint32_t idx = j % sz;
        j /= sz;
#pragma unroll
        for (int k = 0; k < N; ++k) o[k] += int32_t(idx) * int32_t(stride[k][d]);
      }
#pragma unroll
      for (int k = 0; k < N; ++k) off[k] = o[k];
      return;
    }
    for (int d = nd - 1; d >= 0; --d) {
      int64_t idx = i % size[d];
      i /= size[d];
#pragma unroll
      for (int k = 0; k < N; ++k) off[k] += idx * stride[k][d];
    }
  }
};

// Indexer over `shape` for operands viewed (with broadcasting) as that shape. Adjacent dims
// that are contiguous in every operand are merged, so most calls index a single dimension.
template <int N>
Indexer<N> make_indexer(const Shape& shape, const std::array<const Tensor*, N>& ops,
                        const char* op) {
  int nd = int(shape.size());
  std::vector<std::array<int64_t, N>> st(nd);
  for (int k = 0; k < N; ++k) {
    const Tensor& t = *ops[k];
    int lead = nd - int(t.dim());
    for (int d = 0; d < nd; ++d)
      st[d][k] = d < lead || t.shape()[d - lead] == 1 ? 0 : t.strides()[d - lead];
  }
  std::vector<int64_t> sizes(shape.begin(), shape.end());
  // merge d into d+1 (row-major) when stride[d] == stride[d+1] * size[d+1] for every operand
  for (int d = nd - 2; d >= 0; --d) {
    bool merge = true;
    for (int k = 0; k < N; ++k) merge &= st[d][k] == st[d + 1][k] * sizes[d + 1];
    if (merge) {
      sizes[d + 1] *= sizes[d];
      sizes.erase(sizes.begin() + d);
      st.erase(st.begin() + d);
    }
  }
  LS_CHECK(sizes.size() <= size_t(kMaxDims), ValueError, op, ": more than ", kMaxDims,
           " non-mergeable dimensions");
  Indexer<N> ix{};
  ix.nd = int(sizes.size());
  const int64_t lim = int64_t(1) << 31;
  int64_t n = 1, reach[N] = {};
  for (int d = 0; d < ix.nd; ++d) {
    ix.size[d] = sizes[d];
    n *= sizes[d];
    for (int k = 0; k < N; ++k) {
      ix.stride[k][d] = st[d][k];
      reach[k] += (sizes[d] - 1) * (st[d][k] < 0 ? -st[d][k] : st[d][k]);
    }
  }
  ix.small = n < lim;
  for (int k = 0; k < N; ++k) ix.small &= reach[k] < lim;
  return ix;
}

constexpr int kThreads = 256;
// Dense operands: each thread loads kUnroll elements (a grid-stride apart, so every load stays
// coalesced) before it computes and stores any, which keeps several loads in flight per thread.
constexpr int kUnroll = 4;

inline unsigned grid_for(int64_t n) {
  int64_t blocks = (n + kThreads * kUnroll - 1) / (kThreads * kUnroll);
  return unsigned(std::min<int64_t>(std::max<int64_t>(blocks, 1), 65535 * 8));
}

// Dense loop: v = load(i) for kUnroll indices first, then store(i, v) for each.
template <typename V, typename Load, typename Store>
__device__ __forceinline__ void for_each_dense(int64_t n, Load load, Store store) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t base = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; base < n;
       base += kUnroll * stride) {
    V v[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      int64_t i = base + u * stride;
      if (i < n) v[u] = load(i);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      int64_t i = base + u * stride;
      if (i < n) store(i, v[u]);
    }
  }
}

// Strided loop: body(off) with off[k] the element offset of operand k (0 is the output).
template <int N, typename Body>
__device__ __forceinline__ void for_each_strided(int64_t n, const Indexer<N>& ix, Body body) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    int64_t off[N];
    ix.offsets(i, off);
    body(off);
  }
}

// True when every operand of the indexer walks the output's order with stride 1.
template <int N>
bool is_dense(const Indexer<N>& ix) {
  if (ix.nd != 1) return false;
  for (int k = 0; k < N; ++k)
    if (ix.stride[k][0] != 1) return false;
  return true;
}

inline void set_device(const Tensor& t, const char* op) { check(cudaSetDevice(t.device().index), op); }

}  // namespace ls::cuda
