// layer_norm over the last dim on the GPU, and its variant fused with the residual add before it
// (add_layer_norm): forward and backward; float32, float64, bfloat16 and float16 (16-bit inputs
// compute in float32).
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
//
// add_layer_norm (ops as cpp/ops/layer_norm.cpp): h = x + r, y = layer_norm(h); backward
// dx = dr = dh + layer_norm_backward(dy). "add_layer_norm" {x, r, w?, b?} attr eps ->
// {h, y, mean, rstd}; "add_layer_norm_backward" {dy, dh, h, w?, mean, rstd} attrs dweight, dbias
// -> {dx, dw, db}. The same kernels with a template flag: the forward's first pass forms h
// (rounded to T, as a separate add would round it), writes it and caches it (add_row_pass of
// rows.cuh), so x and r are read once and h, y written once; the backward reads dh in its dx
// pass and writes dx = dh + the norm's gradient, rounded once.
#include "core/registry.h"
#include "ops/kernel_checks.h"
#include "ops/ops.h"
#include "rows.cuh"

namespace ls::cuda {

namespace {

using namespace rows;

// Add: the row normalised is h = x + res, written to h by the first pass (h and res are null
// otherwise). h is not __restrict__: the later passes read back through it what they wrote.
template <typename T, int V, bool HasW, bool HasB, bool Add>
__global__ void __launch_bounds__(kMaxThreads<T>) layer_norm_kernel(T* __restrict__ y, T* h, acc_t<T>* __restrict__ mean, acc_t<T>* __restrict__ rstd,
                                  const T* __restrict__ x, const T* __restrict__ res,
                                  const T* __restrict__ w, const T* __restrict__ b, int64_t R,
                                  int64_t C, acc_t<T> eps) {
  using A = acc_t<T>;
  __shared__ A red[kMaxLanes * 32];
  const int64_t nvec = C / V;
  const Vec<T, V>* wv = as_vec<T, V>(w);
  const Vec<T, V>* bv = as_vec<T, V>(b);
  for (int64_t base = int64_t(blockIdx.x) * blockDim.y; base < R; base += int64_t(gridDim.x) * blockDim.y) {
    const int64_t r = base + threadIdx.y;
    const int64_t n = r < R ? nvec : 0;  // a lane past the last row joins the reductions only
    const int64_t off = (r < R ? r : 0) * C;
    const T* row = Add ? h : x;
    const Vec<T, V>* src[1] = {as_vec<T, V>(row + off)};  // src points at x[r, :] (h[r, :] if Add)
    Vec<T, V>* dst = as_vec<T, V>(y + off);
    Vec<T, V> c[1][kCache];
    A part = 0;
    auto sum = [&](int64_t, const Vec<T, V> (&v)[1]) {
#pragma unroll
      for (int i = 0; i < V; ++i) part += convert<A>(v[0].v[i]);
    };
    if constexpr (Add)
      add_row_pass(as_vec<T, V>(x + off), as_vec<T, V>(res + off), as_vec<T, V>(h + off), n, c, sum);
    else
      row_pass<true>(src, n, c, sum);
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

// add_layer_norm's second input (or its backward's dh): of x's shape and dtype.
void check_residual(const Tensor& x, const Tensor& res, const char* op, const char* name) {
  LS_CHECK(res.shape() == x.shape(), ValueError, op, ": ", name, " of shape ", shape_str(res.shape()),
           " does not match the input shape ", shape_str(x.shape()));
  cpu::expect_same_dtype(x, res, op, name);
}

template <typename T, int V, bool Add>
void launch_forward(T* y, T* h, acc_t<T>* mean, acc_t<T>* rstd, const T* x, const T* res,
                    const T* w, const T* b, int64_t R, int64_t C, double eps) {
  const Launch L = row_launch<T>(R, C / V);
  const acc_t<T> e = acc_t<T>(eps);
  auto kernel = w ? (b ? layer_norm_kernel<T, V, true, true, Add> : layer_norm_kernel<T, V, true, false, Add>)
                  : (b ? layer_norm_kernel<T, V, false, true, Add> : layer_norm_kernel<T, V, false, false, Add>);
  kernel<<<L.grid, L.block, 0, current_stream()>>>(y, h, mean, rstd, x, res, w, b, R, C, e);
}

// layer_norm (res undefined) -> {y, mean, rstd}, or add_layer_norm -> {h, y, mean, rstd}.
Tensors norm_forward(const Tensor& x_in, const Tensor& res_in, const Tensor& w_in,
                     const Tensor& b_in, double eps, const char* op) {
  const bool add = res_in.defined();
  Tensor x = ops::contiguous(x_in);
  Tensor res = add ? ops::contiguous(res_in) : Tensor();
  Tensor w = w_in.defined() ? ops::contiguous(w_in) : Tensor();
  Tensor b = b_in.defined() ? ops::contiguous(b_in) : Tensor();
  const int64_t C = x.size(-1);
  const Shape stat_shape(x.shape().begin(), x.shape().end() - 1);
  const int64_t R = shape_numel(stat_shape);
  Tensor h = add ? Tensor::empty(x.shape(), x.dtype(), x.device()) : Tensor();
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  Tensor mean = Tensor::empty(stat_shape, acc_dtype(x.dtype()), x.device());
  Tensor rstd = Tensor::empty(stat_shape, acc_dtype(x.dtype()), x.device());
  const Tensors out = add ? Tensors{h, y, mean, rstd} : Tensors{y, mean, rstd};
  if (R == 0) return out;
  set_device(x, op);
  CUDA_DISPATCH_FLOAT(x.dtype(), op, {
    using T = scalar_t;
    using A = acc_t<T>;
    const T* pw = w.defined() ? w.data<T>() : nullptr;
    const T* pb = b.defined() ? b.data<T>() : nullptr;
    const T* pr = add ? res.data<T>() : nullptr;
    T* ph = add ? h.data<T>() : nullptr;
    auto run = [&](auto vec_tag, auto add_tag) {
      launch_forward<T, decltype(vec_tag)::value, decltype(add_tag)::value>(
          y.data<T>(), ph, mean.data<A>(), rstd.data<A>(), x.data<T>(), pr, pw, pb, R, C, eps);
    };
    auto run_add = [&](auto vec_tag) {
      if (add) run(vec_tag, std::true_type{});
      else run(vec_tag, std::false_type{});
    };
    if (vectorizable<T>(C, {x.raw_data(), y.raw_data(), pr, ph, pw, pb}))
      run_add(std::integral_constant<int, kVec<T>>{});
    else
      run_add(std::integral_constant<int, 1>{});
  });
  check_launch(op);
  return out;
}

Tensors layer_norm_forward_cuda(const Tensors& in, const Attrs& a) {
  const char* op = "layer_norm";
  cpu::expect_inputs(in, 1, 3, op);
  const double eps = a.f("eps", 1e-5);
  check_args(in[0], cpu::optional_input(in, 1), cpu::optional_input(in, 2), eps, op);
  return norm_forward(in[0], Tensor(), cpu::optional_input(in, 1), cpu::optional_input(in, 2), eps, op);
}

Tensors add_layer_norm_forward_cuda(const Tensors& in, const Attrs& a) {
  const char* op = "add_layer_norm";
  cpu::expect_inputs(in, 2, 4, op);
  const double eps = a.f("eps", 1e-5);
  check_args(in[0], cpu::optional_input(in, 2), cpu::optional_input(in, 3), eps, op);
  check_residual(in[0], in[1], op, "residual");
  return norm_forward(in[0], in[1], cpu::optional_input(in, 2), cpu::optional_input(in, 3), eps, op);
}

// ---- backward ----

// acc: this block's accumulators, blockDim.y lanes of 2C (dw then db), or null when neither
// parameter gradient is wanted; partial: (gridDim.x, 2C). HasDh: dx = dh + the norm's gradient
// (add_layer_norm_backward, x is h); dh is null otherwise.
template <typename T, int V, bool HasW, bool HasDh>
__global__ void __launch_bounds__(kMaxThreads<T>) layer_norm_backward_kernel(T* __restrict__ dx, acc_t<T>* acc_global, acc_t<T>* __restrict__ partial,
                                           const T* __restrict__ g, const T* __restrict__ dh,
                                           const T* __restrict__ x,
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
    const Vec<T, V>* dhv = HasDh ? as_vec<T, V>(dh + off) : nullptr;  // read by the dx pass
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
      Vec<T, V> out, wj, dhj;
      if (HasW) wj = wv[j];
      if (HasDh) dhj = dhv[j];
#pragma unroll
      for (int i = 0; i < V; ++i) {
        const A gr = convert<A>(v[0].v[i]);
        const A xhat = (convert<A>(v[1].v[i]) - mu) * rs;
        const A gw = HasW ? gr * convert<A>(wj.v[i]) : gr;
        const A d = rs * (gw - m1 - xhat * m2);
        out.v[i] = convert<T>(HasDh ? convert<A>(dhj.v[i]) + d : d);
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

template <typename T, int V, bool HasDh>
void launch_backward(T* dx, acc_t<T>* scratch, acc_t<T>* partial, const T* g, const T* dh, const T* x,
                     const T* w, const acc_t<T>* mean, const acc_t<T>* rstd, int64_t R, int64_t C,
                     bool accumulate, const AccPlan& plan) {
  auto kernel = w ? layer_norm_backward_kernel<T, V, true, HasDh> : layer_norm_backward_kernel<T, V, false, HasDh>;
  if (plan.smem > 48 * 1024)
    check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(plan.smem)),
          "layer_norm_backward");
  kernel<<<plan.launch.grid, plan.launch.block, plan.smem, current_stream()>>>(dx, scratch, partial, g, dh, x, w, mean, rstd,
                                                              R, C, accumulate, plan.in_smem);
}

// layer_norm_backward (dh_in undefined) or add_layer_norm_backward: checks the shared inputs
// {g, x, weight or None, mean, rstd} (x is h for the fused op) and runs the kernels.
Tensors norm_backward(const Tensor& g_in, const Tensor& dh_in, const Tensor& x_in, const Tensor& w_in,
                      const Tensor& mean_in, const Tensor& rstd_in, const Attrs& a, const char* op) {
  check_args(x_in, w_in, Tensor(), 0.0, op);
  cpu::expect_same_dtype(x_in, g_in, op, "gradient");
  for (const Tensor* t : {&mean_in, &rstd_in})
    LS_CHECK(is_floating(t->dtype()), TypeError, op, ": statistics must be floating-point, got ",
             dtype_name(t->dtype()));
  LS_CHECK(mean_in.numel() == rstd_in.numel() && mean_in.numel() * x_in.size(-1) == x_in.numel(),
           ValueError, op, ": statistics of shapes ", shape_str(mean_in.shape()), " and ",
           shape_str(rstd_in.shape()), " do not match the input shape ", shape_str(x_in.shape()));
  LS_CHECK(g_in.shape() == x_in.shape(), ValueError, op, ": gradient of shape ",
           shape_str(g_in.shape()), " does not match the input shape ", shape_str(x_in.shape()));
  const bool has_dh = dh_in.defined();
  if (has_dh) check_residual(x_in, dh_in, op, "residual gradient");
  Tensor g = ops::contiguous(g_in), x = ops::contiguous(x_in);
  Tensor dh = has_dh ? ops::contiguous(dh_in) : Tensor();
  Tensor w = w_in.defined() ? ops::contiguous(w_in) : Tensor();
  const DType sd = acc_dtype(x.dtype());
  Tensor mean = ops::contiguous(mean_in.dtype() == sd ? mean_in : ops::to_dtype(mean_in, sd));
  Tensor rstd = ops::contiguous(rstd_in.dtype() == sd ? rstd_in : ops::to_dtype(rstd_in, sd));
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
    const T* pdh = has_dh ? dh.data<T>() : nullptr;
    const bool vec = vectorizable<T>(C, {g.raw_data(), x.raw_data(), dx.raw_data(), pw, pdh});
    const int V = vec ? kVec<T> : 1;
    const AccPlan plan = acc_plan<T>(R, C / V, accumulate ? 2 * C : 0, sizeof(A),
                                  kMaxLanes * 32 * sizeof(A), x.device().index);
    const int64_t blocks = R > 0 ? plan.launch.grid : 0;
    Tensor partial = Tensor::empty({accumulate ? blocks * 2 * C : 0}, sd, x.device());
    Tensor scratch = Tensor::empty(
        {accumulate && !plan.in_smem ? blocks * plan.launch.block.y * 2 * C : 0}, sd, x.device());
    auto run = [&](auto vec_tag, auto dh_tag) {
      launch_backward<T, decltype(vec_tag)::value, decltype(dh_tag)::value>(
          dx.data<T>(), scratch.data<A>(), partial.data<A>(), g.data<T>(), pdh, x.data<T>(), pw,
          mean.data<A>(), rstd.data<A>(), R, C, accumulate, plan);
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
    // partial rows are (dw, db) pairs: dw[c] = sum_b partial[b, c], db[c] = sum_b partial[b, C + c]
    if (want_dw && C > 0)
      launch_column_sum(dw.data<T>(), partial.data<A>(), blocks, 2 * C, C);
    if (want_db && C > 0)
      launch_column_sum(db.data<T>(), partial.data<A>() + C, blocks, 2 * C, C);
    check_launch(op);
  });
  return {dx, dw, db};
}

Tensors layer_norm_backward_cuda(const Tensors& in, const Attrs& a) {
  const char* op = "layer_norm_backward";
  LS_CHECK(in.size() == 5 && in[0].defined() && in[1].defined() && in[3].defined() && in[4].defined(),
           ValueError, op, ": expected inputs {g, x, weight or None, mean, rstd}");
  return norm_backward(in[0], Tensor(), in[1], in[2], in[3], in[4], a, op);
}

Tensors add_layer_norm_backward_cuda(const Tensors& in, const Attrs& a) {
  const char* op = "add_layer_norm_backward";
  LS_CHECK(in.size() == 6 && in[0].defined() && in[1].defined() && in[2].defined() &&
               in[4].defined() && in[5].defined(),
           ValueError, op, ": expected inputs {dy, dh, h, weight or None, mean, rstd}");
  return norm_backward(in[0], in[1], in[2], in[3], in[4], in[5], a, op);
}

}  // namespace

LS_REGISTER(layer_norm_cuda) {
  const std::vector<DType> kFloat = {DType::Float32, DType::Float64, DType::BFloat16, DType::Float16};
  register_kernel("layer_norm", "cuda", layer_norm_forward_cuda, kFloat);
  register_kernel("layer_norm_backward", "cuda", layer_norm_backward_cuda, kFloat);
  register_kernel("add_layer_norm", "cuda", add_layer_norm_forward_cuda, kFloat);
  register_kernel("add_layer_norm_backward", "cuda", add_layer_norm_backward_cuda, kFloat);
}

}  // namespace ls::cuda
