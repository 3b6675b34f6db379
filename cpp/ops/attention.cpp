// Scaled dot-product attention with optional causal mask, user mask and grouped kv heads (GQA).
//   q (B, NH, T, HS), k and v (B, NKV, S, HS), NH % NKV == 0: query head h reads kv head
//   h / (NH / NKV). mask (optional) broadcastable to (B, NH, T, S): bool (true = attend) or
//   float (added to the scores). causal masks key s > t + (S - T) (bottom-right aligned, so a
//   query block at the end of a longer kv cache sees every earlier key).
// Forward, per (b, h):
//   X = scale * Q K^T + mask   (T, S), masked entries -inf;   scale defaults to 1/sqrt(HS)
//   lse[t] = log sum_s exp(X[t, s]);   P = exp(X - lse);   out = P V
//   outputs {out (B, NH, T, HS), lse (B, NH, T)}. A row with every key masked gives out = 0 and
//   lse = -inf (not NaN).
// Backward (op "attention_backward"), FlashAttention style: P is recomputed from q, k and lse,
//   dV = P^T dO;  dP = dO V^T;  D[t] = sum_d dO[t, d] O[t, d];  dX = P * (dP - D + dlse)
//   dQ = scale dX K;  dK = scale dX^T Q
// and with GQA the dK, dV of the NH / NKV query heads sharing a kv head are summed (in head
// order, so the result does not depend on the thread count). The mask gets no gradient.
// CPU layout of the work: one (b, h, block of up to 64 query rows) per task, so even B*NH = 1
// uses every thread; a task materialises its (rows, S) score block and does the matmuls with
// the packed GEMM (gemm_cpu.h) reading q, k, v in place through strides (K^T is never copied).
// Under a causal mask a block stops at its last visible key, skipping the masked columns.
// The backward runs one task per (b, h) because dK and dV accumulate over all query rows.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "cpu_loops.h"
#include "gemm_cpu.h"
#include "ops.h"

namespace ls::ops {

namespace {

using cpu::gemm;

constexpr int64_t kBlockRows = 64;  // query rows per task / score block


void check_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask,
                     const char* op) {
  LS_CHECK(q.defined() && k.defined() && v.defined(), ValueError, op, ": q, k and v are required");
  LS_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, ValueError, op,
           ": q must be (B, NH, T, HS) and k, v (B, NKV, S, HS); got shapes ", shape_str(q.shape()),
           ", ", shape_str(k.shape()), ", ", shape_str(v.shape()));
  LS_CHECK(q.dtype() == DType::Float32 || q.dtype() == DType::Float64, TypeError, op,
           ": q must be float32 or float64, got ", dtype_name(q.dtype()));
  LS_CHECK(k.dtype() == q.dtype() && v.dtype() == q.dtype(), TypeError, op,
           ": q, k, v dtypes differ: ", dtype_name(q.dtype()), ", ", dtype_name(k.dtype()), ", ",
           dtype_name(v.dtype()));
  LS_CHECK(k.shape() == v.shape(), ValueError, op, ": k and v shapes differ: ",
           shape_str(k.shape()), " and ", shape_str(v.shape()));
  const int64_t B = q.size(0), NH = q.size(1), T = q.size(2), HS = q.size(3);
  const int64_t NKV = k.size(1), S = k.size(2);
  LS_CHECK(k.size(0) == B && k.size(3) == HS, ValueError, op,
           ": k and v must be (B, NKV, S, HS) with q's B and HS; q ", shape_str(q.shape()), ", k ",
           shape_str(k.shape()));
  LS_CHECK(NKV > 0 ? NH % NKV == 0 : NH == 0, ValueError, op, ": the number of query heads (",
           NH, ") must be a multiple of the number of kv heads (", NKV, ")");
  LS_CHECK(k.device() == q.device() && v.device() == q.device(), ValueError, op,
           ": q, k, v must be on one device");
  if (!mask.defined()) return;
  LS_CHECK(mask.dtype() == DType::Bool || mask.dtype() == DType::Float32 ||
               mask.dtype() == DType::Float64,
           TypeError, op, ": mask must be bool or float, got ", dtype_name(mask.dtype()));
  LS_CHECK(mask.device() == q.device(), ValueError, op, ": mask is on ", mask.device().str(),
           " but q is on ", q.device().str());
  const Shape full{B, NH, T, S};
  bool ok = mask.dim() <= 4;
  for (int64_t i = 0; ok && i < mask.dim(); ++i) {
    int64_t m = mask.size(mask.dim() - 1 - i), f = full[3 - i];
    ok = m == f || m == 1;
  }
  LS_CHECK(ok, ValueError, op, ": mask of shape ", shape_str(mask.shape()),
           " does not broadcast to (B, NH, T, S) = ", shape_str(full));
}

