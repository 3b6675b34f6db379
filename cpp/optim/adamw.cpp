// Fused optimizer steps over many tensors at once, and the global gradient norm.
//
// adamw_step: inputs [params (P), grads (P), exp_avg (P), exp_avg_sq (P), model copies (P, only
// with attr has_model_copy), grad_scale (only with attr has_grad_scale)], updated in place
// (AdamW, Loshchilov & Hutter 2019, decoupled weight decay):
//   p -= lr * wd * p
//   m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
//   p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
//   copy = cast(p)                                     (has_model_copy)
// params, exp_avg and exp_avg_sq are float32 or float64 (one dtype per tensor); grads have the
// parameter's dtype or, for float32 parameters, bfloat16/float16 (mixed precision: the 16-bit
// model's gradients update float32 master weights, read and widened on the fly). The model copies
// are bfloat16/float16 tensors of the parameters' shapes that receive the rounded new weights in
// the same pass, so a mixed-precision step needs no separate cast over the weights.
// One pass over every element of every tensor; the work is split over threads by element
// count, not by tensor, so one huge embedding matrix does not leave the other thread idle.
// The step t and lr travel as attrs (host values); grad_scale (an optional 0-d tensor, e.g. a
// clipping coefficient) multiplies every gradient on the fly.
//
// global_norm: inputs [tensors...] (any floating dtypes, 16-bit gradients included) -> 0-d float32
// (float64 when a tensor is float64)
// sqrt(sum of squares of all elements), summed in float64, without leaving the device, so
// clipping needs no host round trip.
#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "core/parallel.h"
#include "ops/ops.h"

