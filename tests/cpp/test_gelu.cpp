#include "dtype_compare.h"

namespace ls::test {

class Gelu : public Guarded {};

// The textbook forms, in double.
double naive_gelu(double x, bool tanh_form) {
  if (tanh_form) return 0.5 * x * (1 + std::tanh(std::sqrt(2 / M_PI) * (x + 0.044715 * x * x * x)));
  return 0.5 * x * (1 + std::erf(x / std::sqrt(2.0)));
}

TEST_F(Gelu, ForwardMatchesNaive) {
  for (Shape shape : {Shape{1}, Shape{3, 5}, Shape{127}, Shape{100, 300}})
    for (DType dt : {DType::Float32, DType::Float64})
      for (std::string approx : {"none", "tanh"}) {
        Tensor x = ops::mul_scalar(random(shape, dt), 3.0);
        std::vector<double> ref;
        for (double v : values(x)) ref.push_back(naive_gelu(v, approx == "tanh"));
        expect_close(values(ops::gelu(x, approx)), ref, dt == DType::Float32 ? 1e-6 : 1e-14);
      }
}

// The same functions written without cancellation for x << 0, where 1 + erf and 1 + tanh lose
// every digit even in double.
double accurate_gelu(double x, bool tanh_form) {
  if (tanh_form) return x / (1 + std::exp(-2 * std::sqrt(2 / M_PI) * (x + 0.044715 * x * x * x)));
  return 0.5 * x * std::erfc(-x / std::sqrt(2.0));
}

TEST_F(Gelu, Float32AccurateOverTheWholeRange) {
  // Relative accuracy even in the far negative tail, where y is tiny; exact limits at +-inf.
  std::vector<double> xs;
  for (double v = -12; v <= 12; v += 0.01) xs.push_back(v);
  Tensor x = make(xs, {int64_t(xs.size())}, DType::Float32);
  for (std::string approx : {"none", "tanh"}) {
    auto y = values(ops::gelu(x, approx));
    auto xv = values(x);
    for (size_t i = 0; i < xs.size(); ++i) {
      double ref = accurate_gelu(xv[i], approx == "tanh");
      if (ref == 0 || std::abs(ref) < 1e-30) continue;
      // float32 rounds x^2 inside exp(-x^2/2): the relative error grows like x^2 ulp.
      double rel = 1e-7 * (8 + xv[i] * xv[i]);
      EXPECT_NEAR(y[i], ref, rel * std::abs(ref) + 1e-37) << approx << " at x = " << xv[i];
    }
    auto lim = values(ops::gelu(make({-INFINITY, INFINITY, 0.0}, {3}, DType::Float32), approx));
    EXPECT_TRUE(std::isnan(lim[0]));  // -inf * 0, as torch
    EXPECT_EQ(lim[1], INFINITY);
    EXPECT_EQ(lim[2], 0.0);
  }
}

TEST_F(Gelu, Gradients) {
  for (std::string approx : {"none", "tanh"}) {
    auto f = [approx](const std::vector<Tensor>& in) { return ops::gelu(in[0], approx); };
    gradcheck(f, {ops::mul_scalar(random({4, 9}), 3.0)});
    expect_float32_matches_float64(f, {ops::mul_scalar(random({50, 41}), 3.0)}, 1e-5);
  }
}

TEST_F(Gelu, NonContiguousAndEmpty) {
  Tensor xt = ops::transpose(random({5, 4}), 0, 1);
  expect_close(values(ops::gelu(xt)), values(ops::gelu(ops::contiguous_copy(xt))), 0);
  EXPECT_EQ(ops::gelu(Tensor::empty({0, 3}, DType::Float32), "tanh").shape(), (Shape{0, 3}));
}

TEST_F(Gelu, Errors) {
  expect_error<ValueError>([] { ops::gelu(random({2}), "sigmoid"); }, "gelu: approximate must be");
  expect_error<TypeError>([] { ops::gelu(make({1, 2}, {2}, DType::Int32)); }, "gelu");
  expect_error<ValueError>([] { call("gelu", {random({2})}, {{"approximate", std::string("x")}}); }, "gelu");
  expect_error<ValueError>([] { call("gelu_backward", {random({2}), random({3})}); }, "gelu_backward");
}

}  // namespace ls::test