double default_scale(const Attrs& a, int64_t HS) {
  return a.f("scale", HS > 0 ? 1.0 / std::sqrt(double(HS)) : 1.0);
}

// Everything a task needs to rebuild the masked, scaled scores of one (b, h, row block).
template <typename T>
struct Problem {
  int64_t B, NH, NKV, T_, S, HS, group;
  bool causal;
  T scale;
  const T *q, *k, *v;
  // mask seen as (B, NH, T, S) through broadcast strides; at most one of these is set
  const bool* mbool = nullptr;
  const T* mfloat = nullptr;
  Shape mstride;

  const T* qh(int64_t b, int64_t h) const { return q + (b * NH + h) * T_ * HS; }
  const T* kh(int64_t b, int64_t h) const { return k + (b * NKV + h / group) * S * HS; }
  const T* vh(int64_t b, int64_t h) const { return v + (b * NKV + h / group) * S * HS; }

  // Keys [0, s_end) can be visible to rows [t0, t0 + rows); the rest are causally masked.
  int64_t key_end(int64_t t0, int64_t rows) const {
    return causal ? std::clamp<int64_t>(t0 + rows + S - T_, 0, S) : S;
  }

  // X[i, s] for rows t0 + i, keys s < s_end, written into x (ld = s_end).
  void scores(int64_t b, int64_t h, int64_t t0, int64_t rows, int64_t s_end, T* x) const {
    gemm<T>(rows, s_end, HS, scale, qh(b, h) + t0 * HS, HS, 1, kh(b, h), 1, HS, T(0), x, s_end);
    const T ninf = -std::numeric_limits<T>::infinity();
    for (int64_t i = 0; i < rows; ++i) {
      const int64_t t = t0 + i;
      T* xr = x + i * s_end;
      if (causal)
        for (int64_t s = std::max<int64_t>(0, t + S - T_ + 1); s < s_end; ++s) xr[s] = ninf;
      const int64_t mrow = b * mstride[0] + h * mstride[1] + t * mstride[2];
      if (mbool) {
        for (int64_t s = 0; s < s_end; ++s)
          if (!mbool[mrow + s * mstride[3]]) xr[s] = ninf;
      } else if (mfloat) {
        for (int64_t s = 0; s < s_end; ++s) xr[s] += mfloat[mrow + s * mstride[3]];
      }
    }
  }
};

template <typename T>
Problem<T> make_problem(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask,
                        const Attrs& a) {
  Problem<T> p;
  p.B = q.size(0), p.NH = q.size(1), p.T_ = q.size(2), p.HS = q.size(3);
  p.NKV = k.size(1), p.S = k.size(2);
  p.group = p.NKV ? p.NH / p.NKV : 1;
  p.causal = a.b("causal", false);
  p.scale = T(default_scale(a, p.HS));
  p.q = q.data<T>(), p.k = k.data<T>(), p.v = v.data<T>();
  p.mstride = Shape(4, 0);
  if (mask.defined()) {
    p.mstride = cpu::broadcast_strides(mask, {p.B, p.NH, p.T_, p.S});
    if (mask.dtype() == DType::Bool) p.mbool = mask.data<bool>();
    else p.mfloat = mask.data<T>();
  }
  return p;
}

