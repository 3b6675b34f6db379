// softmax and log_softmax along any dim on the GPU: forward and backward; float32, float64,
// bfloat16 and float16 (16-bit inputs compute in float32).
//
//   softmax      y[n] = exp(x[n] - m) / s            m = max_n x[n], s = sum_n exp(x[n] - m)
//   log_softmax  y[n] = (x[n] - m) - log(s)      in that order: m + log(s) rounded first loses
//                                                 the low bits of log(s) next to a large m
//   softmax backward      dx[n] = y[n] (g[n] - sum_k g[k] y[k])
//   log_softmax backward  dx[n] = g[n] - exp(y[n]) sum_k g[k]
//
// Shapes: x viewed as (O, N, I), N the softmax dim (as cpp/ops/softmax.cpp). Registry ops, the
// same as the CPU's: "softmax" / "log_softmax" {x} attr dim -> {y}; "softmax_backward" /
// "log_softmax_backward" {y, g} attr dim -> {dx}.
//
// Kernels. I == 1 (dim = -1: attention scores (B, NH, T, T), logits (B*T, V)): the row kernels
// of rows.cuh, one row lane per row. The forward keeps a running (max, sum) per thread (the sum
// rescaled when the max grows: online softmax), so one read gives both statistics; the row stays
// in registers for the write (rows up to 16k float32 / 32k 16-bit elements; longer rows are read
// again, mostly from L2). Memory traffic: one read and one write of x (backward: two reads, y and
// g, and one write). I > 1: one thread per column (o, i) walks n with stride I: adjacent threads
// read adjacent i, so loads coalesce without a transpose; it reads the column twice (statistics,
// then the write), the second time mostly from L1/L2.
#include "core/registry.h"
#include "ops/kernel_checks.h"
#include "ops/op_args.h"
#include "ops/ops.h"
#include "rows.cuh"

