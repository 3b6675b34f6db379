// The kernels of layer_norm.cu and rms_norm.cu: one forward and one backward row kernel for both
// ops, told apart by Centered (layer_norm: the row mean is subtracted; rms_norm: mu = 0), with
// the row machinery of rows.cuh. x (..., C) is viewed as (R, C).
//
//   mu = Centered ? sum_c x[c] / C : 0      rstd = 1 / sqrt(sum_c (x[c] - mu)^2 / C + eps)
//   xhat = (x - mu) rstd                    y = xhat * w + b
//   backward, per row, with dxhat = g * w:
//     dx = rstd (dxhat - [Centered] mean_c(dxhat) - xhat mean_c(dxhat xhat))
//     dw = sum_rows g xhat                  db = sum_rows g
// (for rms_norm this is the usual dx = rstd dxhat - x rstd^3 mean_c(dxhat x)).
//
// The variants fused with the residual add before the norm (add_layer_norm, add_rms_norm) are
// the same kernels with a template flag each: Add (forward) normalises h = x + r, formed in the
// accumulation type and rounded to T as a separate add would round it, written once and cached
// by the first pass (add_row_pass), so x and r are read once; HasDh (backward, x is then h) reads
// dh in the dx pass and writes dx = dh + the norm's gradient, rounded once.
//
// Forward: the row is read once into registers; the mean (Centered only), the sum of squared
// deviations from it (two-pass variance, no cancellation) and the write of y all come from
// registers: one read and one write of x (with Add: one read of x and r, one write of h and y).
// Backward: one kernel reads g and x once (cached), reduces the row sums, writes dx and adds
// g xhat and g into its block's accumulators of dw and db; a second small kernel adds the
// per-block partials in block order (below). Vectorised 16- and 32-bit rows of up to 4096
// elements take backward_regs_kernel instead: the accumulators in registers and the next row
// loaded while this one is reduced.
//
// Statistics are kept in the accumulation type: float64 for float64 inputs, float32 otherwise
// (a bf16 rstd would carry a 2^-9 relative error into every gradient).
#pragma once
#include <initializer_list>
#include <utility>

#include "ops/kernel_checks.h"
#include "rows.cuh"

namespace ls::cuda::norm {

using namespace rows;

// ---- forward ----

// The first pass of a norm fused with the residual add before it (add_layer_norm,
// add_rms_norm): h = x + r (added in the accumulation type, rounded to T as a separate add
// would) is written to memory and kept in the cache c, so that the later passes are
// row_pass<false> over h: the cached vectors come from registers, the rest are read back from
// h, which this thread has just written. f(j, v) sees v[0] = h[j], as after row_pass<true>.
template <int K, typename T, int V, typename F>
__device__ __forceinline__ void add_row_pass(const Pack<T, V>* x, const Pack<T, V>* r, Pack<T, V>* h,
                                             int64_t nvec, Pack<T, V> (&c)[1][K], F&& f) {
  using A = acc_t<T>;
  const int64_t tx = blockDim.x;
  auto add = [&](int64_t j) {
    const Pack<T, V> a = x[j], b = r[j];
    Pack<T, V> s;
#pragma unroll
    for (int i = 0; i < V; ++i) s.v[i] = convert<T>(convert<A>(a.v[i]) + convert<A>(b.v[i]));
    h[j] = s;
    return s;
  };
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const int64_t j = threadIdx.x + k * tx;
    if (j < nvec) {
      c[0][k] = add(j);
      const Pack<T, V> v[1] = {c[0][k]};
      f(j, v);
    }
  }
  for (int64_t j = threadIdx.x + K * tx; j < nvec; j += tx) {
    const Pack<T, V> v[1] = {add(j)};
    f(j, v);
  }
}