// The mask as the kernels read it: contiguous (not expanded), float masks in q's dtype.
Tensor prepare_mask(const Tensor& mask, DType dt) {
  if (!mask.defined()) return mask;
  return contiguous(mask.dtype() == DType::Bool ? mask : to_dtype(mask, dt));
}

Tensors attention_forward(const Tensors& in, const Attrs& a) {
  LS_CHECK(in.size() == 3 || in.size() == 4, ValueError,
           "attention: expected the inputs (q, k, v) or (q, k, v, mask)");
  const Tensor mask_in = in.size() > 3 ? in[3] : Tensor();
  check_attention(in[0], in[1], in[2], mask_in, "attention");
  Tensor q = contiguous(in[0]), k = contiguous(in[1]), v = contiguous(in[2]);
  Tensor mask = prepare_mask(mask_in, q.dtype());
  const int64_t B = q.size(0), NH = q.size(1), T = q.size(2), HS = q.size(3);
  Tensor out = Tensor::empty(q.shape(), q.dtype(), q.device());
  Tensor lse = Tensor::empty({B, NH, T}, q.dtype(), q.device());
  DISPATCH_FLOAT(q.dtype(), "attention", {
    using F = scalar_t;
    const Problem<F> p = make_problem<F>(q, k, v, mask, a);
    F* po = out.data<F>();
    F* pl = lse.data<F>();
    const int64_t nblk = (T + kBlockRows - 1) / kBlockRows;
    parallel_for(0, B * NH * nblk, 1, [&](int64_t j0, int64_t j1) {
      std::vector<F> x(size_t(kBlockRows * p.S));
      for (int64_t j = j0; j < j1; ++j) {
        const int64_t bh = j / nblk, b = bh / NH, h = bh % NH;
        const int64_t t0 = (j % nblk) * kBlockRows, rows = std::min(kBlockRows, T - t0);
        const int64_t s_end = p.key_end(t0, rows);
        p.scores(b, h, t0, rows, s_end, x.data());
        F* lrow = pl + bh * T + t0;  // lrow points at lse[b, h, t0]
        for (int64_t i = 0; i < rows; ++i) {
          F* xr = x.data() + i * s_end;
          F m = -std::numeric_limits<F>::infinity();
          for (int64_t s = 0; s < s_end; ++s) m = std::max(m, xr[s]);
          if (m == -std::numeric_limits<F>::infinity()) {  // every key masked: P row = 0
            std::fill(xr, xr + s_end, F(0));
            lrow[i] = m;
            continue;
          }
          F sum = 0;
          for (int64_t s = 0; s < s_end; ++s) sum += (xr[s] = std::exp(xr[s] - m));
          const F inv = F(1) / sum;
          for (int64_t s = 0; s < s_end; ++s) xr[s] *= inv;
          lrow[i] = m + std::log(sum);
        }
        // out[b, h, t0:t0+rows, :] = P (rows, s_end) @ V[:s_end]; s_end = 0 writes zeros
        gemm<F>(rows, HS, s_end, F(1), x.data(), s_end, 1, p.vh(b, h), HS, 1, F(0),
                po + (bh * T + t0) * HS, HS);
      }
    });
  });
  return {out, lse};
}

