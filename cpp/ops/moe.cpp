// Mixture-of-Experts dispatch: token permutation by expert, grouped GEMM over per-expert
// segments, and the gate-weighted un-permute (combine). N tokens, C channels, E experts, each
// token routed to k experts; a (token, slot) pair is an "assignment", a = n * k + s.
//
// Registry signatures (every backend registers these names with exactly these inputs, attrs and
// outputs; all index tensors are int64):
//
//   moe_permute {expert_ids (N, k) int32/int64}  attrs n_experts E, capacity (-1: dropless)
//     -> token (N*k,), row (N, k), offsets (E+1,), counts (E,)
//     Sorted rows 0..N*k-1: expert e owns rows [offsets[e], offsets[e+1]); within an expert the
//     assignments keep token order (a stable counting sort). row[n, s] is the sorted row of the
//     assignment, -1 when it was dropped; token[r] is the token that row r holds. counts[e] is
//     the number of assignments to e before dropping (the load, for metrics and balancing).
//     Capacity mode: each expert keeps at most `capacity` assignments, first all slot-0
//     assignments in token order, then slot 1, ... (a token's first choice has priority, as in
//     GShard/Switch). Dropped assignments fill rows offsets[E]..N*k-1 in assignment order.
//     Every output has a fixed size (no count needs to reach the host), so a GPU backend can
//     run it without synchronising. Not differentiable (indices only).
//
//   grouped_matmul {x (M, K), w (E, K, N) or (E, N, K), offsets (E+1,)}  attrs transpose_w
//     -> y (M, N):  y[r] = x[r] @ w[e]      for offsets[e] <= r < offsets[e+1]
//                   y[r] = x[r] @ w[e]^T    when transpose_w (w of shape (E, N, K))
//                   y[r] = 0                for r >= offsets[E] (dropped rows)
//     d x = grouped_matmul(g, w, offsets, !transpose_w)
//     d w = grouped_matmul_weight_grad(x, g) (or (g, x) when transpose_w)
//   grouped_matmul_weight_grad {a (M, P), b (M, Q), offsets (E+1,)}
//     -> dw (E, P, Q):  dw[e] = a[seg e]^T @ b[seg e]; zero for an empty segment.
//
//   moe_combine {y (R, H), gates (N, k), row (N, k)}   R >= N*k sorted rows
//     -> out (N, H):  out[n] = sum_s gates[n, s] * y[row[n, s]]   (terms with row = -1 skipped)
//   moe_combine_backward {g (N, H), y, gates, row}  attrs dy, dgates (which to compute)
//     -> dy (R, H):      dy[row[n, s]] = gates[n, s] * g[n]; rows nobody reads are 0
//        dgates (N, k):  dgates[n, s] = <g[n], y[row[n, s]]>, 0 for dropped assignments
//     (one not asked for has shape (0,)). row is a one-to-one map onto the kept rows, so every
//     dy row is written by at most one (n, s): no atomics, deterministic.
//
// The gather x_sorted = x[token] is the existing index_select (its backward is the scatter-add of
// gradients back to the tokens), so it is not repeated here.
//
// Kernels: moe_permute is three serial passes over the N*k assignments (count, prefix sum,
// place); it is O(N k + E) and small beside the expert GEMMs. grouped_matmul runs the packed CPU
// GEMM once per non-empty segment (C++ loop over experts; the GEMM parallelises inside), reading
// w through its strides so the transposed weights of the backward are never copied. The combine
// runs tokens in parallel. float32 and float64.
#include <algorithm>

#include "cpu_loops.h"
#include "gemm_cpu.h"
#include "kernel_checks.h"
#include "op_args.h"
#include "ops.h"