namespace ls::ops {

namespace {

bool is_16bit(DType d) { return d == DType::BFloat16 || d == DType::Float16; }

}  // namespace

size_t check_adamw_inputs(const Tensors& in, bool has_copy, bool has_scale, const char* op, bool params_16bit) {
  const size_t groups = has_copy ? 5 : 4;
  const size_t tensors = in.size() - (has_scale ? 1 : 0);
  LS_CHECK(in.size() >= (has_scale ? 1u : 0u) && tensors % groups == 0, ValueError, op,
           ": expected ", groups, " equal groups of tensors", has_scale ? " and grad_scale" : "",
           ", got ", in.size(), " inputs");
  const size_t n = tensors / groups;
  for (size_t k = 0; k < n; ++k) {
    const Tensor& p = in[k];
    LS_CHECK(p.defined() && (p.dtype() == DType::Float32 || p.dtype() == DType::Float64 ||
                             (params_16bit && is_16bit(p.dtype()))),
             TypeError, op, ": parameter ", k, " must be float32 or float64", params_16bit ? " (or 16-bit)" : "",
             p.defined() ? ::ls::cat(", got ", dtype_name(p.dtype())) : std::string());
    for (size_t grp = 1; grp < groups; ++grp) {
      const Tensor& t = in[grp * n + k];
      static const char* names[] = {"param", "grad", "exp_avg", "exp_avg_sq", "model copy"};
      LS_CHECK(t.defined() && t.shape() == p.shape(), ValueError, op, ": ", names[grp], " ", k,
               " does not match its parameter's shape ", shape_str(p.shape()));
      bool ok = grp == 1 ? t.dtype() == p.dtype() || (p.dtype() == DType::Float32 && is_16bit(t.dtype()))
                : grp == 4 ? p.dtype() == DType::Float32 && is_16bit(t.dtype())
                           : t.dtype() == p.dtype();
      LS_CHECK(ok, TypeError, op, ": ", names[grp], " ", k, " has dtype ", dtype_name(t.dtype()),
               " for a ", dtype_name(p.dtype()), " parameter (grads: the parameter's dtype or "
               "bfloat16/float16 for float32; model copies: bfloat16/float16 of float32)");
    }
    for (size_t grp = 0; grp < groups; ++grp)
      LS_CHECK(in[grp * n + k].is_contiguous(), ValueError, op, ": tensors must be contiguous");
  }
  if (has_scale)
    LS_CHECK(in.back().defined() && in.back().numel() == 1 && is_floating(in.back().dtype()),
             ValueError, op, ": grad_scale must be a floating 1-element tensor");
  return n;
}

namespace {

// A stored gradient or weight element in the compute type T.
template <typename T, typename S> inline T load_as(S v) {
  if constexpr (std::is_same_v<S, bf16> || std::is_same_v<S, fp16>) return T(to_float(v));
  else return T(v);
}

// G: the gradient's element type; C: the model copy's (void: none).
template <typename T, typename G, typename C>
void adamw_range(T* p, const G* g, T* m, T* v, C* copy, int64_t b, int64_t e, T lr, T b1, T b2,
                 T eps, T wd, T bc1, T bc2, T gscale) {
  for (int64_t i = b; i < e; ++i) {
    T gi = load_as<T>(g[i]) * gscale;
    p[i] -= lr * wd * p[i];
    m[i] = b1 * m[i] + (T(1) - b1) * gi;
    v[i] = b2 * v[i] + (T(1) - b2) * gi * gi;
    p[i] -= lr * (m[i] / bc1) / (std::sqrt(v[i] / bc2) + eps);
    if constexpr (!std::is_void_v<C>) copy[i] = from_double<C>(double(p[i]));
  }
}

Tensors adamw_cpu(const Tensors& in, const Attrs& a) {
  bool has_scale = a.b("has_grad_scale", false), has_copy = a.b("has_model_copy", false);
  const size_t n = check_adamw_inputs(in, has_copy, has_scale, "adamw_step");
  double lr = a.f("lr", 1e-3), b1 = a.f("beta1", 0.9), b2 = a.f("beta2", 0.999);
  double eps = a.f("eps", 1e-8), wd = a.f("weight_decay", 0.0);
  int64_t step = a.i("step");
  double bc1 = 1 - std::pow(b1, double(step)), bc2 = 1 - std::pow(b2, double(step));
  double gscale = 1.0;
  if (has_scale) {
    Tensor s = to_dtype(in.back(), DType::Float64);
    gscale = *s.data<double>();
  }
  // Prefix sums of sizes: a flat element index finds its tensor by binary search.
  std::vector<int64_t> start(n + 1, 0);
  for (size_t k = 0; k < n; ++k) start[k + 1] = start[k] + in[k].numel();
  parallel_for(0, start[n], 1 << 15, [&](int64_t b, int64_t e) {
    size_t k = std::upper_bound(start.begin(), start.end(), b) - start.begin() - 1;
    for (; k < n && start[k] < e; ++k) {
      int64_t lo = std::max(b, start[k]) - start[k], hi = std::min(e, start[k + 1]) - start[k];
      const Tensor& grad = in[n + k];
      const Tensor copy = has_copy ? in[4 * n + k] : Tensor();
      DISPATCH_FLOAT(in[k].dtype(), "adamw_step", {
        using T = scalar_t;
        auto run = [&](auto* g, auto* c) {
          adamw_range<T>(in[k].data<T>(), g, in[2 * n + k].data<T>(), in[3 * n + k].data<T>(), c,
                         lo, hi, T(lr), T(b1), T(b2), T(eps), T(wd), T(bc1), T(bc2), T(gscale));
        };
        // grads: T, bf16 or fp16 (checked above); copies: none, bf16 or fp16
        auto with_grad = [&](auto* c) {
          if (grad.dtype() == DType::BFloat16) run(grad.data<bf16>(), c);
          else if (grad.dtype() == DType::Float16) run(grad.data<fp16>(), c);
          else run(grad.data<T>(), c);
        };
        if (!has_copy) with_grad(static_cast<void*>(nullptr));
        else if (copy.dtype() == DType::BFloat16) with_grad(copy.data<bf16>());
        else with_grad(copy.data<fp16>());
      });
    }
  });
  return {};
}

Tensors global_norm_cpu(const Tensors& in, const Attrs&) {
  const DType out = check_global_norm_inputs(in);
  double total = 0;
  for (auto& t : in) {
    Tensor c = contiguous(t);
    DISPATCH_ALL(c.dtype(), "global_norm", {
      const scalar_t* p = c.data<scalar_t>();
      for (int64_t i = 0; i < c.numel(); ++i) total += to_double(p[i]) * to_double(p[i]);
    });
  }
  return {full({}, std::sqrt(total), out, Device{})};
}

}  // namespace

void adamw_step(const Tensors& params, const Tensors& grads, const Tensors& exp_avg,
                const Tensors& exp_avg_sq, double lr, double beta1, double beta2, double eps,
                double weight_decay, int64_t step, const Tensor& grad_scale,
                const Tensors& model_copies) {
  size_t n = params.size();
  LS_CHECK(grads.size() == n && exp_avg.size() == n && exp_avg_sq.size() == n, ValueError,
           "adamw_step: expected equally many params, grads and states, got ", n, ", ",
           grads.size(), ", ", exp_avg.size(), ", ", exp_avg_sq.size());
  const bool has_copy = !model_copies.empty();
  LS_CHECK(!has_copy || model_copies.size() == n, ValueError, "adamw_step: expected ", n,
           " model copies (one per parameter), got ", model_copies.size());
  LS_CHECK(step >= 1, ValueError, "adamw_step: step must be >= 1, got ", step);
  if (n == 0) return;
  Tensors in;
  for (const Tensors* group : {&params, &grads, &exp_avg, &exp_avg_sq, &model_copies})
    for (size_t k = 0; k < group->size(); ++k) {
      const Tensor& t = (*group)[k];
      LS_CHECK(t.defined() && t.shape() == params[k].shape(), ValueError, "adamw_step: tensor ", k,
               " of a group does not match its parameter ", shape_str(params[k].shape()));
      LS_CHECK(t.is_contiguous(), ValueError, "adamw_step: tensors must be contiguous");
      in.push_back(t);
    }
  Attrs a{{"lr", lr}, {"beta1", beta1}, {"beta2", beta2}, {"eps", eps},
          {"weight_decay", weight_decay}, {"step", step}};
  if (has_copy) a.set("has_model_copy", true);
  if (grad_scale.defined()) {
    in.push_back(grad_scale);
    a.set("has_grad_scale", true);
  }
  call("adamw_step", in, a);  // the kernel checks the dtypes
  for (auto& p : params) p.bump_version();
  for (auto& c : model_copies) c.bump_version();
}

DType check_global_norm_inputs(const Tensors& in) {
  LS_CHECK(!in.empty(), ValueError, "global_norm: no tensors given");
  DType out = DType::Float32;
  for (size_t k = 0; k < in.size(); ++k) {
    LS_CHECK(in[k].defined(), ValueError, "global_norm: tensor ", k, " is None");
    LS_CHECK(is_floating(in[k].dtype()), TypeError, "global_norm: tensors must be floating, got ",
             dtype_name(in[k].dtype()), " for tensor ", k);
    if (in[k].dtype() == DType::Float64) out = DType::Float64;
  }
  return out;
}

Tensor global_norm(const Tensors& tensors) { return call1("global_norm", tensors); }

LS_REGISTER(adamw) {
  declare_op("adamw_step", {});
  declare_op("global_norm", {});
  register_kernel("adamw_step", "cpu", adamw_cpu, {DType::Float32, DType::Float64});
  register_kernel("global_norm", "cpu", global_norm_cpu,
                  {DType::Float32, DType::Float64, DType::BFloat16, DType::Float16});
}

}  // namespace ls::ops
