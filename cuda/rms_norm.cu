// rms_norm over the last dim (LLaMA) on the GPU, and its variant fused with the residual add
// before it (add_rms_norm): forward and backward; float32, float64, bfloat16 and float16 (16-bit
// inputs compute in float32).
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
//
// add_rms_norm (ops as cpp/ops/rms_norm.cpp): h = x + r, y = rms_norm(h); backward
// dx = dr = dh + rms_norm_backward(dy). "add_rms_norm" {x, r, w?} attr eps -> {h, y, rstd};
// "add_rms_norm_backward" {dy, dh, h, w?, rstd} attr dweight -> {dx, dw}. The same kernels with
// a template flag, as in layer_norm.cu: the forward's first pass forms, writes and caches h
// (add_row_pass of rows.cuh); the backward adds dh into dx in its dx pass.
#include "core/registry.h"
#include "ops/kernel_checks.h"
#include "ops/ops.h"
#include "rows.cuh"

namespace ls::cuda {

namespace {

using namespace rows;

// Add: the row normalised is h = x + res, written to h by the first pass (h and res are null
// otherwise). h is not __restrict__: the later pass reads back through it what it wrote.
template <typename T, int V, bool HasW, bool Add>
__global__ void __launch_bounds__(kMaxThreads<T>) rms_norm_kernel(T* __restrict__ y, T* h, acc_t<T>* __restrict__ rstd, const T* __restrict__ x,
                                const T* __restrict__ res, const T* __restrict__ w, int64_t R,
                                int64_t C, acc_t<T> eps) {
  using A = acc_t<T>;
  __shared__ A red[kMaxLanes * 32];
  const int64_t nvec = C / V;
  const Vec<T, V>* wv = as_vec<T, V>(w);
  for (int64_t base = int64_t(blockIdx.x) * blockDim.y; base < R; base += int64_t(gridDim.x) * blockDim.y) {
    const int64_t r = base + threadIdx.y;
    const int64_t n = r < R ? nvec : 0;  // a lane past the last row joins the reductions only
    const int64_t off = (r < R ? r : 0) * C;
    const T* row = Add ? h : x;
    const Vec<T, V>* src[1] = {as_vec<T, V>(row + off)};  // src points at x[r, :] (h[r, :] if Add)
    Vec<T, V>* dst = as_vec<T, V>(y + off);
    Vec<T, V> c[1][kCache];
    A part = 0;
    auto sum_sq = [&](int64_t, const Vec<T, V> (&v)[1]) {
#pragma unroll
      for (int i = 0; i < V; ++i) {
        A a = convert<A>(v[0].v[i]);
        part += a * a;
      }
    };
    if constexpr (Add)
      add_row_pass(as_vec<T, V>(x + off), as_vec<T, V>(res + off), as_vec<T, V>(h + off), n, c, sum_sq);
    else
      row_pass<true>(src, n, c, sum_sq);
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

// add_rms_norm's second input (or its backward's dh): of x's shape and dtype.
void check_residual(const Tensor& x, const Tensor& res, const char* op, const char* name) {
  LS_CHECK(res.shape() == x.shape(), ValueError, op, ": ", name, " of shape ", shape_str(res.shape()),
           " does not match the input shape ", shape_str(x.shape()));
  cpu::expect_same_dtype(x, res, op, name);
}

// rms_norm (res undefined) -> {y, rstd}, or add_rms_norm -> {h, y, rstd}.
Tensors norm_forward(const Tensor& x_in, const Tensor& res_in, const Tensor& w_in, double eps,
                     const char* op) {
  const bool add = res_in.defined();
  Tensor x = ops::contiguous(x_in);
  Tensor res = add ? ops::contiguous(res_in) : Tensor();
  Tensor w = w_in.defined() ? ops::contiguous(w_in) : Tensor();
  const int64_t C = x.size(-1);
  const Shape stat_shape(x.shape().begin(), x.shape().end() - 1);
  const int64_t R = shape_numel(stat_shape);
  Tensor h = add ? Tensor::empty(x.shape(), x.dtype(), x.device()) : Tensor();
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  Tensor rstd = Tensor::empty(stat_shape, acc_dtype(x.dtype()), x.device());
  const Tensors out = add ? Tensors{h, y, rstd} : Tensors{y, rstd};
  if (R == 0) return out;
  set_device(x, op);
  CUDA_DISPATCH_FLOAT(x.dtype(), op, {
    using T = scalar_t;
    using A = acc_t<T>;
    const T* pw = w.defined() ? w.data<T>() : nullptr;
    const T* pr = add ? res.data<T>() : nullptr;
    T* ph = add ? h.data<T>() : nullptr;
    const A e = A(eps);
    auto run = [&](auto vec_tag, auto add_tag) {
      constexpr int V = decltype(vec_tag)::value;
      constexpr bool Add = decltype(add_tag)::value;
      const Launch L = row_launch<T>(R, C / V);
      auto kernel = pw ? rms_norm_kernel<T, V, true, Add> : rms_norm_kernel<T, V, false, Add>;
      kernel<<<L.grid, L.block, 0, current_stream()>>>(y.data<T>(), ph, rstd.data<A>(), x.data<T>(), pr, pw, R, C, e);
    };
    auto run_add = [&](auto vec_tag) {
      if (add) run(vec_tag, std::true_type{});
      else run(vec_tag, std::false_type{});
    };
    if (vectorizable<T>(C, {x.raw_data(), y.raw_data(), pr, ph, pw})) run_add(std::integral_constant<int, kVec<T>>{});
    else run_add(std::integral_constant<int, 1>{});
  });
  check_launch(op);
  return out;
}

Tensors rms_norm_forward_cuda(const Tensors& in, const Attrs& a) {
  const char* op = "rms_norm";
  cpu::expect_inputs(in, 1, 2, op);
  const double eps = a.f("eps", 1e-6);
  check_args(in[0], cpu::optional_input(in, 1), eps, op);
  return norm_forward(in[0], Tensor(), cpu::optional_input(in, 1), eps, op);
}

Tensors add_rms_norm_forward_cuda(const Tensors& in, const Attrs& a) {
  const char* op = "add_rms_norm";
  cpu::expect_inputs(in, 2, 3, op);
  const double eps = a.f("eps", 1e-6);
  check_args(in[0], cpu::optional_input(in, 2), eps, op);
  check_residual(in[0], in[1], op, "residual");
  return norm_forward(in[0], in[1], cpu::optional_input(in, 2), eps, op);
}

// ---- backward ----

// acc: this block's accumulators, blockDim.y lanes of C (dw), used when accumulate;
// partial: (gridDim.x, C). HasDh: dx = dh + the norm's gradient (add_rms_norm_backward, x is h);
// dh is null otherwise.
template <typename T, int V, bool HasW, bool HasDh>
__global__ void __launch_bounds__(kMaxThreads<T>) rms_norm_backward_kernel(T* __restrict__ dx, acc_t<T>* acc_global, acc_t<T>* __restrict__ partial,
                                         const T* __restrict__ g, const T* __restrict__ dh,
                                         const T* __restrict__ x,
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
    const Vec<T, V>* dhv = HasDh ? as_vec<T, V>(dh + off) : nullptr;  // read by the dx pass
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
      Vec<T, V> out, wj, dhj;
      if (HasW) wj = wv[j];
      if (HasDh) dhj = dhv[j];
#pragma unroll
      for (int i = 0; i < V; ++i) {
        const A gr = convert<A>(v[0].v[i]), xv = convert<A>(v[1].v[i]);
        const A gw = HasW ? gr * convert<A>(wj.v[i]) : gr;
        const A d = rs * gw - xv * k;
        out.v[i] = convert<T>(HasDh ? convert<A>(dhj.v[i]) + d : d);
        if (accumulate) acc[j * V + i] += gr * (xv * rs);
      }
      dst[j] = out;
    });
  }
  if (accumulate) store_block_partial(acc_block, partial, C);
}

// rms_norm_backward (dh_in undefined) or add_rms_norm_backward: checks the shared inputs
// {g, x, weight or None, rstd} (x is h for the fused op) and runs the kernels.
Tensors norm_backward(const Tensor& g_in, const Tensor& dh_in, const Tensor& x_in, const Tensor& w_in,
                      const Tensor& rstd_in, const Attrs& a, const char* op) {
  check_args(x_in, w_in, 0.0, op);
  cpu::expect_same_dtype(x_in, g_in, op, "gradient");
  LS_CHECK(is_floating(rstd_in.dtype()), TypeError, op, ": rstd must be floating-point, got ",
           dtype_name(rstd_in.dtype()));
  LS_CHECK(rstd_in.numel() * x_in.size(-1) == x_in.numel(), ValueError, op, ": rstd of shape ",
           shape_str(rstd_in.shape()), " does not match the input shape ", shape_str(x_in.shape()));
  LS_CHECK(g_in.shape() == x_in.shape(), ValueError, op, ": gradient of shape ",
           shape_str(g_in.shape()), " does not match the input shape ", shape_str(x_in.shape()));
  const bool has_dh = dh_in.defined();
  if (has_dh) check_residual(x_in, dh_in, op, "residual gradient");
  Tensor g = ops::contiguous(g_in), x = ops::contiguous(x_in);
  Tensor dh = has_dh ? ops::contiguous(dh_in) : Tensor();
  Tensor w = w_in.defined() ? ops::contiguous(w_in) : Tensor();
  const DType sd = acc_dtype(x.dtype());
  Tensor rstd = ops::contiguous(rstd_in.dtype() == sd ? rstd_in : ops::to_dtype(rstd_in, sd));
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
    const T* pdh = has_dh ? dh.data<T>() : nullptr;
    const bool vec = vectorizable<T>(C, {g.raw_data(), x.raw_data(), dx.raw_data(), pw, pdh});
    const int V = vec ? kVec<T> : 1;
    const AccPlan plan = acc_plan<T>(R, C / V, accumulate ? C : 0, sizeof(A), kMaxLanes * 32 * sizeof(A),
                                  x.device().index);
    const int64_t blocks = R > 0 ? plan.launch.grid : 0;
    Tensor partial = Tensor::empty({accumulate ? blocks * C : 0}, sd, x.device());
    Tensor scratch = Tensor::empty({accumulate && !plan.in_smem ? blocks * plan.launch.block.y * C : 0},
                                   sd, x.device());
    auto run = [&](auto vec_tag, auto dh_tag) {
      constexpr int VV = decltype(vec_tag)::value;
      constexpr bool HasDh = decltype(dh_tag)::value;
      auto kernel = pw ? rms_norm_backward_kernel<T, VV, true, HasDh> : rms_norm_backward_kernel<T, VV, false, HasDh>;
      if (plan.smem > 48 * 1024)
        check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(plan.smem)), op);
      kernel<<<plan.launch.grid, plan.launch.block, plan.smem, current_stream()>>>(
          dx.data<T>(), scratch.data<A>(), partial.data<A>(), g.data<T>(), pdh, x.data<T>(), pw,
          rstd.data<A>(), R, C, accumulate, plan.in_smem);
    };
    auto run_dh = [&](auto vec_tag) {
      if (has_dh) run(vec_tag, std::true_type{});
      else run(vec_tag, std::false_type{});
    };
    if (R > 0) {
      if (vec) run_dh(std::integral_constant<int, kVec<T>>{});
      else run_dh(std::integral_constant<int, 1>{});
      check_launch(op);
    }
    if (want_dw && C > 0)
      launch_column_sum(dw.data<T>(), partial.data<A>(), blocks, C, C);
    check_launch(op);
  });
  return {dx, dw};
}

