// Helpers shared by the googletest suite: building tensors from values, reading them back,
// finite-difference gradient checks in float64, and the guard-byte fixture.
#pragma once
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <vector>

#include "core/autograd.h"
#include "core/error.h"
#include "core/storage.h"
#include "ops/ops.h"

namespace ls::test {

inline Tensor make(const std::vector<double>& v, const Shape& shape, DType dt = DType::Float64) {
  Tensor t = Tensor::empty(shape, dt);
  EXPECT_EQ(int64_t(v.size()), t.numel());
  DISPATCH_ALL(dt, "make", {
    for (size_t i = 0; i < v.size(); ++i) t.data<scalar_t>()[i] = from_double<scalar_t>(v[i]);
  });
  return t;
}

inline std::vector<double> values(const Tensor& t) {
  Tensor c = ops::contiguous(t);
  std::vector<double> out(c.numel());
  DISPATCH_ALL(c.dtype(), "values", {
    for (int64_t i = 0; i < c.numel(); ++i) out[i] = to_double(c.data<scalar_t>()[i]);
  });
  return out;
}

inline Tensor random(const Shape& shape, DType dt = DType::Float64) {
  return ops::to_dtype(ops::randn(shape, DType::Float32, Device{}), dt);
}

inline void expect_close(const std::vector<double>& a, const std::vector<double>& b, double tol) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    ASSERT_FALSE(std::isnan(a[i])) << "NaN at " << i;
    EXPECT_NEAR(a[i], b[i], tol * (1 + std::abs(b[i]))) << "at index " << i;
  }
}

// Checks d(sum(f(inputs) * w))/d input against central differences, for every float64 input
// that requires grad. w is a fixed random weighting so every output element matters.
inline void gradcheck(const std::function<Tensor(const std::vector<Tensor>&)>& f,
                      std::vector<Tensor> inputs, double eps = 1e-6, double tol = 1e-5) {
  for (auto& t : inputs)
    if (t.defined() && is_floating(t.dtype())) t.set_requires_grad(true);
  Tensor out = f(inputs);
  Tensor w = random(out.shape());
  Tensor loss = ops::sum(ops::mul(out, w));
  run_backward({loss}, {});
  for (auto& t : inputs) {
    if (!t.defined() || !t.requires_grad()) continue;
    std::vector<double> analytic = values(t.grad());
    double* p = t.data<double>();
    ASSERT_TRUE(t.is_contiguous());
    for (int64_t i = 0; i < t.numel(); ++i) {
      NoGradGuard ng;
      double orig = p[i];
      p[i] = orig + eps;
      double up = values(ops::sum(ops::mul(f(inputs), w)))[0];
      p[i] = orig - eps;
      double down = values(ops::sum(ops::mul(f(inputs), w)))[0];
      p[i] = orig;
      double numeric = (up - down) / (2 * eps);
      EXPECT_NEAR(analytic[i], numeric, tol * (1 + std::abs(numeric))) << "input element " << i;
    }
  }
}

// Every test in a suite using this fixture runs with guard bytes around CPU allocations and
// fails if any kernel wrote outside its buffer.
class Guarded : public ::testing::Test {
 protected:
  void SetUp() override {
    before_ = guard_violations();
    set_cpu_guard_bytes(true);
  }
  void TearDown() override {
    set_cpu_guard_bytes(false);
    EXPECT_EQ(guard_violations(), before_) << "a kernel wrote outside its buffer";
  }
  int64_t before_ = 0;
};

}  // namespace ls::test