namespace ls::ops {

int64_t check_moe_permute_args(const Tensors& in, const Attrs& a) {
  cpu::expect_inputs(in, 1, 1, "moe_permute");
  const Tensor& ids0 = in[0];
  LS_CHECK(ids0.dtype() == DType::Int32 || ids0.dtype() == DType::Int64, TypeError,
           "moe_permute: expert_ids must be int32 or int64, got ", dtype_name(ids0.dtype()));
  LS_CHECK(ids0.dim() == 2, ValueError, "moe_permute: expert_ids must have shape (N, k), got ",
           shape_str(ids0.shape()));
  const int64_t E = a.i("n_experts");
  LS_CHECK(E > 0, ValueError, "moe_permute: n_experts must be positive, got ", E);
  return E;
}

void expect_int64_index(const Tensor& t, const char* op, const char* what) {
  LS_CHECK(t.dtype() == DType::Int64, TypeError, op, ": ", what, " must be int64, got ",
           dtype_name(t.dtype()));
}

void check_moe_combine_args(const Tensor& y, const Tensor& gates, const Tensor& row, const Tensor& g,
                            const char* op) {
  LS_CHECK(y.dim() == 2 && gates.dim() == 2, ValueError, op, ": expected y (R, H) and gates "
           "(N, k), got ", shape_str(y.shape()), " and ", shape_str(gates.shape()));
  cpu::expect_same_dtype(y, gates, op, "gates");
  expect_int64_index(row, op, "row");
  LS_CHECK(row.shape() == gates.shape(), ValueError, op, ": row ", shape_str(row.shape()),
           " and gates ", shape_str(gates.shape()), " must have the same shape");
  if (!g.defined()) return;
  cpu::expect_same_dtype(y, g, op, "gradient");
  const int64_t N = gates.shape()[0], H = y.shape()[1];
  LS_CHECK(g.dim() == 2 && g.shape()[0] == N && g.shape()[1] == H, ValueError, op, ": g must have shape (",
           N, ", ", H, "), got ", shape_str(g.shape()));
}

int64_t check_grouped_matmul_args(const Tensors& in, bool transpose_w) {
  cpu::expect_inputs(in, 3, 3, "grouped_matmul");
  const Tensor& x = in[0];
  const Tensor& w = in[1];
  LS_CHECK(x.dim() == 2 && w.dim() == 3, ValueError, "grouped_matmul: expected x (M, K) and w "
           "(E, K, N), got ", shape_str(x.shape()), " and ", shape_str(w.shape()));
  cpu::expect_same_dtype(x, w, "grouped_matmul", "weight");
  const int64_t K = x.shape()[1], E = w.shape()[0], wk = transpose_w ? w.shape()[2] : w.shape()[1];
  LS_CHECK(wk == K, ValueError, "grouped_matmul: x has ", K, " columns but w",
           transpose_w ? " (transposed)" : "", " of shape ", shape_str(w.shape()), " expects ", wk);
  expect_int64_index(in[2], "grouped_matmul", "offsets");
  LS_CHECK(in[2].dim() == 1 && in[2].shape()[0] == E + 1, ValueError,
           "grouped_matmul: offsets must have shape (", E + 1, ",) for ", E, " experts, got ",
           shape_str(in[2].shape()));
  return E;
}

int64_t check_grouped_matmul_weight_grad_args(const Tensors& in) {
  const char* op = "grouped_matmul_weight_grad";
  cpu::expect_inputs(in, 3, 3, op);
  LS_CHECK(in[0].dim() == 2 && in[1].dim() == 2 && in[0].shape()[0] == in[1].shape()[0], ValueError, op,
           ": expected a (M, P) and b (M, Q), got ", shape_str(in[0].shape()), " and ", shape_str(in[1].shape()));
  cpu::expect_same_dtype(in[0], in[1], op, "second operand");
  expect_int64_index(in[2], op, "offsets");
  const int64_t E = in[2].dim() == 1 ? in[2].shape()[0] - 1 : -1;
  LS_CHECK(E > 0, ValueError, op, ": offsets must have shape (E+1,), got ", shape_str(in[2].shape()));
  return E;
}

namespace {

// The offsets (int64, (E+1,): checked before) as a dense vector whose values are checked:
// starting at 0, non-decreasing, at most rows.
Tensor checked_offsets(const Tensor& offsets, int64_t E, int64_t rows, const char* op) {
  Tensor o = contiguous(offsets);
  const int64_t* p = o.data<int64_t>();
  LS_CHECK(p[0] == 0, ValueError, op, ": offsets[0] must be 0, got ", p[0]);
  for (int64_t e = 0; e < E; ++e)
    LS_CHECK(p[e] <= p[e + 1], ValueError, op, ": offsets must be non-decreasing, got offsets[", e,
             "] = ", p[e], " > offsets[", e + 1, "] = ", p[e + 1]);
  LS_CHECK(p[E] <= rows, ValueError, op, ": offsets[E] = ", p[E], " exceeds the ", rows, " rows");
  return o;
}

// ---- moe_permute -------------------------------------------------------------------------------

Tensors moe_permute_cpu(const Tensors& in, const Attrs& a) {
  const int64_t E = check_moe_permute_args(in, a);
  const Tensor& ids0 = in[0];
  const int64_t cap = a.i("capacity", -1);
  const int64_t N = ids0.shape()[0], k = ids0.shape()[1], A = N * k;
  Tensor ids = contiguous(to_dtype(ids0, DType::Int64));
  const int64_t* pe = ids.data<int64_t>();
  for (int64_t i = 0; i < A; ++i)
    LS_CHECK(pe[i] >= 0 && pe[i] < E, IndexError, "moe_permute: expert id ", pe[i],
             " is out of range for ", E, " experts");

  Tensor token = Tensor::empty({A}, DType::Int64, ids.device());
  Tensor row = Tensor::empty({N, k}, DType::Int64, ids.device());
  Tensor offsets = Tensor::empty({E + 1}, DType::Int64, ids.device());
  Tensor counts = Tensor::empty({E}, DType::Int64, ids.device());
  int64_t* ptok = token.data<int64_t>();
  int64_t* prow = row.data<int64_t>();
  int64_t* poff = offsets.data<int64_t>();
  int64_t* pcnt = counts.data<int64_t>();

  // Pass 1: the load of each expert; which assignments fit (slot-major priority). prow holds
  // 1 (kept) / 0 (dropped) until pass 3 overwrites it with the row.
  std::fill(pcnt, pcnt + E, int64_t(0));
  for (int64_t i = 0; i < A; ++i) ++pcnt[pe[i]];
  std::vector<int64_t> kept(E, 0);
  if (cap < 0) {
    std::fill(prow, prow + A, int64_t(1));
    std::copy(pcnt, pcnt + E, kept.begin());
  } else {
    for (int64_t s = 0; s < k; ++s)
      for (int64_t n = 0; n < N; ++n) {
        int64_t i = n * k + s, e = pe[i];
        prow[i] = kept[e] < cap;
        kept[e] += prow[i];
      }
  }
  // Pass 2: segment starts (exclusive prefix sum of the kept counts).
  poff[0] = 0;
  for (int64_t e = 0; e < E; ++e) poff[e + 1] = poff[e] + kept[e];
  // Pass 3: place the assignments, stably in assignment (= token) order.
  std::vector<int64_t> cursor(poff, poff + E);
  int64_t dropped_at = poff[E];
  for (int64_t i = 0; i < A; ++i) {
    if (prow[i]) {
      int64_t r = cursor[pe[i]]++;
      prow[i] = r;
      ptok[r] = i / k;
    } else {
      prow[i] = -1;
      ptok[dropped_at++] = i / k;
    }
  }
  return {token, row, offsets, counts};
}

// ---- grouped_matmul ----------------------------------------------------------------------------

Tensors grouped_matmul_cpu(const Tensors& in, const Attrs& a) {
  const bool tw = a.b("transpose_w", false);
  const int64_t E = check_grouped_matmul_args(in, tw);
  const Tensor& x0 = in[0];
  const Tensor& w = in[1];
  const int64_t M = x0.shape()[0], K = x0.shape()[1], N = tw ? w.shape()[1] : w.shape()[2];
  Tensor off = checked_offsets(in[2], E, M, "grouped_matmul");
  const int64_t* po = off.data<int64_t>();
  Tensor x = contiguous(x0);
  Tensor y = Tensor::empty({M, N}, x.dtype(), x.device());
  // B(k, j) of expert e: w[e, k, j], or w[e, j, k] when transposed; strides taken as they are.
  const int64_t rsb = tw ? w.strides()[2] : w.strides()[1];
  const int64_t csb = tw ? w.strides()[1] : w.strides()[2];
  DISPATCH_FLOAT(x.dtype(), "grouped_matmul", {
    using T = scalar_t;
    const T* px = x.data<T>();
    const T* pw = w.data<T>();
    T* py = y.data<T>();
    for (int64_t e = 0; e < E; ++e) {
      const int64_t r0 = po[e], rows = po[e + 1] - po[e];
      if (rows == 0) continue;
      // px + r0 * K points at x[r0, :]; pw + e * stride0 at w[e]
      cpu::gemm<T>(rows, N, K, T(1), px + r0 * K, K, 1, pw + e * w.strides()[0], rsb, csb, T(0),
                   py + r0 * N, N);
    }
    std::fill(py + po[E] * N, py + M * N, T(0));  // dropped rows
  });
  return {y};
}

Tensors grouped_matmul_weight_grad_cpu(const Tensors& in, const Attrs&) {
  const int64_t E = check_grouped_matmul_weight_grad_args(in);
  Tensor A = contiguous(in[0]), B = contiguous(in[1]);
  const int64_t M = A.shape()[0], P = A.shape()[1], Q = B.shape()[1];
  Tensor off = checked_offsets(in[2], E, M, "grouped_matmul_weight_grad");
  const int64_t* po = off.data<int64_t>();
  Tensor dw = Tensor::empty({E, P, Q}, A.dtype(), A.device());
  DISPATCH_FLOAT(A.dtype(), "grouped_matmul_weight_grad", {
    using T = scalar_t;
    const T* pa = A.data<T>();
    const T* pb = B.data<T>();
    T* pd = dw.data<T>();
    for (int64_t e = 0; e < E; ++e) {
      const int64_t r0 = po[e], rows = po[e + 1] - po[e];
      T* de = pd + e * P * Q;  // de points at dw[e]
      if (rows == 0) {
        std::fill(de, de + P * Q, T(0));
        continue;
      }
      // a[seg]^T: element (p, m) at pa[(r0 + m) * P + p] -> row stride 1, column stride P
      cpu::gemm<T>(P, Q, rows, T(1), pa + r0 * P, 1, P, pb + r0 * Q, Q, 1, T(0), de, Q);
    }
  });
  return {dw};
}

Tensors grouped_matmul_backward(const BackwardCtx& c, const Tensors& g) {
  const Tensor& off = c.inputs[2];
  const bool tw = c.attrs.b("transpose_w", false);
  Tensor dx, dw;
  if (c.needs_grad[0])  // x's gradient reads w, w's reads x
    dx = call1("grouped_matmul", {g[0], c.inputs[1], off}, {{"transpose_w", !tw}});
  if (c.needs_grad[1])
    dw = tw ? call1("grouped_matmul_weight_grad", {g[0], c.inputs[0], off})
            : call1("grouped_matmul_weight_grad", {c.inputs[0], g[0], off});
  return {dx, dw, Tensor()};
}

// ---- moe_combine -------------------------------------------------------------------------------

// The checks of the forward (g undefined) and backward; returns row as dense int64 with values
// in [-1, R), each kept row at most once (the backward writes each dy row from one (n, s): a
// repeated row would keep one term of its gradient).
Tensor check_combine(const Tensor& y, const Tensor& gates, const Tensor& row, const Tensor& g, const char* op) {
  check_moe_combine_args(y, gates, row, g, op);
  const int64_t R = y.shape()[0];
  Tensor r = contiguous(row);
  const int64_t* pr = r.data<int64_t>();
  std::vector<char> taken(size_t(R), 0);
  for (int64_t i = 0; i < r.numel(); ++i) {
    LS_CHECK(pr[i] >= -1 && pr[i] < R, IndexError, op, ": row ", pr[i], " is out of range for ",
             R, " expert-output rows");
    if (pr[i] < 0) continue;
    LS_CHECK(!taken[size_t(pr[i])], ValueError, op, ": row ", pr[i], " is read by two assignments; the "
             "rows must be distinct, as moe_permute gives them");
    taken[size_t(pr[i])] = 1;
  }
  return r;
}

Tensors moe_combine_cpu(const Tensors& in, const Attrs&) {
  cpu::expect_inputs(in, 3, 3, "moe_combine");
  Tensor r = check_combine(in[0], in[1], in[2], Tensor(), "moe_combine");
  Tensor y = contiguous(in[0]), gates = contiguous(in[1]);
  const int64_t N = gates.shape()[0], k = gates.shape()[1], H = y.shape()[1];
  Tensor out = Tensor::empty({N, H}, y.dtype(), y.device());
  DISPATCH_FLOAT(y.dtype(), "moe_combine", {
    using T = scalar_t;
    const T* py = y.data<T>();
    const T* pg = gates.data<T>();
    const int64_t* pr = r.data<int64_t>();
    T* po = out.data<T>();
    cpu::parallel_rows(N, H * k, [&](int64_t n0, int64_t n1) {
      for (int64_t n = n0; n < n1; ++n) {
        T* on = po + n * H;  // on points at out[n, :]
        std::fill(on, on + H, T(0));
        for (int64_t s = 0; s < k; ++s) {
          const int64_t rr = pr[n * k + s];
          if (rr < 0) continue;
          const T gt = pg[n * k + s];
          const T* yr = py + rr * H;  // yr points at y[row[n, s], :]
          for (int64_t h = 0; h < H; ++h) on[h] += gt * yr[h];
        }
      }
    });
  });
  return {out};
}

Tensors moe_combine_backward_cpu(const Tensors& in, const Attrs& a) {
  cpu::expect_inputs(in, 4, 4, "moe_combine_backward");
  Tensor r = check_combine(in[1], in[2], in[3], in[0], "moe_combine_backward");
  Tensor g = contiguous(in[0]), y = contiguous(in[1]), gates = contiguous(in[2]);
  const int64_t N = gates.shape()[0], k = gates.shape()[1], R = y.shape()[0], H = y.shape()[1];
  const bool want_dy = a.b("dy", true), want_dg = a.b("dgates", true);
  Tensor dy = Tensor::empty(want_dy ? Shape{R, H} : Shape{0}, y.dtype(), y.device());
  Tensor dg = Tensor::empty(want_dg ? Shape{N, k} : Shape{0}, y.dtype(), y.device());
  DISPATCH_FLOAT(y.dtype(), "moe_combine_backward", {
    using T = scalar_t;
    const T* pgo = g.data<T>();
    const T* py = y.data<T>();
    const T* pgt = gates.data<T>();
    const int64_t* pr = r.data<int64_t>();
    T* pdy = want_dy ? dy.data<T>() : nullptr;
    T* pdg = want_dg ? dg.data<T>() : nullptr;
    if (pdy) std::fill(pdy, pdy + R * H, T(0));  // rows no assignment reads get no gradient
    cpu::parallel_rows(N, H * k, [&](int64_t n0, int64_t n1) {
      for (int64_t n = n0; n < n1; ++n) {
        const T* gn = pgo + n * H;  // gn points at g[n, :]
        for (int64_t s = 0; s < k; ++s) {
          const int64_t rr = pr[n * k + s];
          if (rr < 0) {
            if (pdg) pdg[n * k + s] = T(0);
            continue;
          }
          if (pdy) {
            const T gt = pgt[n * k + s];
            T* d = pdy + rr * H;  // d points at dy[row[n, s], :], owned by this (n, s) alone
            for (int64_t h = 0; h < H; ++h) d[h] = gt * gn[h];
          }
          if (pdg) {
            const T* yr = py + rr * H;
            T acc = 0;
            for (int64_t h = 0; h < H; ++h) acc += gn[h] * yr[h];
            pdg[n * k + s] = acc;
          }
        }
      }
    });
  });
  return {dy, dg};
}

Tensors moe_combine_backward(const BackwardCtx& c, const Tensors& g) {
  Tensors r = call("moe_combine_backward", {g[0], c.inputs[0], c.inputs[1], c.inputs[2]},
                   {{"dy", bool(c.needs_grad[0])}, {"dgates", bool(c.needs_grad[1])}});
  return {c.needs_grad[0] ? r[0] : Tensor(), c.needs_grad[1] ? r[1] : Tensor(), Tensor()};
}

}  // namespace

LS_REGISTER(moe) {
  const std::vector<DType> kFloat = {DType::Float32, DType::Float64};
  declare_op("moe_permute", {});
  declare_op("grouped_matmul", {grouped_matmul_backward});
  declare_op("grouped_matmul_weight_grad", {});
  declare_op("moe_combine", {moe_combine_backward});
  declare_op("moe_combine_backward", {});
  register_kernel("moe_permute", "cpu", moe_permute_cpu, {DType::Int32, DType::Int64});
  register_kernel("grouped_matmul", "cpu", grouped_matmul_cpu, kFloat);
  register_kernel("grouped_matmul_weight_grad", "cpu", grouped_matmul_weight_grad_cpu, kFloat);
  register_kernel("moe_combine", "cpu", moe_combine_cpu, kFloat);
  register_kernel("moe_combine_backward", "cpu", moe_combine_backward_cpu, kFloat);
}

}  // namespace ls::ops
