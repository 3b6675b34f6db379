// layer_norm over the last dim on the GPU: forward and backward; float32, float64, bfloat16 and
// float16 (16-bit inputs compute in float32).
//
//   mean = sum_c x[c] / C      rstd = 1 / sqrt(sum_c (x[c] - mean)^2 / C + eps)   (biased var)
//   xhat = (x - mean) rstd     y = xhat * w + b
//   backward, per row, with dxhat = g * w:
//     dx = rstd (dxhat - mean_c(dxhat) - xhat mean_c(dxhat xhat))
//     dw = sum_rows g xhat       db = sum_rows g
//
// Shapes: x (..., C) viewed as (R, C); w, b (C,) or None; mean, rstd (...) = x.shape[:-1].
// Registry ops as cpp/ops/layer_norm.cpp: "layer_norm" {x, w?, b?} attr eps -> {y, mean, rstd};
// "layer_norm_backward" {g, x, w?, mean, rstd} attrs dweight, dbias -> {dx, dw, db} (a parameter
// gradient not asked for has shape (0,)). One difference: mean and rstd are float32 for 16-bit
// inputs (float64 for float64), so the backward starts from exact statistics; the backward
// accepts statistics of either dtype.
//
// Kernels (row machinery of rows.cuh). Forward: one read of the row into registers, then the
// mean, the sum of squared deviations from it (two-pass variance, no cancellation) and the write
// of y, all from registers: one read and one write of x. Backward: one kernel reads g and x once
// (cached), reduces sum dxhat and sum dxhat xhat per row, writes dx, and adds g xhat and g into
// its block's partial rows of dw and db (shared memory; see rows.cuh for the deterministic
// two-stage sum); a second small kernel adds the per-block partials in block order.
#include "core/registry.h"
#include "ops/kernel_checks.h"
#include "ops/ops.h"
#include "rows.cuh"