// mean may be null when !Centered. Add: the row normalised is h = x + res, written to h by the
// first pass (h and res are null otherwise); h is not __restrict__, as the later passes read
// back through it what they wrote.
template <typename T, int V, bool Centered, bool HasW, bool HasB, bool Add>
__global__ void __launch_bounds__(kMaxThreads<T>)
    forward_kernel(T* __restrict__ y, T* h, acc_t<T>* __restrict__ mean, acc_t<T>* __restrict__ rstd,
                   const T* __restrict__ x, const T* __restrict__ res, const T* __restrict__ w,
                   const T* __restrict__ b, int64_t R, int64_t C, acc_t<T> eps) {
  using A = acc_t<T>;
  __shared__ A red[kMaxLanes * 32];
  const int64_t nvec = C / V;
  const Pack<T, V>* wv = as_vec<T, V>(w);
  const Pack<T, V>* bv = as_vec<T, V>(b);
  for (int64_t base = int64_t(blockIdx.x) * blockDim.y; base < R; base += int64_t(gridDim.x) * blockDim.y) {
    const int64_t r = base + threadIdx.y;
    const int64_t n = r < R ? nvec : 0;  // a lane past the last row joins the reductions only
    const int64_t off = (r < R ? r : 0) * C;
    const Pack<T, V>* src[1] = {as_vec<T, V>((Add ? h : x) + off)};  // x[r, :] (h[r, :] if Add)
    Pack<T, V>* dst = as_vec<T, V>(y + off);
    Pack<T, V> c[1][kCache];
    A part = 0;  // sum x (Centered) or sum x^2
    auto first = [&](int64_t, const Pack<T, V> (&v)[1]) {
#pragma unroll
      for (int i = 0; i < V; ++i) {
        const A a = convert<A>(v[0].v[i]);
        part += Centered ? a : a * a;
      }
    };
    if constexpr (Add)
      add_row_pass(as_vec<T, V>(x + off), as_vec<T, V>(res + off), as_vec<T, V>(h + off), n, c, first);
    else
      row_pass<true>(src, n, c, first);
    A mu = 0;
    if constexpr (Centered) {
      mu = row_reduce(part, Sum{}, red) / A(C);
      part = 0;
      row_pass<false>(src, n, c, [&](int64_t, const Pack<T, V> (&v)[1]) {
#pragma unroll
        for (int i = 0; i < V; ++i) {
          const A d = convert<A>(v[0].v[i]) - mu;
          part += d * d;
        }
      });
    }
    const A rs = A(1) / sqrt(row_reduce(part, Sum{}, red) / A(C) + eps);
    row_pass<false>(src, n, c, [&](int64_t j, const Pack<T, V> (&v)[1]) {
      Pack<T, V> out, wj, bj;
      if (HasW) wj = wv[j];
      if (HasB) bj = bv[j];
#pragma unroll
      for (int i = 0; i < V; ++i) {
        A a = (convert<A>(v[0].v[i]) - mu) * rs;
        if (HasW) a *= convert<A>(wj.v[i]);
        if (HasB) a += convert<A>(bj.v[i]);
        out.v[i] = convert<T>(a);
      }
      dst[j] = out;
    });
    if (r < R && threadIdx.x == 0) {
      if (Centered) mean[r] = mu;
      rstd[r] = rs;
    }
  }
}

// ---- deterministic parameter gradients ----
//
// Stage 1 (inside the backward row kernel): every row lane of a block owns an accumulator row of
// parts * C floats (in shared memory, or in a global scratch when C is too large for it), one
// block of C per gradient (dw, db). Within a block of C the element i of row vector j sits at
// i * nvec + j, so the 32 threads of a warp, which own 32 consecutive vectors, touch 32
// consecutive words: no shared-memory bank conflicts (the natural order j * V + i put them V words
// apart, a V-way conflict on every read-modify-write, which made this the bottleneck of the
// backward), and coalesced accesses in the global scratch. A thread only ever touches the
// elements of the vectors it owns, so no atomics are needed. At the end the block adds its lanes
// in lane order into partial[blockIdx.x, :] (same order of elements). The grid is a fixed
// function of the device, so the rows every block sees do not depend on timing.
// Stage 2 (column_sum_kernel): out[c] = sum over blocks of partial[b, c] in a fixed order,
// scattered back to the natural column order.

// Zeroes this thread's owned elements of its row lane's accumulators (width = parts * C).
template <int V, typename A>
__device__ __forceinline__ void zero_owned(A* acc, int parts, int64_t C) {
  const int64_t nvec = C / V;
  for (int64_t j = threadIdx.x; j < nvec; j += blockDim.x)
    for (int p = 0; p < parts; ++p)
#pragma unroll
      for (int i = 0; i < V; ++i) acc[p * C + i * nvec + j] = A(0);
}