// Inputs {q, k, v, mask, out, lse, dout, dlse}: mask and dlse may be undefined.
Tensors attention_backward_cpu(const Tensors& in, const Attrs& a) {
  LS_CHECK((in.size() == 7 || in.size() == 8) && in[4].defined() && in[5].defined() &&
               in[6].defined(),
           ValueError, "attention_backward: expected the inputs (q, k, v, mask, out, lse, dout[, dlse])");
  check_attention(in[0], in[1], in[2], in[3], "attention_backward");
  Tensor q = contiguous(in[0]), k = contiguous(in[1]), v = contiguous(in[2]);
  Tensor mask = prepare_mask(in[3], q.dtype());
  Tensor o = contiguous(in[4]), lse = contiguous(in[5]), dout = contiguous(in[6]);
  Tensor dlse = in.size() > 7 && in[7].defined() ? contiguous(in[7]) : Tensor();
  const int64_t B = q.size(0), NH = q.size(1), T = q.size(2), HS = q.size(3);
  const int64_t NKV = k.size(1), S = k.size(2);
  LS_CHECK(o.shape() == q.shape() && dout.shape() == q.shape() && lse.shape() == (Shape{B, NH, T}),
           ValueError, "attention_backward: out and dout must be ", shape_str(q.shape()),
           " and lse (B, NH, T); got ", shape_str(o.shape()), ", ", shape_str(dout.shape()), ", ",
           shape_str(lse.shape()));
  for (const Tensor* t : {&o, &lse, &dout, &dlse})
    LS_CHECK(!t->defined() || t->dtype() == q.dtype(), TypeError,
             "attention_backward: out, lse, dout and dlse must have q's dtype ", dtype_name(q.dtype()));
  LS_CHECK(!dlse.defined() || dlse.shape() == lse.shape(), ValueError,
           "attention_backward: dlse must have lse's shape ", shape_str(lse.shape()));
  Tensor dq = Tensor::empty(q.shape(), q.dtype(), q.device());
  Tensor dk = Tensor::empty(k.shape(), q.dtype(), q.device());
  Tensor dv = Tensor::empty(v.shape(), q.dtype(), q.device());
  const int64_t group = NKV ? NH / NKV : 1;
  // With GQA every query head gets its own dK, dV slice first; they are summed afterwards.
  Tensor dk_h = group == 1 ? dk : Tensor::empty({B, NH, S, HS}, q.dtype(), q.device());
  Tensor dv_h = group == 1 ? dv : Tensor::empty({B, NH, S, HS}, q.dtype(), q.device());
  DISPATCH_FLOAT(q.dtype(), "attention_backward", {
    using F = scalar_t;
    const Problem<F> p = make_problem<F>(q, k, v, mask, a);
    const F *po = o.data<F>(), *pl = lse.data<F>(), *pdo = dout.data<F>();
    const F* pdl = dlse.defined() ? dlse.data<F>() : nullptr;
    F *pdq = dq.data<F>(), *pdk = dk_h.data<F>(), *pdv = dv_h.data<F>();
    parallel_for(0, B * NH, 1, [&](int64_t j0, int64_t j1) {
      std::vector<F> pr(size_t(kBlockRows * S)), dp(size_t(kBlockRows * S));
      for (int64_t bh = j0; bh < j1; ++bh) {
        const int64_t b = bh / NH, h = bh % NH;
        F* dkb = pdk + bh * S * HS;  // dK, dV of this query head, (S, HS)
        F* dvb = pdv + bh * S * HS;
        std::fill(dkb, dkb + S * HS, F(0));
        std::fill(dvb, dvb + S * HS, F(0));
        for (int64_t t0 = 0; t0 < T; t0 += kBlockRows) {
          const int64_t rows = std::min(kBlockRows, T - t0), s_end = p.key_end(t0, rows);
          const F* qb = p.qh(b, h) + t0 * HS;  // q[b, h, t0, :]
          const F* dob = pdo + (bh * T + t0) * HS;
          const F* ob = po + (bh * T + t0) * HS;
          const F* lb = pl + bh * T + t0;
          p.scores(b, h, t0, rows, s_end, pr.data());
          for (int64_t i = 0; i < rows; ++i) {  // P = exp(X - lse); 0 on fully masked rows
            F* r = pr.data() + i * s_end;
            if (lb[i] == -std::numeric_limits<F>::infinity()) std::fill(r, r + s_end, F(0));
            else for (int64_t s = 0; s < s_end; ++s) r[s] = std::exp(r[s] - lb[i]);
          }
          // dV[:s_end] += P^T dO   (P^T read through strides)
          gemm<F>(s_end, HS, rows, F(1), pr.data(), 1, s_end, dob, HS, 1, F(1), dvb, HS);
          // dP = dO V^T
          gemm<F>(rows, s_end, HS, F(1), dob, HS, 1, p.vh(b, h), 1, HS, F(0), dp.data(), s_end);
          for (int64_t i = 0; i < rows; ++i) {  // dX = P (dP - D + dlse), in place of dP
            F D = 0;
            for (int64_t d = 0; d < HS; ++d) D += dob[i * HS + d] * ob[i * HS + d];
            if (pdl) D -= pdl[bh * T + t0 + i];
            const F* r = pr.data() + i * s_end;
            F* ds = dp.data() + i * s_end;
            for (int64_t s = 0; s < s_end; ++s) ds[s] = r[s] * (ds[s] - D);
          }
          // dQ = scale dX K;  dK[:s_end] += scale dX^T Q
          gemm<F>(rows, HS, s_end, p.scale, dp.data(), s_end, 1, p.kh(b, h), HS, 1, F(0),
                  pdq + (bh * T + t0) * HS, HS);
          gemm<F>(s_end, HS, rows, p.scale, dp.data(), 1, s_end, qb, HS, 1, F(1), dkb, HS);
        }
      }
    });
    if (group > 1) {  // dK[b, g] = sum over the group's query heads, in head order
      const F *sk = dk_h.data<F>(), *sv = dv_h.data<F>();
      F *tk = dk.data<F>(), *tv = dv.data<F>();
      const int64_t n = S * HS;
      parallel_for(0, B * NKV, 1, [&](int64_t j0, int64_t j1) {
        for (int64_t j = j0; j < j1; ++j) {
          const int64_t src0 = j * group * n;  // (b, kvh) -> first query head b*NH + kvh*group
          for (int64_t e = 0; e < n; ++e) {
            F ak = 0, av = 0;
            for (int64_t g = 0; g < group; ++g) {
              ak += sk[src0 + g * n + e];
              av += sv[src0 + g * n + e];
            }
            tk[j * n + e] = ak;
            tv[j * n + e] = av;
          }
        }
      });
    }
  });
  return {dq, dk, dv};
}

