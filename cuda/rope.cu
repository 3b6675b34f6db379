// Rotary position embedding on the GPU: "rope" and "rope_cos_sin_backward", float32, float64,
// bfloat16, float16 (16-bit compute in float32); the math of the CPU reference cpp/ops/rope.cpp:
//   x (..., T, NH, HS) (any number of leading dims), cos and sin (T, HS/2) of x's dtype,
//   cos[t, i] = cos(t * theta_i) -> out of x's shape. Pair i of a head row (a, b):
//     out_a = a cos - b sin,  out_b = a sin + b cos      (sin negated with attr inverse)
//   interleaved = true: pairs (2i, 2i+1); false: pairs (i, i + HS/2).
//   The backward to x is this op with inverse flipped (declared with the CPU op).
//   rope_cos_sin_backward {g, x} -> dcos, dsin (T, HS/2), summed over leading dims and heads:
//     dcos[t, i] = sum g_a a + g_b b,   dsin[t, i] = sum g_b a - g_a b   (negated when inverse)
// Forward: each thread rotates G consecutive pairs of one head row, G chosen so the loads of a,
// b, cos and sin are 16-byte packs (G = 1 when HS/2 or a pointer does not allow it); the row's
// position t = (row / NH) % T. x is read in place when its heads are adjacent rows of contiguous
// channels and its (leading..., t) rows are rs elements apart: the q and k slices of a fused qkv
// projection (B, T, NH + 2 NKV, HS), which were copied first; out is contiguous.
// Backward to cos/sin: one thread per (t, i) sums over (leading, head) in a fixed order, accumulating in float32 (float64 for float64), so the result
// is deterministic; parallelism is T * HS/2 threads.
#include "core/registry.h"
#include "ops/op_args.h"
#include "ops/ops.h"
#include "vec_map.cuh"