// After the row loop: partial[blockIdx.x, q] = sum over lanes of acc_block[lane, q].
template <typename A>
__device__ __forceinline__ void store_block_partial(const A* acc_block, A* partial, int64_t width) {
  __syncthreads();
  const int nthreads = blockDim.x * blockDim.y, tid = threadIdx.y * blockDim.x + threadIdx.x;
  for (int64_t q = tid; q < width; q += nthreads) {
    A s = A(0);
    for (int l = 0; l < int(blockDim.y); ++l) s += acc_block[l * width + q];
    partial[blockIdx.x * width + q] = s;
  }
}

// Up to two gradients (dw, db) summed by one launch; out[p] receives block p of the partial rows.
template <typename T>
struct ColumnOuts {
  T* out[2];
  int parts;
};

// out[p][j * V + i] = sum_b partial[b, p * C + i * nvec + j]. Block (32, kSumLanes): 32 adjacent
// partial columns (coalesced reads); lane y adds the partial rows b = y, y + kSumLanes, ...
// (several loads in flight per thread), and the lane sums are added in lane order: a fixed order.
// kSumLanes = 32 keeps the serial chain per thread short (the grid has only parts * C / 32
// blocks, 24 to 256 for the usual widths).
constexpr int kSumLanes = 32;

template <typename T, typename A>
__global__ void column_sum_kernel(ColumnOuts<T> outs, const A* __restrict__ partial, int64_t blocks,
                                  int64_t C, int V) {
  __shared__ A lane_sum[kSumLanes][33];
  const int64_t width = outs.parts * C;
  const int64_t q = int64_t(blockIdx.x) * 32 + threadIdx.x;
  A s = A(0);
  if (q < width) {
#pragma unroll 4
    for (int64_t b = threadIdx.y; b < blocks; b += kSumLanes) s += partial[b * width + q];
  }
  lane_sum[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && q < width) {
    for (int l = 1; l < kSumLanes; ++l) s += lane_sum[l][threadIdx.x];
    const int64_t nvec = C / V, p = q / C, k = q % C;
    T* out = p == 0 ? outs.out[0] : outs.out[1];  // not out[p]: a dynamic index spills outs to the stack
    out[(k % nvec) * V + k / nvec] = convert<T>(s);
  }
}

// Where a backward kernel keeps its per-lane accumulators.
struct AccPlan {
  Launch launch;
  size_t smem = 0;  // dynamic shared memory bytes (0: the accumulators are in scratch)
  bool in_smem = false;
};

