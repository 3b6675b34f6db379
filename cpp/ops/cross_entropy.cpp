// cross_entropy: fused log-softmax + negative log-likelihood, forward and backward, float32 and
// float64 logits, int32 or int64 targets.
//
//   lse[n]  = m + log s,  m = max_v logits[n, v],  s = sum_v exp(logits[n, v] - m)
//   nll[n]  = lse[n] - logits[n, t[n]]                  computed as log s - (logits[n, t[n]] - m)
//   loss[n] = (1 - eps) nll[n] + eps (lse[n] - mean_v logits[n, v])       (label smoothing eps:
//             the second term is mean_v(-log p[n, v]), torch's definition; computed as
//             log s + (m - mean_v logits[n, v]))
//   loss[n] = 0 where t[n] == ignore_index;  reduction: "none" -> loss (N,), "sum" -> sum_n loss,
//             "mean" -> sum_n loss / #{n : t[n] != ignore_index}  (0/0 = NaN when all are ignored)
//   backward, with p = exp(logits - lse) and k[n] the incoming gradient of loss[n] (g, g/count
//   or g[n]; 0 for ignored rows) plus h[n] that of the lse output:
//     dlogits[n, v] = (k[n] + h[n]) p[n, v] - k[n] eps / V - k[n] (1 - eps) [v == t[n]]
//   The forward never subtracts a rounded lse: m + log s rounded loses the low bits of log s next
//   to a large m (logits near 1e4 put an error of 5e-4 into the loss, near 1e30 all of log s),
//   where x - m is exact near the max; the in-place forward, which has m, takes
//   p = exp((x - m) - log s). The backward has only the saved lse, whose rounding (|lse| 2^-24 in
//   float32) reaches p as a relative error of that size.
//
// Shapes: logits (N, V) (N = B*T rows, V vocab), targets (N,), lse (N,).
// Registry ops: "cross_entropy" {logits, targets} attrs ignore_index, reduction, label_smoothing
// -> {loss, lse}; "cross_entropy_backward" {g_loss, logits, targets, lse, g_lse} same attrs
// -> {dlogits}.
//
// The in-place gradient (llm.c's fused classifier, Liger-Kernel's cross-entropy): training needs
// the logits only to form their gradient, so the forward can write that gradient over them while
// it has each row, and the backward only scales it. Training then holds one (N, V) tensor instead
// of the logits plus a dlogits of the same size.
//   "cross_entropy_inplace" {logits, targets} same attrs -> {loss}: the loss as above, and logits
//     overwritten by d(sum of the reduced loss)/d(logits) at an upstream gradient of 1, i.e. the
//     formula above with h = 0 and k[n] = 1/count (mean), 1 (sum, none), 0 (ignored rows: zeros).
//     logits must have contiguous rows that do not overlap, at any row stride (a row-padded
//     matmul output; the gradient goes into their memory, and a copy would hold a second (N, V)
//     tensor, which is what this op avoids). lse is not an output: its gradient would need
//     the probabilities that were overwritten. Not differentiable by itself: the Python wrapper
//     (F.cross_entropy(..., inplace_backward=True)) records it on the tape.
//   "cross_entropy_inplace_backward" {g_loss, dlogits} attr reduction -> {dlogits}: dlogits
//     scaled in place by g (a scalar; for "none" row n by g[n]), skipped where the factor is 1;
//     the same memory is returned as the gradient of the logits.
//
// Kernels: rows in parallel. Forward reads a row twice (max, then sum of exp; a third read for the
// mean only with label smoothing) and writes one float: log_softmax is never materialised (the
// in-place forward adds one write of the row). Backward writes dlogits in one pass from the saved
// lse. Targets are checked before any work: a target outside [0, V) that is not ignore_index
// raises IndexError.
#include <algorithm>
#include <cmath>

#include "cpu_loops.h"
#include "cpu_math.h"
#include "kernel_checks.h"
#include "op_args.h"
#include "ops.h"

