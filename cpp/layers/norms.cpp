#include "core/autograd.h"
#include "core/error.h"
#include "layers.h"
#include "ops/ops.h"

namespace ls::layers {

namespace {
Tensor constant_param(int64_t C, double value, DType dtype, Device device) {
  Tensor t = ops::full({C}, value, dtype, device);
  t.set_requires_grad(true);
  return t;
}
}  // namespace

LayerNorm::LayerNorm(int64_t C, double eps_, bool affine, bool with_bias, DType dtype, Device device)
    : eps(eps_) {
  LS_CHECK(C > 0, ValueError, "LayerNorm: normalized size must be positive, got ", C);
  if (affine) weight = constant_param(C, 1.0, dtype, device);
  if (affine && with_bias) bias = constant_param(C, 0.0, dtype, device);
}

Tensor LayerNorm::forward(const Tensor& x) const { return ops::layer_norm(x, weight, bias, eps); }

NamedTensors LayerNorm::named_parameters() const {
  NamedTensors p;
  if (weight.defined()) p.emplace_back("weight", weight);
  if (bias.defined()) p.emplace_back("bias", bias);
  return p;
}

RMSNorm::RMSNorm(int64_t C, double eps_, bool affine, DType dtype, Device device) : eps(eps_) {
  LS_CHECK(C > 0, ValueError, "RMSNorm: normalized size must be positive, got ", C);
  if (affine) weight = constant_param(C, 1.0, dtype, device);
}

Tensor RMSNorm::forward(const Tensor& x) const { return ops::rms_norm(x, weight, eps); }

NamedTensors RMSNorm::named_parameters() const {
  NamedTensors p;
  if (weight.defined()) p.emplace_back("weight", weight);
  return p;
}

}  // namespace ls::layers
