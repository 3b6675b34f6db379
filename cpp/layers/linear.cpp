#include <cmath>

#include "core/autograd.h"
#include "core/error.h"
#include "layers.h"
#include "ops/ops.h"

namespace ls::layers {

namespace {
// U(-bound, bound) as a leaf that requires grad.
Tensor uniform_param(const Shape& shape, double bound, DType dtype, Device device) {
  NoGradGuard ng;
  Tensor u = ops::rand(shape, DType::Float32, device);
  Tensor t = ops::to_dtype(ops::add_scalar(ops::mul_scalar(u, 2 * bound), -bound), dtype);
  t.set_requires_grad(true);
  return t;
}
}  // namespace

Linear::Linear(int64_t in, int64_t out, bool with_bias, DType dtype, Device device) {
  LS_CHECK(in > 0 && out > 0, ValueError, "Linear: features must be positive, got in=", in, " out=", out);
  double bound = 1.0 / std::sqrt(double(in));
  weight = uniform_param({out, in}, bound, dtype, device);
  if (with_bias) bias = uniform_param({out}, bound, dtype, device);
}

Tensor Linear::forward(const Tensor& x) const {
  LS_CHECK(x.dim() >= 1 && x.size(-1) == weight.size(1), ValueError, "Linear: input of shape ",
           shape_str(x.shape()), " does not end in in_features=", weight.size(1));
  return ops::linear(x, weight, bias);
}

NamedTensors Linear::named_parameters() const {
  NamedTensors p{{"weight", weight}};
  if (bias.defined()) p.emplace_back("bias", bias);
  return p;
}

Embedding::Embedding(int64_t V, int64_t C, DType dtype, Device device) {
  LS_CHECK(V > 0 && C > 0, ValueError, "Embedding: sizes must be positive, got ", V, " x ", C);
  NoGradGuard ng;
  weight = ops::to_dtype(ops::randn({V, C}, DType::Float32, device), dtype);
  weight.set_requires_grad(true);
}

Tensor Embedding::forward(const Tensor& ids) const { return ops::embedding(weight, ids); }

NamedTensors Embedding::named_parameters() const { return {{"weight", weight}}; }

}  // namespace ls::layers