namespace ls::ops {

Reduction parse_reduction(const std::string& r, const char* op) {
  if (r == "mean") return Reduction::Mean;
  if (r == "sum") return Reduction::Sum;
  if (r == "none") return Reduction::None;
  throw ValueError(::ls::cat(op, ": reduction must be 'mean', 'sum' or 'none', got '", r, "'"));
}

// Validation shared by the typed wrapper and the kernels of every backend (call() reaches them
// directly).
void check_cross_entropy_args(const Tensor& logits, const Tensor& targets,
                              const std::string& reduction, double label_smoothing) {
  LS_CHECK(logits.defined() && targets.defined(), ValueError,
           "cross_entropy: logits and targets must not be None");
  LS_CHECK(is_floating(logits.dtype()), TypeError,
           "cross_entropy: logits must be floating-point, got ", dtype_name(logits.dtype()));
  LS_CHECK(targets.dtype() == DType::Int32 || targets.dtype() == DType::Int64, TypeError,
           "cross_entropy: targets must be int32 or int64, got ", dtype_name(targets.dtype()));
  LS_CHECK(logits.dim() == 2 && targets.dim() == 1 && logits.size(0) == targets.size(0), ValueError,
           "cross_entropy: expected logits (N, V) and targets (N,), got ",
           shape_str(logits.shape()), " and ", shape_str(targets.shape()));
  LS_CHECK(logits.size(1) > 0 || logits.size(0) == 0, ValueError,
           "cross_entropy: logits of shape ", shape_str(logits.shape()), " have no classes");
  parse_reduction(reduction, "cross_entropy");
  LS_CHECK(label_smoothing >= 0.0 && label_smoothing <= 1.0, ValueError,
           "cross_entropy: label_smoothing must be in [0, 1], got ", label_smoothing);
}

int64_t cross_entropy_row_stride(const Tensor& logits) {
  int64_t rows, ld;
  if (!contiguous_rows(logits, rows, ld)) return -1;
  return ld >= logits.size(1) ? ld : -1;  // rows that do not overlap
}

int64_t check_cross_entropy_inplace_logits(const Tensor& logits, const char* op) {
  const int64_t ld = cross_entropy_row_stride(logits);
  LS_CHECK(ld >= 0, ValueError, op,
           ": logits must have contiguous rows that do not overlap, since the gradient is written "
           "into their memory (a copy would hold a second (N, V) tensor); got shape ",
           shape_str(logits.shape()), " with strides ", shape_str(logits.strides()));
  return ld;
}

InplaceBackwardArgs check_cross_entropy_inplace_backward_args(const Tensor& g, const Tensor& dlogits,
                                                              const std::string& reduction) {
  const char* op = "cross_entropy_inplace_backward";
  LS_CHECK(g.defined() && dlogits.defined(), ValueError, op, ": inputs must not be None");
  LS_CHECK(is_floating(g.dtype()) && is_floating(dlogits.dtype()), TypeError, op,
           ": the loss gradient and dlogits must be floating-point, got ", dtype_name(g.dtype()),
           " and ", dtype_name(dlogits.dtype()));
  LS_CHECK(dlogits.dim() == 2, ValueError, op, ": expected dlogits (N, V), got ",
           shape_str(dlogits.shape()));
  const int64_t ld = check_cross_entropy_inplace_logits(dlogits, op);
  const Reduction red = parse_reduction(reduction, op);
  LS_CHECK(g.numel() == (red == Reduction::None ? dlogits.size(0) : 1), ValueError, op,
           ": loss gradient of shape ", shape_str(g.shape()), " does not match reduction '",
           reduction, "' over N = ", dlogits.size(0), " rows");
  return {red, ld};
}

Reduction check_cross_entropy_backward_args(const Tensors& in, const std::string& reduction,
                                            double label_smoothing) {
  const char* op = "cross_entropy_backward";
  cpu::expect_inputs(in, 5, 5, op);
  for (int i : {0, 3, 4})
    LS_CHECK(is_floating(in[i].dtype()), TypeError, op, ": ",
             i == 0 ? "loss gradient" : i == 3 ? "lse" : "lse gradient", " must be floating-point, got ",
             dtype_name(in[i].dtype()));
  check_cross_entropy_args(in[1], in[2], reduction, label_smoothing);
  const Reduction red = parse_reduction(reduction, op);
  const int64_t N = in[1].size(0);
  LS_CHECK(in[0].numel() == (red == Reduction::None ? N : 1) && in[4].numel() == N && in[3].numel() == N,
           ValueError, op, ": gradients of shapes ", shape_str(in[0].shape()), " and ",
           shape_str(in[4].shape()), " do not match N = ", N);
  return red;
}

std::string bad_target_message(const char* op, int64_t target, int64_t position, int64_t V,
                               int64_t ignore_index) {
  return ::ls::cat(op, ": target ", target, " at position ", position, " is out of range for ", V,
             " classes (ignore_index is ", ignore_index, ")");
}

namespace {

// Targets as int64 (a copy only for int32), after checking every one is a class or ignored.
std::vector<int64_t> checked_targets(const Tensor& targets, int64_t V, int64_t ignore_index,
                                     const char* op) {
  Tensor t = contiguous(targets);
  std::vector<int64_t> out(t.numel());
  auto read = [&](auto* p) {
    for (int64_t n = 0; n < t.numel(); ++n) {
      int64_t v = int64_t(p[n]);
      if (v != ignore_index && (v < 0 || v >= V)) throw IndexError(bad_target_message(op, v, n, V, ignore_index));
      out[n] = v;
    }
  };
  if (t.dtype() == DType::Int64) read(t.data<int64_t>());
  else if (t.dtype() == DType::Int32) read(t.data<int32_t>());
  else throw TypeError(::ls::cat(op, ": targets must be int32 or int64, got ", dtype_name(t.dtype())));
  return out;
}


// Both forwards: loss (and lse) per row; in_place then overwrites each row with its gradient at
// an upstream gradient of 1 (the backward's formula with g = 1, g_lse = 0).
Tensors forward_rows(const Tensors& in, const Attrs& a, bool in_place) {
  const char* op = in_place ? "cross_entropy_inplace" : "cross_entropy";
  cpu::expect_inputs(in, 2, 2, op);
  check_cross_entropy_args(in[0], in[1], a.s("reduction", "mean"), a.f("label_smoothing", 0.0));
  // in place: in[0] itself, rows at its row stride ld
  const int64_t ld = in_place ? check_cross_entropy_inplace_logits(in[0], op) : in[0].size(1);
  Tensor logits = in_place ? in[0] : contiguous(in[0]);
  const int64_t N = logits.size(0), V = logits.size(1);
  const int64_t ignore = a.i("ignore_index", -100);
  const Reduction red = parse_reduction(a.s("reduction", "mean"), op);
  const double eps = a.f("label_smoothing", 0.0);
  std::vector<int64_t> t = checked_targets(in[1], V, ignore, op);
  int64_t count = 0;
  for (int64_t n = 0; n < N; ++n) count += t[n] != ignore;

  Tensor lse = in_place ? Tensor() : Tensor::empty({N}, logits.dtype(), logits.device());
  Tensor loss = Tensor::empty(red == Reduction::None ? Shape{N} : Shape{}, logits.dtype(), logits.device());
  std::vector<double> row_loss(N);
  DISPATCH_FLOAT(logits.dtype(), op, {
    using T = scalar_t;
    T* x = logits.data<T>();
    T* plse = in_place ? nullptr : lse.data<T>();
    // The gradient reaching a row's loss at an upstream 1 (as cross_entropy_backward's scale).
    const T k = T(red == Reduction::Mean ? 1.0 / double(count) : 1.0);
    const T off = k * T(eps / double(V)), hit = k * T(1.0 - eps);
    cpu::parallel_rows(N, 2 * V, [&](int64_t r0, int64_t r1) {
      for (int64_t n = r0; n < r1; ++n) {
        T* xr = x + n * ld;  // xr points at logits[n, :]
        const bool ignored = t[n] == ignore;
        if (in_place && ignored) {  // no loss, no gradient: the row is not even read
          std::fill(xr, xr + V, T(0));
          row_loss[n] = 0.0;
          continue;
        }
        T m = cpu::row_max(xr, V);
        T log_s = std::log(cpu::row_sum_exp(xr, V, m));
        if (plse) plse[n] = m + log_s;
        if (ignored) {
          row_loss[n] = 0.0;
          continue;
        }
        double nll = double(log_s) - (double(xr[t[n]]) - double(m));
        double smooth = eps > 0 ? double(log_s) + (double(m) - double(cpu::row_sum(xr, V)) / double(V)) : 0.0;
        row_loss[n] = (1.0 - eps) * nll + eps * smooth;
        if (in_place) {
          for (int64_t v = 0; v < V; ++v) xr[v] = k * cpu::exp_nonpos_((xr[v] - m) - log_s) - off;
          xr[t[n]] -= hit;
        }
      }
    });
    T* pl = loss.data<T>();
    if (red == Reduction::None) {
      for (int64_t n = 0; n < N; ++n) pl[n] = T(row_loss[n]);
    } else {
      double total = 0;
      for (int64_t n = 0; n < N; ++n) total += row_loss[n];
      // 0/0 gives NaN when every target is ignored, as torch does.
      pl[0] = T(red == Reduction::Sum ? total : total / double(count));
    }
  });
  if (in_place) return {loss};
  return {loss, lse};
}

Tensors cross_entropy_forward(const Tensors& in, const Attrs& a) { return forward_rows(in, a, false); }

Tensors cross_entropy_inplace_forward(const Tensors& in, const Attrs& a) {
  return forward_rows(in, a, true);
}

Tensors cross_entropy_backward(const Tensors& in, const Attrs& a) {
  const Reduction red = check_cross_entropy_backward_args(in, a.s("reduction", "mean"), a.f("label_smoothing", 0.0));
  // the gradients and lse in the logits' dtype, which the loops read them as
  auto as_logits = [&](const Tensor& t) { return contiguous(to_dtype(t, in[1].dtype())); };
  Tensor g = as_logits(in[0]), logits = contiguous(in[1]);
  Tensor lse = as_logits(in[3]), g_lse = as_logits(in[4]);
  const int64_t N = logits.size(0), V = logits.size(1);
  const int64_t ignore = a.i("ignore_index", -100);
  const double eps = a.f("label_smoothing", 0.0);
  std::vector<int64_t> t = checked_targets(in[2], V, ignore, "cross_entropy_backward");
  int64_t count = 0;
  for (int64_t n = 0; n < N; ++n) count += t[n] != ignore;

  Tensor dlogits = Tensor::empty(logits.shape(), logits.dtype(), logits.device());
  DISPATCH_FLOAT(logits.dtype(), "cross_entropy_backward", {
    using T = scalar_t;
    const T* x = logits.data<T>();
    const T* pg = g.data<T>();
    const T* plse = lse.data<T>();
    const T* pgl = g_lse.data<T>();
    T* dx = dlogits.data<T>();
    // Gradient of the summed loss reaching one row's loss; count == 0 leaves every row ignored.
    const double scale = red == Reduction::None ? 0.0
                         : red == Reduction::Sum ? double(pg[0])
                                                 : double(pg[0]) / double(count);
    cpu::parallel_rows(N, V, [&](int64_t r0, int64_t r1) {
      for (int64_t n = r0; n < r1; ++n) {
        const T* xr = x + n * V;  // xr, dr point at row n
        T* dr = dx + n * V;
        const bool ignored = t[n] == ignore;
        const T k = ignored ? T(0) : red == Reduction::None ? pg[n] : T(scale);
        const T kp = k + pgl[n], l = plse[n], off = k * T(eps / double(V));
        for (int64_t v = 0; v < V; ++v) dr[v] = kp * cpu::exp_nonpos_(xr[v] - l) - off;
        if (!ignored) dr[t[n]] -= k * T(1.0 - eps);
      }
    });
  });
  return {dlogits};
}

Tensors cross_entropy_inplace_backward(const Tensors& in, const Attrs& a) {
  const char* op = "cross_entropy_inplace_backward";
  cpu::expect_inputs(in, 2, 2, op);
  const InplaceBackwardArgs args =
      check_cross_entropy_inplace_backward_args(in[0], in[1], a.s("reduction", "mean"));
  const Reduction red = args.reduction;
  const int64_t ld = args.row_stride;
  Tensor dlogits = in[1];
  const int64_t N = dlogits.size(0), V = dlogits.size(1);
  Tensor g = contiguous(in[0].dtype() == dlogits.dtype() ? in[0] : to_dtype(in[0], dlogits.dtype()));
  DISPATCH_FLOAT(dlogits.dtype(), op, {
    using T = scalar_t;
    T* dx = dlogits.data<T>();
    const T* pg = g.data<T>();
    cpu::parallel_rows(N, V, [&](int64_t r0, int64_t r1) {
      for (int64_t n = r0; n < r1; ++n) {
        const T s = pg[red == Reduction::None ? n : 0];
        if (s == T(1)) continue;  // the usual case: loss.backward() on the loss itself
        T* dr = dx + n * ld;  // dr points at dlogits[n, :]
        for (int64_t v = 0; v < V; ++v) dr[v] *= s;
      }
    });
  });
  return {dlogits};
}

}  // namespace

Tensor cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore_index,
                     const std::string& reduction, double label_smoothing) {
  check_cross_entropy_args(logits, targets, reduction, label_smoothing);
  return call("cross_entropy", {logits, targets},
              {{"ignore_index", ignore_index}, {"reduction", reduction},
               {"label_smoothing", label_smoothing}})[0];
}