namespace ls::cuda {

namespace {

using namespace rows;

using ops::row_layout;
using Layout = ops::RowLayout;

// ---- forward ----

template <typename T, int V, bool Log>
__global__ void __launch_bounds__(kMaxThreads<T>) softmax_rows_kernel(T* __restrict__ y, const T* __restrict__ x, int64_t R, int64_t C) {
  using A = acc_t<T>;
  __shared__ A red[kMaxLanes * 32];
  const int64_t nvec = C / V;
  for (int64_t base = int64_t(blockIdx.x) * blockDim.y; base < R; base += int64_t(gridDim.x) * blockDim.y) {
    const int64_t r = base + threadIdx.y;
    const int64_t n = r < R ? nvec : 0;  // a lane past the last row joins the reductions only
    const Pack<T, V>* src[1] = {as_vec<T, V>(x + (r < R ? r : 0) * C)};  // src points at x[r, :]
    Pack<T, V>* dst = as_vec<T, V>(y + (r < R ? r : 0) * C);
    Pack<T, V> c[1][kCache];
    Online<T> st;
    row_pass<true>(src, n, c, [&](int64_t, const Pack<T, V> (&v)[1]) {
      A a[V];
      to_acc(v[0], a);
      st.add(a);
    });
    A M, S;
    st.reduce(red, M, S);
    const A log_s = Log ? lg(S) : A(0), inv = A(1) / S;
    row_pass<false>(src, n, c, [&](int64_t j, const Pack<T, V> (&v)[1]) {
      Pack<T, V> out;
#pragma unroll
      for (int i = 0; i < V; ++i) {
        A a = convert<A>(v[0].v[i]) - M;
        out.v[i] = convert<T>(Log ? a - log_s : ex_for<T>(a) * inv);
      }
      dst[j] = out;
    });
  }
}

// One thread per column (o, i): x[o, :, i] has stride I.
template <typename T, bool Log>
__global__ void softmax_cols_kernel(T* __restrict__ y, const T* __restrict__ x, int64_t O, int64_t N,
                                    int64_t I) {
  using A = acc_t<T>;
  for (int64_t col = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; col < O * I;
       col += int64_t(gridDim.x) * blockDim.x) {
    const int64_t base = (col / I) * N * I + col % I;  // offset of x[o, 0, i]
    Online<T> st;
    for (int64_t n = 0; n < N; ++n) {
      A a[1] = {convert<A>(x[base + n * I])};
      st.add(a);
    }
    const A log_s = Log ? lg(st.s) : A(0), inv = A(1) / st.s;
    for (int64_t n = 0; n < N; ++n) {
      A a = convert<A>(x[base + n * I]) - st.m;
      y[base + n * I] = convert<T>(Log ? a - log_s : ex_for<T>(a) * inv);
    }
  }
}

template <bool Log>
Tensors softmax_forward_cuda(const Tensors& in, const Attrs& a) {
  const char* op = Log ? "log_softmax" : "softmax";
  cpu::expect_inputs(in, 1, 1, op);
  Tensor x = ops::contiguous(in[0]);
  Layout l = row_layout(x.shape(), wrap_dim(a.i("dim"), x.dim(), op));
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  if (x.numel() == 0) return {y};
  set_device(x, op);
  CUDA_DISPATCH_FLOAT(x.dtype(), op, {
    using T = scalar_t;
    const T* px = x.data<T>();
    T* py = y.data<T>();
    if (l.I == 1) {
      const int64_t R = l.O, C = l.N;
      if (vectorizable<T>(C, {px, py})) {
        Launch L = row_launch<T>(R, C / kVec<T>);
        softmax_rows_kernel<T, kVec<T>, Log><<<L.grid, L.block, 0, current_stream()>>>(py, px, R, C);
      } else {
        Launch L = row_launch<T>(R, C);
        softmax_rows_kernel<T, 1, Log><<<L.grid, L.block, 0, current_stream()>>>(py, px, R, C);
      }
    } else {
      softmax_cols_kernel<T, Log><<<grid_for(l.O * l.I), kThreads, 0, current_stream()>>>(py, px, l.O, l.N, l.I);
    }
  });
  check_launch(op);
  return {y};
}

// ---- backward ----

// s = sum_k g[k] (log) or sum_k g[k] y[k]; then dx from (y, g, s).
template <typename A, bool Log>
__device__ __forceinline__ A backward_term(A y, A g) { return Log ? g : g * y; }
template <typename A, bool Log>
__device__ __forceinline__ A backward_dx(A y, A g, A s) { return Log ? g - ex(y) * s : y * (g - s); }

template <typename T, int V, bool Log>
__global__ void __launch_bounds__(kMaxThreads<T>) softmax_backward_rows_kernel(T* __restrict__ dx, const T* __restrict__ y,
                                             const T* __restrict__ g, int64_t R, int64_t C) {
  using A = acc_t<T>;
  __shared__ A red[kMaxLanes * 32];
  const int64_t nvec = C / V;
  for (int64_t base = int64_t(blockIdx.x) * blockDim.y; base < R; base += int64_t(gridDim.x) * blockDim.y) {
    const int64_t r = base + threadIdx.y;
    const int64_t n = r < R ? nvec : 0;
    const int64_t off = (r < R ? r : 0) * C;  // y + off points at y[r, :]
    const Pack<T, V>* src[2] = {as_vec<T, V>(y + off), as_vec<T, V>(g + off)};
    Pack<T, V>* dst = as_vec<T, V>(dx + off);
    Pack<T, V> c[2][kCache2];
    A part = 0;
    row_pass<true>(src, n, c, [&](int64_t, const Pack<T, V> (&v)[2]) {
#pragma unroll
      for (int i = 0; i < V; ++i)
        part += backward_term<A, Log>(convert<A>(v[0].v[i]), convert<A>(v[1].v[i]));
    });
    const A s = row_reduce(part, Sum{}, red);
    row_pass<false>(src, n, c, [&](int64_t j, const Pack<T, V> (&v)[2]) {
      Pack<T, V> out;
#pragma unroll
      for (int i = 0; i < V; ++i)
        out.v[i] = convert<T>(backward_dx<A, Log>(convert<A>(v[0].v[i]), convert<A>(v[1].v[i]), s));
      dst[j] = out;
    });
  }
}

template <typename T, bool Log>
__global__ void softmax_backward_cols_kernel(T* __restrict__ dx, const T* __restrict__ y,
                                             const T* __restrict__ g, int64_t O, int64_t N, int64_t I) {
  using A = acc_t<T>;
  for (int64_t col = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; col < O * I;
       col += int64_t(gridDim.x) * blockDim.x) {
    const int64_t base = (col / I) * N * I + col % I;  // offset of y[o, 0, i]
    A s = 0;
    for (int64_t n = 0; n < N; ++n)
      s += backward_term<A, Log>(convert<A>(y[base + n * I]), convert<A>(g[base + n * I]));
    for (int64_t n = 0; n < N; ++n) {
      const int64_t k = base + n * I;
      dx[k] = convert<T>(backward_dx<A, Log>(convert<A>(y[k]), convert<A>(g[k]), s));
    }
  }
}

template <bool Log>
Tensors softmax_backward_cuda(const Tensors& in, const Attrs& a) {
  const char* op = Log ? "log_softmax_backward" : "softmax_backward";
  cpu::expect_inputs(in, 2, 2, op);
  ops::check_softmax_backward_args(in[0], in[1], op);
  Tensor y = ops::contiguous(in[0]), g = ops::contiguous(in[1]);
  Layout l = row_layout(y.shape(), wrap_dim(a.i("dim"), y.dim(), op));
  Tensor dx = Tensor::empty(y.shape(), y.dtype(), y.device());
  if (y.numel() == 0) return {dx};
  set_device(y, op);
  CUDA_DISPATCH_FLOAT(y.dtype(), op, {
    using T = scalar_t;
    const T* py = y.data<T>();
    const T* pg = g.data<T>();
    T* pd = dx.data<T>();
    if (l.I == 1) {
      const int64_t R = l.O, C = l.N;
      if (vectorizable<T>(C, {py, pg, pd})) {
        Launch L = row_launch<T>(R, C / kVec<T>, int64_t(1) << 30, kCache2);
        softmax_backward_rows_kernel<T, kVec<T>, Log><<<L.grid, L.block, 0, current_stream()>>>(pd, py, pg, R, C);
      } else {
        Launch L = row_launch<T>(R, C, int64_t(1) << 30, kCache2);
        softmax_backward_rows_kernel<T, 1, Log><<<L.grid, L.block, 0, current_stream()>>>(pd, py, pg, R, C);
      }
    } else {
      softmax_backward_cols_kernel<T, Log><<<grid_for(l.O * l.I), kThreads, 0, current_stream()>>>(pd, py, pg, l.O, l.N, l.I);
    }
  });
  check_launch(op);
  return {dx};
}

}  // namespace

LS_REGISTER(softmax_cuda) {
  const std::vector<DType> kFloat = {DType::Float32, DType::Float64, DType::BFloat16, DType::Float16};
  register_kernel("softmax", "cuda", softmax_forward_cuda<false>, kFloat);
  register_kernel("log_softmax", "cuda", softmax_forward_cuda<true>, kFloat);
  register_kernel("softmax_backward", "cuda", softmax_backward_cuda<false>, kFloat);
  register_kernel("log_softmax_backward", "cuda", softmax_backward_cuda<true>, kFloat);
}

}  // namespace ls::cuda
