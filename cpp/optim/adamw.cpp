// Fused optimizer steps over many tensors at once, and the global gradient norm.
//
// adamw_step: inputs [params (P), grads (P), exp_avg (P), exp_avg_sq (P)], all float32/float64,
// updated in place (AdamW, Loshchilov & Hutter 2019, decoupled weight decay):
//   p -= lr * wd * p
//   m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
//   p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
// One pass over every element of every tensor; the work is split over threads by element
// count, not by tensor, so one huge embedding matrix does not leave the other thread idle.
// The step t and lr travel as attrs (host values); grad_scale (an optional 0-d tensor, e.g. a
// clipping coefficient) multiplies every gradient on the fly.
//
// global_norm: inputs [tensors...] -> 0-d float32 sqrt(sum of squares of all elements), summed in
// float64, without leaving the device, so clipping needs no host round trip.
#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "core/parallel.h"
#include "ops/ops.h"

namespace ls::ops {

namespace {

template <typename T>
void adamw_range(T* p, const T* g, T* m, T* v, int64_t b, int64_t e, T lr, T b1, T b2, T eps,
                 T wd, T bc1, T bc2, T gscale) {
  for (int64_t i = b; i < e; ++i) {
    T gi = g[i] * gscale;
    p[i] -= lr * wd * p[i];
    m[i] = b1 * m[i] + (T(1) - b1) * gi;
    v[i] = b2 * v[i] + (T(1) - b2) * gi * gi;
    p[i] -= lr * (m[i] / bc1) / (std::sqrt(v[i] / bc2) + eps);
  }
}

Tensors adamw_cpu(const Tensors& in, const Attrs& a) {
  bool has_scale = a.b("has_grad_scale", false);
  size_t n = (in.size() - (has_scale ? 1 : 0)) / 4;
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
      DISPATCH_FLOAT(in[k].dtype(), "adamw_step", {
        using T = scalar_t;
        adamw_range<T>(in[k].data<T>(), in[n + k].data<T>(), in[2 * n + k].data<T>(),
                       in[3 * n + k].data<T>(), lo, hi, T(lr), T(b1), T(b2), T(eps), T(wd), T(bc1),
                       T(bc2), T(gscale));
      });
    }
  });
  return {};
}

Tensors global_norm_cpu(const Tensors& in, const Attrs&) {
  double total = 0;
  for (auto& t : in) {
    Tensor c = contiguous(t);
    DISPATCH_FLOAT(c.dtype(), "global_norm", {
      const scalar_t* p = c.data<scalar_t>();
      for (int64_t i = 0; i < c.numel(); ++i) total += double(p[i]) * double(p[i]);
    });
  }
  return {full({}, std::sqrt(total), DType::Float32, Device{})};
}

}  // namespace

void adamw_step(const Tensors& params, const Tensors& grads, const Tensors& exp_avg,
                const Tensors& exp_avg_sq, double lr, double beta1, double beta2, double eps,
                double weight_decay, int64_t step, const Tensor& grad_scale) {
  size_t n = params.size();
  LS_CHECK(grads.size() == n && exp_avg.size() == n && exp_avg_sq.size() == n, ValueError,
           "adamw_step: expected equally many params, grads and states, got ", n, ", ",
           grads.size(), ", ", exp_avg.size(), ", ", exp_avg_sq.size());
  LS_CHECK(step >= 1, ValueError, "adamw_step: step must be >= 1, got ", step);
  if (n == 0) return;
  Tensors in;
  for (const Tensors* group : {&params, &grads, &exp_avg, &exp_avg_sq})
    for (size_t k = 0; k < n; ++k) {
      const Tensor& t = (*group)[k];
      LS_CHECK(t.defined() && t.shape() == params[k].shape() && t.dtype() == params[k].dtype(),
               ValueError, "adamw_step: tensor ", k, " of a group does not match its parameter ",
               shape_str(params[k].shape()));
      LS_CHECK(t.is_contiguous(), ValueError, "adamw_step: tensors must be contiguous");
      in.push_back(t);
    }
  Attrs a{{"lr", lr}, {"beta1", beta1}, {"beta2", beta2}, {"eps", eps},
          {"weight_decay", weight_decay}, {"step", step}};
  if (grad_scale.defined()) {
    in.push_back(grad_scale);
    a.set("has_grad_scale", true);
  }
  call("adamw_step", in, a);
  for (auto& p : params) p.bump_version();
}

Tensor global_norm(const Tensors& tensors) {
  LS_CHECK(!tensors.empty(), ValueError, "global_norm: no tensors given");
  return call1("global_norm", tensors);
}

LS_REGISTER(adamw) {
  declare_op("adamw_step", {});
  declare_op("global_norm", {});
  register_kernel("adamw_step", "cpu", adamw_cpu, {DType::Float32, DType::Float64});
  register_kernel("global_norm", "cpu", global_norm_cpu, {DType::Float32, DType::Float64});
}

}  // namespace ls::ops