// Launch for a backward row kernel accumulating width = parts * C values per row lane: kCache2
// vectors per thread (wider row lanes, fewer of them, less shared memory per block) and a grid
// of 1024 threads per SM (the register limit of these kernels allows no more; every block
// writes a partial row, so more blocks would only add partial traffic). The accumulators go to
// shared memory when they fit.
template <typename T>
AccPlan acc_plan(int64_t R, int64_t nvec, int64_t width, size_t acc_size, size_t static_smem, int device) {
  const int sms = device_attr(cudaDevAttrMultiProcessorCount, device);
  Launch L = row_launch<T>(R, nvec, 1, kCache2);
  const int threads = int(L.block.x * L.block.y);
  L = row_launch<T>(R, nvec, int64_t(sms) * std::max(1, 1024 / threads), kCache2);
  AccPlan plan{L};
  if (width == 0) return plan;
  const size_t need = size_t(L.block.y) * size_t(width) * acc_size;
  const size_t limit = size_t(device_attr(cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  if (need + static_smem <= limit) {
    plan.smem = need;
    plan.in_smem = true;
  }
  return plan;
}

// ---- backward ----

// The backward's per-vector math, shared by both backward kernels. With dxhat = g w and
// xhat = (x - mu) rstd: the row sums s1 += dxhat (Centered only) and s2 += dxhat xhat.
// w is read only with HasW.
template <bool Centered, bool HasW, typename T, int V, typename A>
__device__ __forceinline__ void add_row_sums(const Pack<T, V>& g, const Pack<T, V>& x, const Pack<T, V>& w,
                                             A mu, A rs, A& s1, A& s2) {
#pragma unroll
  for (int i = 0; i < V; ++i) {
    A gw = convert<A>(g.v[i]);
    if (HasW) gw *= convert<A>(w.v[i]);
    if (Centered) s1 += gw;
    s2 += gw * ((convert<A>(x.v[i]) - mu) * rs);
  }
}

// dx of one vector from the row means m1 = mean(dxhat) (0 when not Centered) and m2 =
// mean(dxhat xhat), plus dh with HasDh; param(i, g, xhat) receives element i's g and xhat, whose
// product (dw) and g (db) the kernel accumulates. w is read only with HasW, dh only with HasDh.
template <bool HasW, bool HasDh, typename T, int V, typename A, typename Param>
__device__ __forceinline__ Pack<T, V> dx_vec(const Pack<T, V>& g, const Pack<T, V>& x, const Pack<T, V>& w,
                                            const Pack<T, V>& dh, A mu, A rs, A m1, A m2, Param&& param) {
  Pack<T, V> out;
#pragma unroll
  for (int i = 0; i < V; ++i) {
    const A gr = convert<A>(g.v[i]);
    const A xhat = (convert<A>(x.v[i]) - mu) * rs;
    const A gw = HasW ? gr * convert<A>(w.v[i]) : gr;
    const A d = rs * (gw - m1 - xhat * m2);
    out.v[i] = convert<T>(HasDh ? convert<A>(dh.v[i]) + d : d);
    param(i, gr, xhat);
  }
  return out;
}

// acc_global: the accumulators when not in shared memory (blockDim.y lanes of parts * C per
// block); partial: (gridDim.x, parts * C). dw_at / db_at: the accumulator block (0 or 1) of dw /
// db, or -1 when that gradient is not wanted. mean may be null when !Centered. HasDh:
// dx = dh + the norm's gradient (the fused ops' backward, x is h); dh is null otherwise.
template <typename T, int V, bool Centered, bool HasW, bool HasDh>
__global__ void __launch_bounds__(kMaxThreads<T>)
    backward_kernel(T* __restrict__ dx, acc_t<T>* acc_global, acc_t<T>* __restrict__ partial,
                    const T* __restrict__ g, const T* __restrict__ dh, const T* __restrict__ x,
                    const T* __restrict__ w, const acc_t<T>* __restrict__ mean,
                    const acc_t<T>* __restrict__ rstd, int64_t R, int64_t C, int dw_at, int db_at,
                    bool acc_in_smem) {
  using A = acc_t<T>;
  __shared__ A red[kMaxLanes * 32];
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int64_t nvec = C / V;
  const int parts = (dw_at >= 0) + (db_at >= 0);
  const int64_t width = parts * C;
  A* acc_block = acc_in_smem ? reinterpret_cast<A*>(smem_raw)
                 : parts ? acc_global + int64_t(blockIdx.x) * blockDim.y * width : nullptr;
  A* acc = acc_block + threadIdx.y * width;  // this lane's accumulators
  A* acc_w = dw_at >= 0 ? acc + dw_at * C : nullptr;
  A* acc_b = db_at >= 0 ? acc + db_at * C : nullptr;
  if (parts) zero_owned<V>(acc, parts, C);
  const Pack<T, V>* wv = as_vec<T, V>(w);
  for (int64_t base = int64_t(blockIdx.x) * blockDim.y; base < R; base += int64_t(gridDim.x) * blockDim.y) {
    const int64_t r = base + threadIdx.y;
    const int64_t n = r < R ? nvec : 0;
    const int64_t off = (r < R ? r : 0) * C;  // g + off points at g[r, :]
    const Pack<T, V>* src[2] = {as_vec<T, V>(g + off), as_vec<T, V>(x + off)};
    const Pack<T, V>* dhv = HasDh ? as_vec<T, V>(dh + off) : nullptr;  // read by the dx pass
    Pack<T, V>* dst = as_vec<T, V>(dx + off);
    const A mu = Centered && r < R ? mean[r] : A(0), rs = r < R ? rstd[r] : A(0);
    Pack<T, V> c[2][kCache2];
    A s1 = 0, s2 = 0;  // sum dxhat (Centered only), sum dxhat xhat
    row_pass<true>(src, n, c, [&](int64_t j, const Pack<T, V> (&v)[2]) {
      Pack<T, V> wj;
      if (HasW) wj = wv[j];
      add_row_sums<Centered, HasW>(v[0], v[1], wj, mu, rs, s1, s2);
    });
    const A m1 = Centered ? row_reduce(s1, Sum{}, red) / A(C) : A(0);
    const A m2 = row_reduce(s2, Sum{}, red) / A(C);
    row_pass<false>(src, n, c, [&](int64_t j, const Pack<T, V> (&v)[2]) {
      Pack<T, V> wj, dhj;
      if (HasW) wj = wv[j];
      if (HasDh) dhj = dhv[j];
      dst[j] = dx_vec<HasW, HasDh>(v[0], v[1], wj, dhj, mu, rs, m1, m2, [&](int i, A gr, A xhat) {
        if (acc_w) acc_w[i * nvec + j] += gr * xhat;
        if (acc_b) acc_b[i * nvec + j] += gr;
      });
    });
  }
  if (parts) store_block_partial(acc_block, partial, width);
}

// ---- backward, rows held in registers ----
//
// The backward above keeps one row in flight per row lane: its loads wait while the row is
// reduced and written, and its 64-register budget (1024-thread blocks) leaves no room to load
// ahead. For vectorised rows of up to kRegRowThreads * kRegVecs vectors this kernel instead
//   - gives each block one row at a time, walking rows grid-stride over a grid of as many blocks
//     as fit on the device at once, so thread x owns the same vectors x + k * blockDim.x
//     (k < kRegVecs) of every row;
//   - keeps that thread's share of dw and db in registers (no shared-memory accumulators);
//   - loads the next row's g and x before reducing the current one (register double buffer),
//     so the memory system is busy while the row is reduced and written;
//   - loads the next row's mean and rstd with its g and x;
//   - for 16-bit rows, reduces the row's two sums behind one barrier (block_sum2) and loads dh
//     (the add_ variants) before the reduction instead of after it (float32 rows: early, dh
//     spilled at 128 registers).
// Together, on the H100 (bf16 32768 x 4096, share of copy bandwidth): layer_norm 79% -> 96%,
// rms_norm 86% -> 92%, add_layer_norm 83% -> 100%, add_rms_norm 88% -> 101%
// (bench/notes_cuda_row_ops.md).
// 256-thread blocks at 128 registers, two per SM. It writes partial[blockIdx.x, :] in
// column_sum_kernel's order, as backward_kernel does.
constexpr int kRegRowThreads = 256;
template <typename T> constexpr int kRegVecs = sizeof(T) == 2 ? 2 : 4;  // 16 elements per thread

// s1 and s2 summed over the block (every thread gets both), in row_reduce's order, with one
// barrier instead of row_reduce's two per sum: red holds two halves, used by alternate rows
// (half = row parity), and a half is written again only after every thread has passed the
// barrier of the row in between, so after it has read that half. (With four barriers per row
// the bf16 layer_norm backward ran at 79% of copy bandwidth on the H100, with one at 83%.)
template <typename A>
__device__ __forceinline__ void block_sum2(A& s1, A& s2, A* red, int half) {
  s1 = warp_reduce(s1, Sum{});
  s2 = warp_reduce(s2, Sum{});
  const int nw = blockDim.x / 32;
  if (nw == 1) return;
  A* h = red + half * 64;
  if (threadIdx.x % 32 == 0) {
    h[threadIdx.x / 32] = s1;
    h[32 + threadIdx.x / 32] = s2;
  }
  __syncthreads();
  A a = h[0], b = h[32];
  for (int i = 1; i < nw; ++i) {
    a += h[i];
    b += h[32 + i];
  }
  s1 = a;
  s2 = b;
}

template <typename T, int V, bool Centered, bool HasW, bool HasDh>
__global__ void __launch_bounds__(kRegRowThreads, 2)
    backward_regs_kernel(T* __restrict__ dx, acc_t<T>* __restrict__ partial, const T* __restrict__ g,
                         const T* __restrict__ dh, const T* __restrict__ x, const T* __restrict__ w,
                         const acc_t<T>* __restrict__ mean, const acc_t<T>* __restrict__ rstd,
                         int64_t R, int64_t C, int dw_at, int db_at) {
  using A = acc_t<T>;
  constexpr int K = kRegVecs<T>;
  __shared__ A red[128];  // the two halves of block_sum2
  const int64_t nvec = C / V, tx = blockDim.x;
  A dw[K][V], db[K][V];
  Pack<T, V> wv[K];
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const int64_t j = threadIdx.x + k * tx;
    if (HasW && j < nvec) wv[k] = as_vec<T, V>(w)[j];
#pragma unroll
    for (int i = 0; i < V; ++i) dw[k][i] = db[k][i] = A(0);
  }
  // Row r's owned vectors, every load issued before any is used (vector 0 stands in past the end).
  auto load = [&](int64_t r, Pack<T, V> (&gr)[K], Pack<T, V> (&xr)[K]) {
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int64_t j = threadIdx.x + k * tx, jl = j < nvec ? j : 0;
      gr[k] = as_vec<T, V>(g + r * C)[jl];
      xr[k] = as_vec<T, V>(x + r * C)[jl];
    }
  };
  // The row's mean and rstd travel with its g and x, a row ahead: read at the row's start, they
  // put a full memory latency before every row's sums.
  Pack<T, V> cg[K], cx[K];
  A mu = A(0), rs = A(0);
  if (blockIdx.x < R) {
    load(blockIdx.x, cg, cx);
    mu = Centered ? mean[blockIdx.x] : A(0);
    rs = rstd[blockIdx.x];
  }
  int half = 0;
  for (int64_t r = blockIdx.x; r < R; r += gridDim.x, half ^= 1) {
    Pack<T, V> ng[K], nx[K];
    A nmu = A(0), nrs = A(0);
    if (r + gridDim.x < R) {
      load(r + gridDim.x, ng, nx);
      nmu = Centered ? mean[r + gridDim.x] : A(0);
      nrs = rstd[r + gridDim.x];
    }
    // dh (the add_ variants) of 16-bit rows is loaded now, so its latency passes during the
    // reduction; float32 rows load it when used (early, it spilled at 128 registers).
    constexpr bool kEarlyDh = HasDh && sizeof(T) == 2;
    Pack<T, V> dhv[K];
    if (kEarlyDh) {
#pragma unroll
      for (int k = 0; k < K; ++k) {
        const int64_t j = threadIdx.x + k * tx;
        dhv[k] = as_vec<T, V>(dh + r * C)[j < nvec ? j : 0];
      }
    }
    A s1 = 0, s2 = 0;  // sum dxhat (Centered only), sum dxhat xhat
#pragma unroll
    for (int k = 0; k < K; ++k)
      if (threadIdx.x + k * tx < nvec) add_row_sums<Centered, HasW>(cg[k], cx[k], wv[k], mu, rs, s1, s2);
    if constexpr (sizeof(T) == 2) {
      block_sum2(s1, s2, red, half);
    } else {  // float32: block_sum2 was never measured against this path alone (notes), so not used
      s1 = Centered ? row_reduce(s1, Sum{}, red) : A(0);
      s2 = row_reduce(s2, Sum{}, red);
    }
    const A m1 = Centered ? s1 / A(C) : A(0), m2 = s2 / A(C);
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int64_t j = threadIdx.x + k * tx;
      if (j >= nvec) continue;
      if (HasDh && !kEarlyDh) dhv[k] = as_vec<T, V>(dh + r * C)[j];
      as_vec<T, V>(dx + r * C)[j] = dx_vec<HasW, HasDh>(cg[k], cx[k], wv[k], dhv[k], mu, rs, m1, m2, [&](int i, A gr, A xhat) {
        dw[k][i] += gr * xhat;
        db[k][i] += gr;
      });
    }
#pragma unroll
    for (int k = 0; k < K; ++k) {
      cg[k] = ng[k];
      cx[k] = nx[k];
    }
    mu = nmu;
    rs = nrs;
  }
  const int parts = (dw_at >= 0) + (db_at >= 0);
  A* mine = partial + int64_t(blockIdx.x) * parts * C;
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const int64_t j = threadIdx.x + k * tx;
    if (j >= nvec) continue;
