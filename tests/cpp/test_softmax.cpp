#include "dtype_compare.h"

namespace ls::test {

class Softmax : public Guarded {};

// Naive reference in double: x viewed as (O, N, I), softmax over N.
std::vector<double> naive_softmax(const std::vector<double>& x, const Shape& shape, int64_t dim,
                                  bool log) {
  int64_t O = 1, N = shape[dim], I = 1;
  for (int64_t d = 0; d < dim; ++d) O *= shape[d];
  for (int64_t d = dim + 1; d < int64_t(shape.size()); ++d) I *= shape[d];
  std::vector<double> y(x.size());
  for (int64_t o = 0; o < O; ++o)
    for (int64_t i = 0; i < I; ++i) {
      auto at = [&](int64_t n) { return (o * N + n) * I + i; };
      double m = -INFINITY, s = 0;
      for (int64_t n = 0; n < N; ++n) m = std::max(m, x[at(n)]);
      for (int64_t n = 0; n < N; ++n) s += std::exp(x[at(n)] - m);
      for (int64_t n = 0; n < N; ++n)
        y[at(n)] = log ? x[at(n)] - m - std::log(s) : std::exp(x[at(n)] - m) / s;
    }
  return y;
}

TEST_F(Softmax, ForwardMatchesNaiveEveryDim) {
  // Covers the row kernel (last dim), the column kernel with block tails (I = 130 > 64) and rows
  // enough to be split over threads.
  for (Shape shape : {Shape{1}, Shape{3, 5}, Shape{127, 33}, Shape{2, 7, 130}, Shape{300, 64},
                      Shape{4, 1, 3}}) {
    for (int64_t dim = 0; dim < int64_t(shape.size()); ++dim)
      for (bool log : {false, true})
        for (DType dt : {DType::Float32, DType::Float64}) {
          Tensor x = ops::mul_scalar(random(shape, dt), 3.0);
          Tensor y = log ? ops::log_softmax(x, dim) : ops::softmax(x, dim);
          EXPECT_EQ(y.dtype(), dt);
          expect_close(values(y), naive_softmax(values(x), shape, dim, log),
                       dt == DType::Float32 ? 2e-6 : 1e-13);
        }
  }
}

TEST_F(Softmax, NegativeDimAndZeroDim) {
  Tensor x = random({4, 6});
  expect_close(values(ops::softmax(x, -1)), values(ops::softmax(x, 1)), 0);
  expect_close(values(ops::log_softmax(x, -2)), values(ops::log_softmax(x, 0)), 0);
  Tensor s = make({2.5}, {});
  EXPECT_EQ(values(ops::softmax(s, 0))[0], 1.0);
  EXPECT_EQ(values(ops::log_softmax(s, -1))[0], 0.0);
}

TEST_F(Softmax, NonContiguousInput) {
  Tensor base = random({9, 13});
  Tensor xt = ops::transpose(base, 0, 1);  // (13, 9), strided
  Tensor ref = ops::softmax(ops::contiguous_copy(xt), 1);
  expect_close(values(ops::softmax(xt, 1)), values(ref), 1e-15);
}

TEST_F(Softmax, LargeLogitsDoNotOverflow) {
  Tensor x = make({1000, 1001, 1002, -1000}, {4}, DType::Float32);
  auto y = values(ops::softmax(x, 0));
  auto ref = naive_softmax(values(x), {4}, 0, false);
  expect_close(y, ref, 1e-6);
  auto ly = values(ops::log_softmax(x, 0));
  EXPECT_NEAR(ly[3], -2002.0 - std::log(1 + std::exp(-1.0) + std::exp(-2.0)), 1e-3);
}

TEST_F(Softmax, NegativeInfinityGivesZeroProbability) {
  // A masked (causal) attention row: -inf entries get exactly 0.
  for (DType dt : {DType::Float32, DType::Float64}) {
    Tensor x = make({0.5, -INFINITY, 1.5, -INFINITY}, {4}, dt);
    auto y = values(ops::softmax(x, 0));
    EXPECT_EQ(y[1], 0.0);
    EXPECT_EQ(y[3], 0.0);
    EXPECT_NEAR(y[0] + y[2], 1.0, 1e-7);
  }
}

TEST_F(Softmax, EmptyTensors) {
  for (Shape shape : {Shape{0, 5}, Shape{5, 0}, Shape{2, 0, 3}}) {
    Tensor x = Tensor::empty(shape, DType::Float32);
    for (int64_t dim = 0; dim < int64_t(shape.size()); ++dim) {
      EXPECT_EQ(ops::softmax(x, dim).shape(), shape);
      EXPECT_EQ(ops::log_softmax(x, dim).shape(), shape);
    }
  }
}

TEST_F(Softmax, Gradients) {
  for (int64_t dim : {0, 1, 2}) {
    gradcheck([dim](const std::vector<Tensor>& in) { return ops::softmax(in[0], dim); },
              {random({3, 4, 5})});
    gradcheck([dim](const std::vector<Tensor>& in) { return ops::log_softmax(in[0], dim); },
              {random({3, 4, 5})});
  }
  gradcheck([](const std::vector<Tensor>& in) { return ops::softmax(in[0], -1); }, {random({1, 1})});
}

TEST_F(Softmax, Float32MatchesFloat64) {
  for (int64_t dim : {0, 1}) {
    expect_float32_matches_float64([dim](const std::vector<Tensor>& in) { return ops::softmax(in[0], dim); },
                                   {random({67, 129})});
    expect_float32_matches_float64([dim](const std::vector<Tensor>& in) { return ops::log_softmax(in[0], dim); },
                                   {random({67, 129})}, 1e-4);
  }
}

TEST_F(Softmax, Errors) {
  expect_error<IndexError>([] { ops::softmax(random({2, 3}), 2); }, "softmax");
  expect_error<IndexError>([] { ops::log_softmax(random({2, 3}), -3); }, "log_softmax");
  expect_error<TypeError>([] { ops::softmax(make({1, 2}, {2}, DType::Int64), 0); }, "softmax");
  expect_error<ValueError>([] { call("softmax_backward", {random({2, 3}), random({3, 2})}, {{"dim", int64_t(1)}}); },
                           "softmax_backward");
  expect_error<ValueError>([] { call("softmax", {}, {{"dim", int64_t(0)}}); }, "softmax");
}

}  // namespace ls::test