namespace ls::cuda {

namespace {

// I: the index type, uint32_t when x has fewer than 2^31 elements (int64_t otherwise): the
// three divisions per thread that place it (row, pair group, position) are a few instructions in
// 32 bits and several dozen in 64, which made the 16-bit forward compute-bound.
template <int G, typename I, typename T>
__global__ void rope_kernel(const T* __restrict__ x, const T* __restrict__ cs, const T* __restrict__ sn,
                            T* __restrict__ out, I rows, I half, I NH, I T_, I rs, bool interleaved,
                            bool inverse) {
  using A = acc_t<T>;
  using P = Pack<T, G>;
  using P2 = Pack<T, 2 * G>;
  const I groups = half / G;  // groups of G pairs per head row
  const I total = rows * groups;
  for (I idx = I(blockIdx.x) * blockDim.x + threadIdx.x; idx < total; idx += I(gridDim.x) * blockDim.x) {
    const I r = idx / groups, i0 = (idx - r * groups) * G;
    const I rt = r / NH, t = rt % T_;                   // rt: the (leading..., t) row
    const T* xr = x + rt * rs + (r - rt * NH) * 2 * half;  // xr points at x[..., t, h, :]
    T* orow = out + r * 2 * half;
    const P c = *reinterpret_cast<const P*>(cs + t * half + i0);  // cos[t, i0 : i0+G]
    const P s = *reinterpret_cast<const P*>(sn + t * half + i0);
    A a[G], b[G];
    if (interleaved) {
      // G == 1 runs for pointers of any alignment: no 2-element vector then
      const P2 p = G == 1 ? P2{{xr[2 * i0], xr[2 * i0 + 1]}} : *reinterpret_cast<const P2*>(xr + 2 * i0);
#pragma unroll
      for (int j = 0; j < G; ++j) { a[j] = convert<A>(p.v[2 * j]); b[j] = convert<A>(p.v[2 * j + 1]); }
    } else {
      const P pa = *reinterpret_cast<const P*>(xr + i0), pb = *reinterpret_cast<const P*>(xr + half + i0);
#pragma unroll
      for (int j = 0; j < G; ++j) { a[j] = convert<A>(pa.v[j]); b[j] = convert<A>(pb.v[j]); }
    }
    A oa[G], ob[G];
#pragma unroll
    for (int j = 0; j < G; ++j) {
      const A cj = convert<A>(c.v[j]), sj = inverse ? -convert<A>(s.v[j]) : convert<A>(s.v[j]);
      oa[j] = a[j] * cj - b[j] * sj;
      ob[j] = a[j] * sj + b[j] * cj;
    }
    if (interleaved) {
      P2 p;
#pragma unroll
      for (int j = 0; j < G; ++j) { p.v[2 * j] = convert<T>(oa[j]); p.v[2 * j + 1] = convert<T>(ob[j]); }
      if (G == 1) {
        orow[2 * i0] = p.v[0];
        orow[2 * i0 + 1] = p.v[1];
      } else {
        *reinterpret_cast<P2*>(orow + 2 * i0) = p;
      }
    } else {
      P pa, pb;
#pragma unroll
      for (int j = 0; j < G; ++j) { pa.v[j] = convert<T>(oa[j]); pb.v[j] = convert<T>(ob[j]); }
      *reinterpret_cast<P*>(orow + i0) = pa;
      *reinterpret_cast<P*>(orow + half + i0) = pb;
    }
  }
}

// One thread per (t, i): sums over lead and heads in a fixed order.
template <typename T>
__global__ void rope_cos_sin_backward_kernel(const T* __restrict__ g, const T* __restrict__ x,
                                             T* __restrict__ dcos, T* __restrict__ dsin, int64_t lead,
                                             int64_t T_, int64_t NH, int64_t half, bool interleaved,
                                             bool inverse) {
  using A = acc_t<T>;
  const int64_t total = T_ * half;
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = idx / half, i = idx - t * half;
    const int64_t ia = interleaved ? 2 * i : i, ib = interleaved ? 2 * i + 1 : i + half;
    A acc_c = A(0), acc_s = A(0);
    for (int64_t l = 0; l < lead; ++l)
      for (int64_t h = 0; h < NH; ++h) {
        const int64_t off = ((l * T_ + t) * NH + h) * 2 * half;  // x[l, t, h, :]
        const A a = convert<A>(x[off + ia]), b = convert<A>(x[off + ib]);
        const A ga = convert<A>(g[off + ia]), gb = convert<A>(g[off + ib]);
        acc_c += ga * a + gb * b;
        acc_s += gb * a - ga * b;
      }
    dcos[idx] = convert<T>(acc_c);
    dsin[idx] = convert<T>(inverse ? -acc_s : acc_s);
  }
}


template <int G, typename T>
void launch_rope(const Tensor& x, const Tensor& cs, const Tensor& sn, Tensor& out, int64_t rows,
                 int64_t half, int64_t NH, int64_t T_, int64_t rs, bool interleaved, bool inverse) {
  const unsigned grid = grid_stride_blocks(rows * (half / G), kThreads);
  // the last element read, x[rows / NH - 1] + NH HS, below 2^31: 32-bit indices
  if ((rows / NH) * rs < (int64_t(1) << 31) && out.numel() < (int64_t(1) << 31))
    rope_kernel<G, uint32_t><<<grid, kThreads, 0, current_stream()>>>(
        cptr<T>(x), cptr<T>(cs), cptr<T>(sn), mptr<T>(out), uint32_t(rows), uint32_t(half), uint32_t(NH),
        uint32_t(T_), uint32_t(rs), interleaved, inverse);
  else
    rope_kernel<G, int64_t><<<grid, kThreads, 0, current_stream()>>>(cptr<T>(x), cptr<T>(cs), cptr<T>(sn), mptr<T>(out),
                                                                     rows, half, NH, T_, rs, interleaved, inverse);
}

// Elements between consecutive (leading..., t) rows of x (..., T, NH, HS) whose heads are
// adjacent rows of HS contiguous channels and whose leading dims fold into those rows; -1 for any
// other layout.
int64_t rope_row_stride(const Tensor& x) {
  const int64_t nd = x.dim(), NH = x.size(-2), HS = x.size(-1);
  if ((HS > 1 && x.strides()[nd - 1] != 1) || (NH > 1 && x.strides()[nd - 2] != HS)) return -1;
  // the heads merged: (leading..., t) rows of NH HS contiguous channels
  Shape shape(x.shape().begin(), x.shape().end() - 1), strides(x.strides().begin(), x.strides().end() - 1);
  shape.back() = NH * HS;
  strides.back() = 1;
  int64_t rows, rs;
  return ops::contiguous_rows(x.as_strided(shape, strides, x.offset()), rows, rs) ? rs : -1;
}

Tensors rope_forward(const Tensors& in, const Attrs& attrs) {
  ops::check_rope_inputs(in, false);
  const int64_t in_rs = rope_row_stride(in[0]);
  Tensor x = in_rs >= 0 ? in[0] : ops::contiguous(in[0]), cs = ops::contiguous(in[1]), sn = ops::contiguous(in[2]);
  const bool inverse = attrs.b("inverse", false), interleaved = attrs.b("interleaved", false);
  const int64_t T_ = x.size(-3), NH = x.size(-2), HS = x.size(-1), half = HS / 2;
  const int64_t rs = in_rs >= 0 ? in_rs : NH * HS;
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  const int64_t rows = HS ? x.numel() / HS : 0;  // one row per (leading..., t, head)
  if (rows == 0 || half == 0) return {out};
  set_device(x, "rope");
  CUDA_DISPATCH_FLOAT(x.dtype(), "rope", {
    using T = scalar_t;
    constexpr int G = kVec<T>;
    bool packed = half % G == 0 && rs % (2 * G) == 0;  // every row's pairs aligned as x's first
    for (const Tensor* t : {&x, &cs, &sn, &out})
      packed &= reinterpret_cast<uintptr_t>(t->raw_data()) % (2 * G * sizeof(T)) == 0;
    if (packed) launch_rope<G, T>(x, cs, sn, out, rows, half, NH, T_, rs, interleaved, inverse);
    else launch_rope<1, T>(x, cs, sn, out, rows, half, NH, T_, rs, interleaved, inverse);
  });
  check_launch("rope");
  return {out};
}

Tensors rope_cos_sin_backward(const Tensors& in, const Attrs& attrs) {
  ops::check_rope_cos_sin_backward_args(in);
  Tensor g = ops::contiguous(in[0]), x = ops::contiguous(in[1]);
  const bool inverse = attrs.b("inverse", false), interleaved = attrs.b("interleaved", false);
  const int64_t T_ = x.size(-3), NH = x.size(-2), half = x.size(-1) / 2;
  const int64_t per_lead = T_ * NH * 2 * half;
  const int64_t lead = per_lead != 0 ? x.numel() / per_lead : 0;
  Tensor dcos = Tensor::empty({T_, half}, x.dtype(), x.device());
  Tensor dsin = Tensor::empty({T_, half}, x.dtype(), x.device());
  if (T_ * half == 0) return {dcos, dsin};
  set_device(x, "rope_cos_sin_backward");
  CUDA_DISPATCH_FLOAT(x.dtype(), "rope_cos_sin_backward", {
    using T = scalar_t;
    rope_cos_sin_backward_kernel<T><<<grid_stride_blocks(T_ * half, kThreads), kThreads, 0, current_stream()>>>(
        cptr<T>(g), cptr<T>(x), mptr<T>(dcos), mptr<T>(dsin), lead, T_, NH, half, interleaved, inverse);
  });
  check_launch("rope_cos_sin_backward");
  return {dcos, dsin};
}

}  // namespace

LS_REGISTER(rope_cuda) {
  const std::vector<DType> kFloat = {DType::Float32, DType::Float64, DType::BFloat16, DType::Float16};
  register_kernel("rope", "cuda", rope_forward, kFloat);
  register_kernel("rope_cos_sin_backward", "cuda", rope_cos_sin_backward, kFloat);
}

}  // namespace ls::cuda