Tensors rms_norm_backward_cuda(const Tensors& in, const Attrs& a) {
  const char* op = "rms_norm_backward";
  LS_CHECK(in.size() == 4 && in[0].defined() && in[1].defined() && in[3].defined(), ValueError, op,
           ": expected inputs {g, x, weight or None, rstd}");
  return norm_backward(in[0], Tensor(), in[1], in[2], in[3], a, op);
}

Tensors add_rms_norm_backward_cuda(const Tensors& in, const Attrs& a) {
  const char* op = "add_rms_norm_backward";
  LS_CHECK(in.size() == 5 && in[0].defined() && in[1].defined() && in[2].defined() && in[4].defined(),
           ValueError, op, ": expected inputs {dy, dh, h, weight or None, rstd}");
  return norm_backward(in[0], in[1], in[2], in[3], in[4], a, op);
}

}  // namespace

LS_REGISTER(rms_norm_cuda) {
  const std::vector<DType> kFloat = {DType::Float32, DType::Float64, DType::BFloat16, DType::Float16};
  register_kernel("rms_norm", "cuda", rms_norm_forward_cuda, kFloat);
  register_kernel("rms_norm_backward", "cuda", rms_norm_backward_cuda, kFloat);
  register_kernel("add_rms_norm", "cuda", add_rms_norm_forward_cuda, kFloat);
  register_kernel("add_rms_norm_backward", "cuda", add_rms_norm_backward_cuda, kFloat);
}

}  // namespace ls::cuda