Tensors attention_backward(const BackwardCtx& c, const Tensors& g) {
  if (!(c.needs_grad[0] || c.needs_grad[1] || c.needs_grad[2])) return {};
  Tensors d = call("attention_backward",
                   {c.inputs[0], c.inputs[1], c.inputs[2], c.inputs[3], c.outputs[0],
                    c.outputs[1], g[0], g[1]},
                   c.attrs);
  for (int i = 0; i < 3; ++i)
    if (!c.needs_grad[i]) d[i] = Tensor();
  return {d[0], d[1], d[2], Tensor()};
}

}  // namespace

Tensors attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask,
                  bool causal, std::optional<double> scale) {
  // The rest is each backend's to check: check_attention's dtypes are the CPU kernel's (the CUDA
  // kernels take bf16 and fp16), and checking them here turned GPU bf16 calls away.
  LS_CHECK(q.defined() && k.defined() && v.defined(), ValueError, "attention: q, k and v are required");
  Attrs a{{"causal", causal}};
  if (scale) a.set("scale", *scale);
  return call("attention", {q, k, v, mask}, a);
}

LS_REGISTER(attention) {
  declare_op("attention", {attention_backward, /*save_inputs=*/true, /*save_outputs=*/true});
  declare_op("attention_backward", {});
  register_kernel("attention", "cpu", attention_forward, {DType::Float32, DType::Float64});
  register_kernel("attention_backward", "cpu", attention_backward_cpu,
                  {DType::Float32, DType::Float64});
}

}  // namespace ls::ops