#pragma unroll
    for (int i = 0; i < V; ++i) {
      if (dw_at >= 0) mine[dw_at * C + i * nvec + j] = dw[k][i];
      if (db_at >= 0) mine[db_at * C + i * nvec + j] = db[k][i];
    }
  }
}

// Launch for backward_regs_kernel: pow2 threads of whole warps covering a row of nvec vectors
// with kRegVecs each, and as many blocks as are resident at once (two 256-thread blocks per SM
// at the kernel's register budget), at most one per row.
template <typename T>
Launch regs_launch(int64_t R, int64_t nvec, int device) {
  int tx = 32;
  while (int64_t(tx) * kRegVecs<T> < nvec) tx *= 2;
  const int sms = device_attr(cudaDevAttrMultiProcessorCount, device);
  return {dim3(unsigned(tx)), unsigned(std::min<int64_t>(R, int64_t(sms) * 2 * (kRegRowThreads / tx)))};
}

// ---- host side ----

// The data pointer of an optional tensor (null when undefined).
template <typename T> T* opt_ptr(const Tensor& t) { return t.defined() ? t.data<T>() : nullptr; }

// y, rstd (and mean when Centered) allocated by the caller; x, w, b contiguous; R > 0. With res
// defined (the fused add): h allocated by the caller like x, res contiguous; both undefined
// otherwise. b: Centered only (pass an empty tensor for rms_norm).
template <bool Centered>
void forward(Tensor& y, Tensor& h, Tensor& mean, Tensor& rstd, const Tensor& x, const Tensor& res,
             const Tensor& w, const Tensor& b, double eps, const char* op) {
  const int64_t C = x.size(-1), R = rstd.numel();
  set_device(x, op);
  CUDA_DISPATCH_FLOAT(x.dtype(), op, {
    using T = scalar_t;
    using A = acc_t<T>;
    const T *pw = opt_ptr<T>(w), *pb = opt_ptr<T>(b), *pr = opt_ptr<T>(res);
    T* ph = opt_ptr<T>(h);
    A* pm = Centered ? mean.data<A>() : nullptr;
    auto run = [&](auto vec_tag, auto add_tag) {
      constexpr int V = decltype(vec_tag)::value;
      constexpr bool Add = decltype(add_tag)::value;
      const Launch L = row_launch<T>(R, C / V);
      auto launch = [&](auto kernel) {
        kernel<<<L.grid, L.block, 0, current_stream()>>>(y.data<T>(), ph, pm, rstd.data<A>(), x.data<T>(),
                                                         pr, pw, pb, R, C, A(eps));
      };
      // rms_norm has no bias: its HasB variants are never instantiated.
      if constexpr (Centered) {
        if (pw && pb) return launch(forward_kernel<T, V, Centered, true, true, Add>);
        if (pb) return launch(forward_kernel<T, V, Centered, false, true, Add>);
      }
      if (pw) launch(forward_kernel<T, V, Centered, true, false, Add>);
      else launch(forward_kernel<T, V, Centered, false, false, Add>);
    };
    auto run_add = [&](auto vec_tag) {
      if (pr) run(vec_tag, std::true_type{});
      else run(vec_tag, std::false_type{});
    };
    if (vectorizable<T>(C, {x.raw_data(), y.raw_data(), pr, ph, pw, pb}))
      run_add(std::integral_constant<int, kVec<T>>{});
    else
      run_add(std::integral_constant<int, 1>{});
  });
  check_launch(op);
}