namespace ls::cuda {

namespace {

using namespace rows;

template <typename T, int V, bool HasW, bool HasB>
__global__ void __launch_bounds__(kMaxThreads<T>) layer_norm_kernel(T* __restrict__ y, acc_t<T>* __restrict__ mean, acc_t<T>* __restrict__ rstd,
                                  const T* __restrict__ x, const T* __restrict__ w,
                                  const T* __restrict__ b, int64_t R, int64_t C, acc_t<T> eps) {
  using A = acc_t<T>;
  __shared__ A red[kMaxLanes * 32];
  const int64_t nvec = C / V;
  const Vec<T, V>* wv = as_vec<T, V>(w);
  const Vec<T, V>* bv = as_vec<T, V>(b);
  for (int64_t base = int64_t(blockIdx.x) * blockDim.y; base < R; base += int64_t(gridDim.x) * blockDim.y) {
    const int64_t r = base + threadIdx.y;
    const int64_t n = r < R ? nvec : 0;  // a lane past the last row joins the reductions only
    const Vec<T, V>* src[1] = {as_vec<T, V>(x + (r < R ? r : 0) * C)};  // src points at x[r, :]
    Vec<T, V>* dst = as_vec<T, V>(y + (r < R ? r : 0) * C);
    Vec<T, V> c[1][kCache];
    A part = 0;
    row_pass<true>(src, n, c, [&](int64_t, const Vec<T, V> (&v)[1]) {
#pragma unroll
      for (int i = 0; i < V; ++i) part += convert<A>(v[0].v[i]);
    });
    const A mu = row_reduce(part, Sum{}, red) / A(C);
    part = 0;
    row_pass<false>(src, n, c, [&](int64_t, const Vec<T, V> (&v)[1]) {
#pragma unroll
      for (int i = 0; i < V; ++i) {
        A d = convert<A>(v[0].v[i]) - mu;
        part += d * d;
      }
    });
    const A rs = A(1) / sqrt(row_reduce(part, Sum{}, red) / A(C) + eps);
    row_pass<false>(src, n, c, [&](int64_t j, const Vec<T, V> (&v)[1]) {
      Vec<T, V> out, wj, bj;
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
      mean[r] = mu;
      rstd[r] = rs;
    }
  }
}

// Validation shared by both entries (call() can reach the kernels directly).
void check_args(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps, const char* op) {
  LS_CHECK(x.defined(), ValueError, op, ": input is None");
  LS_CHECK(is_floating(x.dtype()), TypeError, op, ": needs a floating-point input, got ",
           dtype_name(x.dtype()));
  LS_CHECK(x.dim() >= 1, ValueError, op, ": input must have at least one dimension, got a 0-d tensor");
  const int64_t C = x.size(-1);
  for (auto [p, name] : {std::pair{&weight, "weight"}, std::pair{&bias, "bias"}}) {
    if (!p->defined()) continue;
    LS_CHECK(p->shape() == Shape{C}, ValueError, op, ": ", name, " of shape ", shape_str(p->shape()),
             " does not match the normalized dimension of input shape ", shape_str(x.shape()),
             " (expected (", C, ",))");
    cpu::expect_same_dtype(x, *p, op, name);
  }
  LS_CHECK(eps >= 0, ValueError, op, ": eps must be >= 0, got ", eps);
}

template <typename T, int V>
void launch_forward(T* y, acc_t<T>* mean, acc_t<T>* rstd, const T* x, const T* w, const T* b,
                    int64_t R, int64_t C, double eps) {
  const Launch L = row_launch<T>(R, C / V);
  const acc_t<T> e = acc_t<T>(eps);
  if (w && b) layer_norm_kernel<T, V, true, true><<<L.grid, L.block, 0, current_stream()>>>(y, mean, rstd, x, w, b, R, C, e);
  else if (w) layer_norm_kernel<T, V, true, false><<<L.grid, L.block, 0, current_stream()>>>(y, mean, rstd, x, w, b, R, C, e);
  else if (b) layer_norm_kernel<T, V, false, true><<<L.grid, L.block, 0, current_stream()>>>(y, mean, rstd, x, w, b, R, C, e);
  else layer_norm_kernel<T, V, false, false><<<L.grid, L.block, 0, current_stream()>>>(y, mean, rstd, x, w, b, R, C, e);
}

Tensors layer_norm_forward_cuda(const Tensors& in, const Attrs& a) {
  const char* op = "layer_norm";
  cpu::expect_inputs(in, 1, 3, op);
  const double eps = a.f("eps", 1e-5);
  check_args(in[0], cpu::optional_input(in, 1), cpu::optional_input(in, 2), eps, op);
  Tensor x = ops::contiguous(in[0]);
  Tensor w = cpu::optional_input(in, 1), b = cpu::optional_input(in, 2);
  if (w.defined()) w = ops::contiguous(w);
  if (b.defined()) b = ops::contiguous(b);
  const int64_t C = x.size(-1);
  const Shape stat_shape(x.shape().begin(), x.shape().end() - 1);
  const int64_t R = shape_numel(stat_shape);
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  Tensor mean = Tensor::empty(stat_shape, acc_dtype(x.dtype()), x.device());
  Tensor rstd = Tensor::empty(stat_shape, acc_dtype(x.dtype()), x.device());
  if (R == 0) return {y, mean, rstd};
  set_device(x, op);
  CUDA_DISPATCH_FLOAT(x.dtype(), op, {
    using T = scalar_t;
    using A = acc_t<T>;
    const T* pw = w.defined() ? w.data<T>() : nullptr;
    const T* pb = b.defined() ? b.data<T>() : nullptr;
    if (vectorizable<T>(C, {x.raw_data(), y.raw_data(), pw, pb}))
      launch_forward<T, kVec<T>>(y.data<T>(), mean.data<A>(), rstd.data<A>(), x.data<T>(), pw, pb, R, C, eps);
    else
      launch_forward<T, 1>(y.data<T>(), mean.data<A>(), rstd.data<A>(), x.data<T>(), pw, pb, R, C, eps);
  });
  check_launch(op);
  return {y, mean, rstd};
}

// ---- backward ----

// acc: this block's accumulators, blockDim.y lanes of 2C (dw then db), or null when neither
// parameter gradient is wanted; partial: (gridDim.x, 2C).
template <typename T, int V, bool HasW>
__global__ void __launch_bounds__(kMaxThreads<T>) layer_norm_backward_kernel(T* __restrict__ dx, acc_t<T>* acc_global, acc_t<T>* __restrict__ partial,
                                           const T* __restrict__ g, const T* __restrict__ x,
                                           const T* __restrict__ w, const acc_t<T>* __restrict__ mean,
                                           const acc_t<T>* __restrict__ rstd, int64_t R, int64_t C,
                                           bool accumulate, bool acc_in_smem) {
  using A = acc_t<T>;
  __shared__ A red[kMaxLanes * 32];
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int64_t nvec = C / V, width = 2 * C;
  A* acc_block = acc_in_smem ? reinterpret_cast<A*>(smem_raw)
                 : accumulate ? acc_global + int64_t(blockIdx.x) * blockDim.y * width : nullptr;
  A* acc = acc_block + threadIdx.y * width;  // this lane's dw (acc[0:C]) and db (acc[C:2C])
  if (accumulate) zero_owned<V>(acc, 2, C);
  const Vec<T, V>* wv = as_vec<T, V>(w);
  for (int64_t base = int64_t(blockIdx.x) * blockDim.y; base < R; base += int64_t(gridDim.x) * blockDim.y) {
    const int64_t r = base + threadIdx.y;
    const int64_t n = r < R ? nvec : 0;
    const int64_t off = (r < R ? r : 0) * C;  // g + off points at g[r, :]
    const Vec<T, V>* src[2] = {as_vec<T, V>(g + off), as_vec<T, V>(x + off)};
    Vec<T, V>* dst = as_vec<T, V>(dx + off);
    const A mu = r < R ? mean[r] : A(0), rs = r < R ? rstd[r] : A(0);
    Vec<T, V> c[2][kCache2];
    A s1 = 0, s2 = 0;  // sum dxhat, sum dxhat xhat
    row_pass<true>(src, n, c, [&](int64_t j, const Vec<T, V> (&v)[2]) {
      Vec<T, V> wj;
      if (HasW) wj = wv[j];
#pragma unroll
      for (int i = 0; i < V; ++i) {
        A gw = convert<A>(v[0].v[i]);
        if (HasW) gw *= convert<A>(wj.v[i]);
        s1 += gw;
        s2 += gw * ((convert<A>(v[1].v[i]) - mu) * rs);
      }
    });
    const A m1 = row_reduce(s1, Sum{}, red) / A(C);
    const A m2 = row_reduce(s2, Sum{}, red) / A(C);
    row_pass<false>(src, n, c, [&](int64_t j, const Vec<T, V> (&v)[2]) {
      Vec<T, V> out, wj;
      if (HasW) wj = wv[j];
#pragma unroll
      for (int i = 0; i < V; ++i) {
        const A gr = convert<A>(v[0].v[i]);
        const A xhat = (convert<A>(v[1].v[i]) - mu) * rs;
        const A gw = HasW ? gr * convert<A>(wj.v[i]) : gr;
        out.v[i] = convert<T>(rs * (gw - m1 - xhat * m2));
        if (accumulate) {
          acc[j * V + i] += gr * xhat;
          acc[C + j * V + i] += gr;
        }
      }
      dst[j] = out;
    });
  }
  if (accumulate) store_block_partial(acc_block, partial, width);
}

template <typename T, int V>
void launch_backward(T* dx, acc_t<T>* scratch, acc_t<T>* partial, const T* g, const T* x, const T* w,
                     const acc_t<T>* mean, const acc_t<T>* rstd, int64_t R, int64_t C, bool accumulate,
                     const AccPlan& plan) {
  auto kernel = w ? layer_norm_backward_kernel<T, V, true> : layer_norm_backward_kernel<T, V, false>;
  if (plan.smem > 48 * 1024)
    check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(plan.smem)),
          "layer_norm_backward");
  kernel<<<plan.launch.grid, plan.launch.block, plan.smem, current_stream()>>>(dx, scratch, partial, g, x, w, mean, rstd, R,
                                                              C, accumulate, plan.in_smem);
}

Tensors layer_norm_backward_cuda(const Tensors& in, const Attrs& a) {
  const char* op = "layer_norm_backward";
  LS_CHECK(in.size() == 5 && in[0].defined() && in[1].defined() && in[3].defined() && in[4].defined(),
           ValueError, op, ": expected inputs {g, x, weight or None, mean, rstd}");
  check_args(in[1], in[2], Tensor(), 0.0, op);
  cpu::expect_same_dtype(in[1], in[0], op, "gradient");
  for (int i : {3, 4})
    LS_CHECK(is_floating(in[i].dtype()), TypeError, op, ": statistics must be floating-point, got ",
             dtype_name(in[i].dtype()));
  LS_CHECK(in[3].numel() == in[4].numel() && in[3].numel() * in[1].size(-1) == in[1].numel(),
           ValueError, op, ": statistics of shapes ", shape_str(in[3].shape()), " and ",
           shape_str(in[4].shape()), " do not match the input shape ", shape_str(in[1].shape()));
  LS_CHECK(in[0].shape() == in[1].shape(), ValueError, op, ": gradient of shape ",
           shape_str(in[0].shape()), " does not match the input shape ", shape_str(in[1].shape()));
  Tensor g = ops::contiguous(in[0]), x = ops::contiguous(in[1]);
  Tensor w = in[2].defined() ? ops::contiguous(in[2]) : Tensor();
  const DType sd = acc_dtype(x.dtype());
  Tensor mean = ops::contiguous(in[3].dtype() == sd ? in[3] : ops::to_dtype(in[3], sd));
  Tensor rstd = ops::contiguous(in[4].dtype() == sd ? in[4] : ops::to_dtype(in[4], sd));
  const bool want_dw = a.b("dweight", false), want_db = a.b("dbias", false);
  const int64_t C = x.size(-1), R = mean.numel();
  Tensor dx = Tensor::empty(x.shape(), x.dtype(), x.device());
  Tensor dw = Tensor::empty({want_dw ? C : 0}, x.dtype(), x.device());
  Tensor db = Tensor::empty({want_db ? C : 0}, x.dtype(), x.device());
  const bool accumulate = (want_dw || want_db) && C > 0;
  set_device(x, op);
  CUDA_DISPATCH_FLOAT(x.dtype(), op, {
    using T = scalar_t;
    using A = acc_t<T>;
    const T* pw = w.defined() ? w.data<T>() : nullptr;
    const bool vec = vectorizable<T>(C, {g.raw_data(), x.raw_data(), dx.raw_data(), pw});
    const int V = vec ? kVec<T> : 1;
    const AccPlan plan = acc_plan<T>(R, C / V, accumulate ? 2 * C : 0, sizeof(A),
                                  kMaxLanes * 32 * sizeof(A), x.device().index);
    const int64_t blocks = R > 0 ? plan.launch.grid : 0;
    Tensor partial = Tensor::empty({accumulate ? blocks * 2 * C : 0}, sd, x.device());
    Tensor scratch = Tensor::empty(
        {accumulate && !plan.in_smem ? blocks * plan.launch.block.y * 2 * C : 0}, sd, x.device());
    if (R > 0) {
      if (vec)
        launch_backward<T, kVec<T>>(dx.data<T>(), scratch.data<A>(), partial.data<A>(), g.data<T>(),
                                    x.data<T>(), pw, mean.data<A>(), rstd.data<A>(), R, C, accumulate, plan);
      else
        launch_backward<T, 1>(dx.data<T>(), scratch.data<A>(), partial.data<A>(), g.data<T>(),
                              x.data<T>(), pw, mean.data<A>(), rstd.data<A>(), R, C, accumulate, plan);
      check_launch(op);
    }
    // partial rows are (dw, db) pairs: dw[c] = sum_b partial[b, c], db[c] = sum_b partial[b, C + c]
    if (want_dw && C > 0)
      launch_column_sum(dw.data<T>(), partial.data<A>(), blocks, 2 * C, C);
    if (want_db && C > 0)
      launch_column_sum(db.data<T>(), partial.data<A>() + C, blocks, 2 * C, C);
    check_launch(op);
  });
  return {dx, dw, db};
}

}  // namespace

LS_REGISTER(layer_norm_cuda) {
  const std::vector<DType> kFloat = {DType::Float32, DType::Float64, DType::BFloat16, DType::Float16};
  register_kernel("layer_norm", "cuda", layer_norm_forward_cuda, kFloat);
  register_kernel("layer_norm_backward", "cuda", layer_norm_backward_cuda, kFloat);
}

}  // namespace ls::cuda
