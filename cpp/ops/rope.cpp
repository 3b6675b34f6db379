// Rotary position embedding (RoPE, Su et al. 2021): rotate pairs of channels of every head by a
// position-dependent angle.
//   x (B, T, NH, HS) (any number of leading dims before T, including none), cos and sin
//   (T, HS/2) with cos[t, i] = cos(t * theta_i) -> out of x's shape.
//   For pair i of head channels (a, b):  out_a = a cos - b sin,  out_b = a sin + b cos.
//   interleaved = true:  pairs (2i, 2i+1)        (GPT-J, Meta LLaMA)
//   interleaved = false: pairs (i, i + HS/2)     (GPT-NeoX, Hugging Face LLaMA)
// Attr inverse = true rotates by -angle (sin negated). The rotation is orthogonal, so
//   dx = the inverse rotation of the incoming gradient: the same kernel with inverse flipped.
// cos and sin may also get gradients (op "rope_cos_sin_backward"), summed over the leading dims
// and the heads, position by position in a fixed order:
//   dcos[t, i] = sum g_a a + g_b b,   dsin[t, i] = sum g_b a - g_a b   (negated when inverse).
#include <algorithm>
#include <vector>

#include "cpu_loops.h"
#include "op_args.h"
#include "ops.h"

namespace ls::ops {

// Validation shared by the typed wrapper and the kernels of every backend. cpu_kernel: the CPU
// kernels' dtypes (float32/float64); other backends also take 16-bit floats.
void check_rope_inputs(const Tensors& in, bool cpu_kernel) {
  LS_CHECK(in.size() == 3, ValueError, "rope: expected the inputs (x, cos, sin)");
  check_rope(in[0], in[1], in[2], "rope", cpu_kernel);
}

void check_rope_cos_sin_backward_args(const Tensors& in) {
  LS_CHECK(in.size() == 2 && in[0].defined() && in[1].defined(), ValueError,
           "rope_cos_sin_backward: expected the inputs (grad, x)");
  LS_CHECK(in[0].shape() == in[1].shape() && in[1].dim() >= 3, ValueError,
           "rope_cos_sin_backward: grad shape ", shape_str(in[0].shape()), " must equal x shape ",
           shape_str(in[1].shape()), " (..., T, NH, HS)");
  LS_CHECK(in[0].dtype() == in[1].dtype(), TypeError, "rope_cos_sin_backward: grad and x dtypes differ: ",
           dtype_name(in[0].dtype()), " and ", dtype_name(in[1].dtype()));
  LS_CHECK(in[1].size(-1) % 2 == 0, ValueError, "rope_cos_sin_backward: head size must be even, got ",
           in[1].size(-1));
}

void check_rope(const Tensor& x, const Tensor& cos, const Tensor& sin, const char* op,
                bool cpu_kernel) {
  LS_CHECK(x.defined() && cos.defined() && sin.defined(), ValueError, op,
           ": x, cos and sin are required");
  LS_CHECK(x.dim() >= 3, ValueError, op, ": x must be (..., T, NH, HS), got shape ",
           shape_str(x.shape()));
  LS_CHECK(is_floating(x.dtype()), TypeError, op, ": x must be floating-point, got ",
           dtype_name(x.dtype()));
  LS_CHECK(!cpu_kernel || x.dtype() == DType::Float32 || x.dtype() == DType::Float64, TypeError,
           op, ": x must be float32 or float64 on the CPU, got ", dtype_name(x.dtype()));
  LS_CHECK(cos.dtype() == x.dtype() && sin.dtype() == x.dtype(), TypeError, op,
           ": cos and sin must have x's dtype ", dtype_name(x.dtype()), ", got ",
           dtype_name(cos.dtype()), " and ", dtype_name(sin.dtype()));
  const int64_t T = x.size(-3), HS = x.size(-1);
  LS_CHECK(HS % 2 == 0, ValueError, op, ": head size HS must be even, got ", HS, " (x shape ",
           shape_str(x.shape()), ")");
  const Shape want{T, HS / 2};
  LS_CHECK(cos.shape() == want && sin.shape() == want, ValueError, op, ": cos and sin must be (T, HS/2) = ",
           shape_str(want), " for x of shape ", shape_str(x.shape()), ", got ",
           shape_str(cos.shape()), " and ", shape_str(sin.shape()));
  LS_CHECK(cos.device() == x.device() && sin.device() == x.device(), ValueError, op,
           ": x, cos and sin must be on one device");
}

namespace {


// Where the two members of pair i live inside one head row of HS channels.
struct PairLayout {
  int64_t half;
  bool interleaved;
  int64_t a(int64_t i) const { return interleaved ? 2 * i : i; }
  int64_t b(int64_t i) const { return interleaved ? 2 * i + 1 : i + half; }
};

Tensors rope_forward(const Tensors& in, const Attrs& attrs) {
  check_rope_inputs(in, true);
  Tensor x = contiguous(in[0]), cs = contiguous(in[1]), sn = contiguous(in[2]);
  const bool inverse = attrs.b("inverse", false);
  const int64_t T = x.size(-3), NH = x.size(-2), HS = x.size(-1);
  const PairLayout L{HS / 2, attrs.b("interleaved", false)};
  const int64_t rows = HS ? x.numel() / HS : 0;  // one row per (leading..., t, head)
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  DISPATCH_FLOAT(x.dtype(), "rope", {
    using T_ = scalar_t;
    const T_* px = x.data<T_>();
    const T_* pc = cs.data<T_>();
    const T_* ps = sn.data<T_>();
    T_* po = out.data<T_>();
    const T_ sgn = inverse ? T_(-1) : T_(1);
    cpu::parallel_rows(rows, HS, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t t = (r / NH) % T;
        const T_* xr = px + r * HS;  // xr points at x[..., t, h, :]
        T_* orow = po + r * HS;
        const T_* c = pc + t * L.half;  // c points at cos[t, :]
        const T_* s = ps + t * L.half;
        for (int64_t i = 0; i < L.half; ++i) {
          const T_ a = xr[L.a(i)], b = xr[L.b(i)], si = sgn * s[i];
          orow[L.a(i)] = a * c[i] - b * si;
          orow[L.b(i)] = a * si + b * c[i];
        }
      }
    });
  });
  return {out};
}

