// rms_norm over the last dim (LLaMA) on the GPU: forward and backward; float32, float64,
// bfloat16 and float16 (16-bit inputs compute in float32).
//
//   rstd = 1 / sqrt(sum_c x[c]^2 / C + eps)      y = x * rstd * w
//   backward, per row, with dxhat = g * w:
//     dx = rstd dxhat - x rstd^3 mean_c(dxhat x)       dw = sum_rows g x rstd
//
// Shapes: x (..., C) viewed as (R, C); w (C,) or None; rstd (...) = x.shape[:-1].
// Registry ops as cpp/ops/rms_norm.cpp: "rms_norm" {x, w?} attr eps -> {y, rstd};
// "rms_norm_backward" {g, x, w?, rstd} attr dweight -> {dx, dw} (dw of shape (0,) when not asked
// for). As in layer_norm.cu, rstd is float32 for 16-bit inputs and the backward accepts either.
//
// Kernels (rows.cuh): forward reads the row once into registers, reduces sum x^2 and writes y
// from registers. Backward reads g and x once, reduces sum dxhat x, writes dx and adds g x rstd
// into its block's partial row of dw (deterministic two-stage sum of rows.cuh).
#include "core/registry.h"
#include "ops/kernel_checks.h"
#include "ops/ops.h"
#include "rows.cuh"