// dx allocated by the caller; dw / db of shape (C,) when wanted, (0,) otherwise (db: Centered
// only, pass an empty tensor for rms_norm). g, x, w contiguous; mean (Centered) and rstd
// contiguous in the accumulation dtype. dh (the fused ops' backward: dx = dh + the norm's
// gradient): contiguous, of x's shape and dtype, or undefined.
template <bool Centered>
void backward(Tensor& dx, Tensor& dw, Tensor& db, const Tensor& g, const Tensor& dh, const Tensor& x,
              const Tensor& w, const Tensor& mean, const Tensor& rstd, const char* op) {
  const int64_t C = x.size(-1), R = rstd.numel();
  const bool want_dw = dw.defined() && dw.numel() > 0, want_db = db.defined() && db.numel() > 0;
  const int dw_at = want_dw ? 0 : -1, db_at = want_db ? int(want_dw) : -1;
  const int parts = int(want_dw) + int(want_db);
  const DType sd = acc_dtype(x.dtype());
  set_device(x, op);
  CUDA_DISPATCH_FLOAT(x.dtype(), op, {
    using T = scalar_t;
    using A = acc_t<T>;
    const T *pw = opt_ptr<T>(w), *pdh = opt_ptr<T>(dh);
    const A* pm = Centered ? mean.data<A>() : nullptr;
    const bool vec = vectorizable<T>(C, {g.raw_data(), x.raw_data(), dx.raw_data(), pw, pdh});
    const int V = vec ? kVec<T> : 1;
    // Vectorised 16- and 32-bit rows that fit in registers take backward_regs_kernel.
    const bool in_regs = vec && sizeof(T) < 8 && C / V <= int64_t(kRegRowThreads) * kRegVecs<T>;
    const AccPlan plan = in_regs ? AccPlan{regs_launch<T>(R, C / V, x.device().index)}
                                 : acc_plan<T>(R, C / V, parts * C, sizeof(A), kMaxLanes * 32 * sizeof(A),
                                               x.device().index);
    const int64_t blocks = R <= 0 ? 0 : plan.launch.grid;
    Tensor partial = Tensor::empty({parts ? blocks * parts * C : 0}, sd, x.device());
    Tensor scratch =
        Tensor::empty({parts && !in_regs && !plan.in_smem ? blocks * plan.launch.block.y * parts * C : 0}, sd, x.device());
    auto run = [&](auto vec_tag, auto dh_tag) {
      constexpr int VV = decltype(vec_tag)::value;
      constexpr bool HasDh = decltype(dh_tag)::value;
      if (in_regs) {
        if constexpr (VV > 1 && sizeof(T) < 8) {
          auto kernel = pw ? backward_regs_kernel<T, VV, Centered, true, HasDh>
                           : backward_regs_kernel<T, VV, Centered, false, HasDh>;
          kernel<<<plan.launch.grid, plan.launch.block, 0, current_stream()>>>(
              dx.data<T>(), partial.data<A>(), g.data<T>(), pdh, x.data<T>(), pw, pm, rstd.data<A>(), R, C,
              dw_at, db_at);
        }
        return;
      }
      auto kernel = pw ? backward_kernel<T, VV, Centered, true, HasDh>
                       : backward_kernel<T, VV, Centered, false, HasDh>;
      if (plan.smem > 48 * 1024)
        check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(plan.smem)), op);
      kernel<<<plan.launch.grid, plan.launch.block, plan.smem, current_stream()>>>(
          dx.data<T>(), scratch.data<A>(), partial.data<A>(), g.data<T>(), pdh, x.data<T>(), pw, pm,
          rstd.data<A>(), R, C, dw_at, db_at, plan.in_smem);
    };
    auto run_dh = [&](auto vec_tag) {
      if (pdh) run(vec_tag, std::true_type{});
      else run(vec_tag, std::false_type{});
    };
    if (R > 0) {
      if (vec) run_dh(std::integral_constant<int, kVec<T>>{});
      else run_dh(std::integral_constant<int, 1>{});
      check_launch(op);
    }
    if (parts) {
      ColumnOuts<T> outs{{nullptr, nullptr}, parts};
      if (want_dw) outs.out[dw_at] = dw.data<T>();
      if (want_db) outs.out[db_at] = db.data<T>();
      column_sum_kernel<T, A><<<blocks_for(parts * C, 32), dim3(32, kSumLanes), 0, current_stream()>>>(
          outs, partial.data<A>(), blocks, C, V);
      check_launch(op);
    }
  });
}

}  // namespace ls::cuda::norm