LS_REGISTER(cross_entropy) {
  const std::vector<DType> kFloat = {DType::Float32, DType::Float64};
  declare_op("cross_entropy", {[](const BackwardCtx& c, const Tensors& g) {
                                 Tensor dl = call1("cross_entropy_backward",
                                                   {g[0], c.inputs[0], c.inputs[1], c.outputs[1], g[1]},
                                                   c.attrs);
                                 return Tensors{dl, Tensor()};
                               }, true, true});
  declare_op("cross_entropy_backward", {});
  // Not differentiable through the registry: F.cross_entropy(..., inplace_backward=True) records
  // the pair on the tape from Python, where it can also check that the buffer was left alone.
  declare_op("cross_entropy_inplace", {nullptr, true, false, {0}});
  declare_op("cross_entropy_inplace_backward", {nullptr, true, false, {1}});
  register_kernel("cross_entropy", "cpu", cross_entropy_forward, kFloat);
  register_kernel("cross_entropy_backward", "cpu", cross_entropy_backward, kFloat);
  register_kernel("cross_entropy_inplace", "cpu", cross_entropy_inplace_forward, kFloat);
  register_kernel("cross_entropy_inplace_backward", "cpu", cross_entropy_inplace_backward, kFloat);
}

}  // namespace ls::ops