// Inputs {g, x}: the gradients of cos and sin, each (T, HS/2).
Tensors rope_cos_sin_backward(const Tensors& in, const Attrs& attrs) {
  check_rope_cos_sin_backward_args(in);
  Tensor g = contiguous(in[0]), x = contiguous(in[1]);
  const bool inverse = attrs.b("inverse", false);
  const int64_t T = x.size(-3), NH = x.size(-2), HS = x.size(-1);
  const PairLayout L{HS / 2, attrs.b("interleaved", false)};
  const int64_t per_lead = T * NH * HS;
  const int64_t lead = per_lead != 0 ? x.numel() / per_lead : 0;
  Tensor dcos = Tensor::empty({T, L.half}, x.dtype(), x.device());
  Tensor dsin = Tensor::empty({T, L.half}, x.dtype(), x.device());
  DISPATCH_FLOAT(x.dtype(), "rope_cos_sin_backward", {
    using T_ = scalar_t;
    const T_* px = x.data<T_>();
    const T_* pg = g.data<T_>();
    T_* dc = dcos.data<T_>();
    T_* ds = dsin.data<T_>();
    const double sgn = inverse ? -1.0 : 1.0;
    // One thread per position t: every sum runs over (leading, head) in the same order.
    parallel_for(0, T, std::max<int64_t>(1, 4096 / std::max<int64_t>(lead * NH * HS, 1)),
                 [&](int64_t t0, int64_t t1) {
      std::vector<double> acc_c(size_t(L.half)), acc_s(size_t(L.half));
      for (int64_t t = t0; t < t1; ++t) {
        std::fill(acc_c.begin(), acc_c.end(), 0.0);
        std::fill(acc_s.begin(), acc_s.end(), 0.0);
        for (int64_t l = 0; l < lead; ++l)
          for (int64_t h = 0; h < NH; ++h) {
            const int64_t off = ((l * T + t) * NH + h) * HS;  // x[l, t, h, :]
            const T_* xr = px + off;
            const T_* gr = pg + off;
            for (int64_t i = 0; i < L.half; ++i) {
              const double a = xr[L.a(i)], b = xr[L.b(i)], ga = gr[L.a(i)], gb = gr[L.b(i)];
              acc_c[i] += ga * a + gb * b;
              acc_s[i] += gb * a - ga * b;
            }
          }
        for (int64_t i = 0; i < L.half; ++i) {
          dc[t * L.half + i] = T_(acc_c[i]);
          ds[t * L.half + i] = T_(sgn * acc_s[i]);
        }
      }
    });
  });
  return {dcos, dsin};
}

Tensors rope_backward(const BackwardCtx& c, const Tensors& g) {
  Tensor dx, dcos, dsin;
  if (c.needs_grad[0]) {  // x's gradient reads cos and sin only
    Attrs inv = c.attrs;
    inv.set("inverse", !c.attrs.b("inverse", false));
    dx = call1("rope", {g[0], c.inputs[1], c.inputs[2]}, inv);
  }
  if (c.needs_grad[1] || c.needs_grad[2]) {
    Tensors d = call("rope_cos_sin_backward", {g[0], c.inputs[0]}, c.attrs);
    if (c.needs_grad[1]) dcos = d[0];
    if (c.needs_grad[2]) dsin = d[1];
  }
  return {dx, dcos, dsin};
}

}  // namespace

Tensor rope(const Tensor& x, const Tensor& cos, const Tensor& sin, bool interleaved) {
  check_rope(x, cos, sin, "rope", false);
  return call1("rope", {x, cos, sin}, {{"interleaved", interleaved}});
}

LS_REGISTER(rope) {
  declare_op("rope", {rope_backward});
  declare_op("rope_cos_sin_backward", {});
  register_kernel("rope", "cpu", rope_forward, {DType::Float32, DType::Float64});
  register_kernel("rope_cos_sin_backward", "cpu", rope_cos_sin_backward,
                  {DType::Float32, DType::Float64});
}

}  // namespace ls::ops
