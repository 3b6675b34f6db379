#include "dtype_compare.h"

namespace ls::test {

class Silu : public Guarded {};

TEST_F(Silu, ForwardMatchesNaive) {
  for (Shape shape : {Shape{1}, Shape{3, 5}, Shape{127}, Shape{100, 300}})
    for (DType dt : {DType::Float32, DType::Float64}) {
      Tensor x = ops::mul_scalar(random(shape, dt), 4.0);
      std::vector<double> ref;
      for (double v : values(x)) ref.push_back(v / (1 + std::exp(-v)));
      expect_close(values(ops::silu(x)), ref, dt == DType::Float32 ? 1e-6 : 1e-15);
    }
}

TEST_F(Silu, ExtremeInputs) {
  for (DType dt : {DType::Float32, DType::Float64}) {
    auto y = values(ops::silu(make({-INFINITY, INFINITY, -200, 200, 0}, {5}, dt)));
    EXPECT_EQ(y[1], INFINITY);
    EXPECT_EQ(y[3], 200.0);
    EXPECT_EQ(y[4], 0.0);
    EXPECT_NEAR(y[2], 0.0, 1e-60);
    EXPECT_TRUE(std::isnan(y[0]));  // -inf * 0, as torch
  }
}

TEST_F(Silu, Gradients) {
  auto f = [](const std::vector<Tensor>& in) { return ops::silu(in[0]); };
  gradcheck(f, {ops::mul_scalar(random({4, 9}), 3.0)});
  expect_float32_matches_float64(f, {ops::mul_scalar(random({50, 41}), 3.0)}, 1e-5);
}

TEST_F(Silu, NonContiguousAndEmpty) {
  Tensor xt = ops::transpose(random({5, 4}), 0, 1);
  expect_close(values(ops::silu(xt)), values(ops::silu(ops::contiguous_copy(xt))), 0);
  EXPECT_EQ(ops::silu(Tensor::empty({2, 0}, DType::Float32)).shape(), (Shape{2, 0}));
}

TEST_F(Silu, Errors) {
  expect_error<TypeError>([] { ops::silu(make({1, 2}, {2}, DType::Int64)); }, "silu");
  expect_error<ValueError>([] { call("silu_backward", {random({2}), random({3})}); }, "silu_backward");
  expect_error<TypeError>([] { call("silu_backward", {random({2}, DType::Float32), random({2})}); }, "silu_backward");
}

}  // namespace ls::test
