// gelu's constants and its attribute check: one definition for the CPU kernels (cpp/ops/gelu.cpp)
// and the CUDA kernels (cuda/gelu.cu). The math is in cpp/ops/gelu.cpp's header comment.
#pragma once
#include <string>

#include "core/error.h"
#include "core/registry.h"

namespace ls::gelu_math {

constexpr double kInvSqrt2 = 0.70710678118654752440;     // 1 / sqrt(2): Phi(x) = erfc(-x / sqrt2) / 2
constexpr double kInvSqrt2Pi = 0.39894228040143267794;   // 1 / sqrt(2 pi): phi(x)
constexpr double kSqrt2OverPi = 0.79788456080286535588;  // sqrt(2 / pi): the tanh form's u
constexpr double kTanhCoef = 0.044715;                   // the tanh form's cubic coefficient

// attr approximate: "none" (erf form) or "tanh"; true for the tanh form.
inline bool tanh_form(const Attrs& a, const char* op) {
  const std::string approx = a.s("approximate", "none");
  LS_CHECK(approx == "none" || approx == "tanh", ValueError, op,
           ": approximate must be 'none' or 'tanh', got '", approx, "'");
  return approx == "tanh";
}

}  // namespace ls::gelu_math