namespace ls::cuda {

namespace {

using namespace rows;

template <typename T, int V, bool HasW>
__global__ void __launch_bounds__(kMaxThreads<T>) rms_norm_kernel(T* __restrict__ y, acc_t<T>* __restrict__ rstd, const T* __restrict__ x,
                                const T* __restrict__ w, int64_t R, int64_t C, acc_t<T> eps) {
  using A = acc_t<T>;
  __shared__ A red[kMaxLanes * 32];
  const int64_t nvec = C / V;
  const Vec<T, V>* wv = as_vec<T, V>(w);
  for (int64_t base = int64_t(blockIdx.x) * blockDim.y; base < R; base += int64_t(gridDim.x) * blockDim.y) {
    const int64_t r = base + threadIdx.y;
    const int64_t n = r < R ? nvec : 0;  // a lane past the last row joins the reductions only
    const Vec<T, V>* src[1] = {as_vec<T, V>(x + (r < R ? r : 0) * C)};  // src points at x[r, :]
    Vec<T, V>* dst = as_vec<T, V>(y + (r < R ? r : 0) * C);
    Vec<T, V> c[1][kCache];
    A part = 0;
    row_pass<true>(src, n, c, [&](int64_t, const Vec<T, V> (&v)[1]) {
#pragma unroll
      for (int i = 0; i < V; ++i) {
        A a = convert<A>(v[0].v[i]);
        part += a * a;
      }
    });
    const A rs = A(1) / sqrt(row_reduce(part, Sum{}, red) / A(C) + eps);
    row_pass<false>(src, n, c, [&](int64_t j, const Vec<T, V> (&v)[1]) {
      Vec<T, V> out, wj;
      if (HasW) wj = wv[j];
#pragma unroll
      for (int i = 0; i < V; ++i) {
        A a = convert<A>(v[0].v[i]) * rs;
        if (HasW) a *= convert<A>(wj.v[i]);
        out.v[i] = convert<T>(a);
      }
      dst[j] = out;
    });
    if (r < R && threadIdx.x == 0) rstd[r] = rs;
  }
}

// Validation shared by both entries (call() can reach the kernels directly).
void check_args(const Tensor& x, const Tensor& weight, double eps, const char* op) {
  LS_CHECK(x.defined(), ValueError, op, ": input is None");
  LS_CHECK(is_floating(x.dtype()), TypeError, op, ": needs a floating-point input, got ",
           dtype_name(x.dtype()));
  LS_CHECK(x.dim() >= 1, ValueError, op, ": input must have at least one dimension, got a 0-d tensor");
  const int64_t C = x.size(-1);
  if (weight.defined()) {
    LS_CHECK(weight.shape() == Shape{C}, ValueError, op, ": weight of shape ", shape_str(weight.shape()),
             " does not match the normalized dimension of input shape ", shape_str(x.shape()),
             " (expected (", C, ",))");
    cpu::expect_same_dtype(x, weight, op, "weight");
  }
  LS_CHECK(eps >= 0, ValueError, op, ": eps must be >= 0, got ", eps);
}

Tensors rms_norm_forward_cuda(const Tensors& in, const Attrs& a) {
  const char* op = "rms_norm";
  cpu::expect_inputs(in, 1, 2, op);
  const double eps = a.f("eps", 1e-6);
  check_args(in[0], cpu::optional_input(in, 1), eps, op);
  Tensor x = ops::contiguous(in[0]);
  Tensor w = cpu::optional_input(in, 1);
  if (w.defined()) w = ops::contiguous(w);
  const int64_t C = x.size(-1);
  const Shape stat_shape(x.shape().begin(), x.shape().end() - 1);
  const int64_t R = shape_numel(stat_shape);
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  Tensor rstd = Tensor::empty(stat_shape, acc_dtype(x.dtype()), x.device());
  if (R == 0) return {y, rstd};
  set_device(x, op);
  CUDA_DISPATCH_FLOAT(x.dtype(), op, {
    using T = scalar_t;
    using A = acc_t<T>;
    const T* pw = w.defined() ? w.data<T>() : nullptr;
    const A e = A(eps);
    auto run = [&](auto vec_tag) {
      constexpr int V = decltype(vec_tag)::value;
      const Launch L = row_launch<T>(R, C / V);
      if (pw) rms_norm_kernel<T, V, true><<<L.grid, L.block, 0, current_stream()>>>(y.data<T>(), rstd.data<A>(), x.data<T>(), pw, R, C, e);
      else rms_norm_kernel<T, V, false><<<L.grid, L.block, 0, current_stream()>>>(y.data<T>(), rstd.data<A>(), x.data<T>(), pw, R, C, e);
    };
    if (vectorizable<T>(C, {x.raw_data(), y.raw_data(), pw})) run(std::integral_constant<int, kVec<T>>{});
    else run(std::integral_constant<int, 1>{});
  });
  check_launch(op);
  return {y, rstd};
}

// ---- backward ----

// acc: this block's accumulators, blockDim.y lanes of C (dw), used when accumulate;
// partial: (gridDim.x, C).
template <typename T, int V, bool HasW>
__global__ void __launch_bounds__(kMaxThreads<T>) rms_norm_backward_kernel(T* __restrict__ dx, acc_t<T>* acc_global, acc_t<T>* __restrict__ partial,
                                         const T* __restrict__ g, const T* __restrict__ x,
                                         const T* __restrict__ w, const acc_t<T>* __restrict__ rstd,
                                         int64_t R, int64_t C, bool accumulate, bool acc_in_smem) {
  using A = acc_t<T>;
  __shared__ A red[kMaxLanes * 32];
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int64_t nvec = C / V;
  A* acc_block = acc_in_smem ? reinterpret_cast<A*>(smem_raw)
                 : accumulate ? acc_global + int64_t(blockIdx.x) * blockDim.y * C : nullptr;
  A* acc = acc_block + threadIdx.y * C;  // this lane's dw
  if (accumulate) zero_owned<V>(acc, 1, C);
  const Vec<T, V>* wv = as_vec<T, V>(w);
  for (int64_t base = int64_t(blockIdx.x) * blockDim.y; base < R; base += int64_t(gridDim.x) * blockDim.y) {
    const int64_t r = base + threadIdx.y;
    const int64_t n = r < R ? nvec : 0;
    const int64_t off = (r < R ? r : 0) * C;  // g + off points at g[r, :]
    const Vec<T, V>* src[2] = {as_vec<T, V>(g + off), as_vec<T, V>(x + off)};
    Vec<T, V>* dst = as_vec<T, V>(dx + off);
    const A rs = r < R ? rstd[r] : A(0);
    Vec<T, V> c[2][kCache2];
    A s = 0;  // sum dxhat x
    row_pass<true>(src, n, c, [&](int64_t j, const Vec<T, V> (&v)[2]) {
      Vec<T, V> wj;
      if (HasW) wj = wv[j];
#pragma unroll
      for (int i = 0; i < V; ++i) {
        A gw = convert<A>(v[0].v[i]);
        if (HasW) gw *= convert<A>(wj.v[i]);
        s += gw * convert<A>(v[1].v[i]);
      }
    });
    const A k = rs * rs * rs * row_reduce(s, Sum{}, red) / A(C);
    row_pass<false>(src, n, c, [&](int64_t j, const Vec<T, V> (&v)[2]) {
      Vec<T, V> out, wj;
      if (HasW) wj = wv[j];
#pragma unroll
      for (int i = 0; i < V; ++i) {
        const A gr = convert<A>(v[0].v[i]), xv = convert<A>(v[1].v[i]);
        const A gw = HasW ? gr * convert<A>(wj.v[i]) : gr;
        out.v[i] = convert<T>(rs * gw - xv * k);
        if (accumulate) acc[j * V + i] += gr * (xv * rs);
      }
      dst[j] = out;
    });
  }
  if (accumulate) store_block_partial(acc_block, partial, C);
}

Tensors rms_norm_backward_cuda(const Tensors& in, const Attrs& a) {
  const char* op = "rms_norm_backward";
  LS_CHECK(in.size() == 4 && in[0].defined() && in[1].defined() && in[3].defined(), ValueError, op,
           ": expected inputs {g, x, weight or None, rstd}");
  check_args(in[1], in[2], 0.0, op);
  cpu::expect_same_dtype(in[1], in[0], op, "gradient");
  LS_CHECK(is_floating(in[3].dtype()), TypeError, op, ": rstd must be floating-point, got ",
           dtype_name(in[3].dtype()));
  LS_CHECK(in[3].numel() * in[1].size(-1) == in[1].numel(), ValueError, op, ": rstd of shape ",
           shape_str(in[3].shape()), " does not match the input shape ", shape_str(in[1].shape()));
  LS_CHECK(in[0].shape() == in[1].shape(), ValueError, op, ": gradient of shape ",
           shape_str(in[0].shape()), " does not match the input shape ", shape_str(in[1].shape()));
  Tensor g = ops::contiguous(in[0]), x = ops::contiguous(in[1]);
  Tensor w = in[2].defined() ? ops::contiguous(in[2]) : Tensor();
  const DType sd = acc_dtype(x.dtype());
  Tensor rstd = ops::contiguous(in[3].dtype() == sd ? in[3] : ops::to_dtype(in[3], sd));
  const bool want_dw = a.b("dweight", false);
  const int64_t C = x.size(-1), R = rstd.numel();
  Tensor dx = Tensor::empty(x.shape(), x.dtype(), x.device());
  Tensor dw = Tensor::empty({want_dw ? C : 0}, x.dtype(), x.device());
  const bool accumulate = want_dw && C > 0;
  set_device(x, op);
  CUDA_DISPATCH_FLOAT(x.dtype(), op, {
    using T = scalar_t;
    using A = acc_t<T>;
    const T* pw = w.defined() ? w.data<T>() : nullptr;
    const bool vec = vectorizable<T>(C, {g.raw_data(), x.raw_data(), dx.raw_data(), pw});
    const int V = vec ? kVec<T> : 1;
    const AccPlan plan = acc_plan<T>(R, C / V, accumulate ? C : 0, sizeof(A), kMaxLanes * 32 * sizeof(A),
                                  x.device().index);
    const int64_t blocks = R > 0 ? plan.launch.grid : 0;
    Tensor partial = Tensor::empty({accumulate ? blocks * C : 0}, sd, x.device());
    Tensor scratch = Tensor::empty({accumulate && !plan.in_smem ? blocks * plan.launch.block.y * C : 0},
                                   sd, x.device());
    auto run = [&](auto vec_tag) {
      constexpr int VV = decltype(vec_tag)::value;
      auto kernel = pw ? rms_norm_backward_kernel<T, VV, true> : rms_norm_backward_kernel<T, VV, false>;
      if (plan.smem > 48 * 1024)
        check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(plan.smem)), op);
      kernel<<<plan.launch.grid, plan.launch.block, plan.smem, current_stream()>>>(
          dx.data<T>(), scratch.data<A>(), partial.data<A>(), g.data<T>(), x.data<T>(), pw,
          rstd.data<A>(), R, C, accumulate, plan.in_smem);
    };
    if (R > 0) {
      if (vec) run(std::integral_constant<int, kVec<T>>{});
      else run(std::integral_constant<int, 1>{});
      check_launch(op);
    }
    if (want_dw && C > 0)
      launch_column_sum(dw.data<T>(), partial.data<A>(), blocks, C, C);
    check_launch(op);
  });
  return {dx, dw};
}

}  // namespace

LS_REGISTER(rms_norm_cuda) {
  const std::vector<DType> kFloat = {DType::Float32, DType::Float64, DType::BFloat16, DType::Float16};
  register_kernel("rms_norm", "cuda", rms_norm_forward_cuda, kFloat);
  register_kernel("rms_norm_backward", "cuda", rms_norm_backward_cuda, kFloat);
}

}  // namespace ls::cuda
