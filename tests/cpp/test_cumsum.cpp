#include "test_util.h"

namespace ls::test {

class Cumsum : public Guarded {};

// Reference in double over (outer, n, inner).
std::vector<double> naive_cumsum(const std::vector<double>& x, const Shape& s, int64_t dim) {
  int64_t outer = 1, inner = 1, n = s[dim];
  for (int64_t d = 0; d < dim; ++d) outer *= s[d];
  for (int64_t d = dim + 1; d < int64_t(s.size()); ++d) inner *= s[d];
  std::vector<double> out(x.size());
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t c = 0; c < inner; ++c) {
      double acc = 0;
      for (int64_t i = 0; i < n; ++i) {
        acc += x[(o * n + i) * inner + c];
        out[(o * n + i) * inner + c] = acc;
      }
    }
  return out;
}

TEST_F(Cumsum, MatchesNaive) {
  for (Shape s : {Shape{7}, Shape{3, 5, 4}, Shape{2, 3, 300}, Shape{1, 1023}}) {
    for (int64_t dim = 0; dim < int64_t(s.size()); ++dim) {
      Tensor x = random(s);
      expect_close(values(ops::cumsum(x, dim)), naive_cumsum(values(x), s, dim), 1e-12);
      Tensor xf = ops::to_dtype(x, DType::Float32);
      Tensor of = ops::cumsum(xf, dim - int64_t(s.size()));
      EXPECT_EQ(of.dtype(), DType::Float32);
      expect_close(values(of), naive_cumsum(values(xf), s, dim), 1e-5);
    }
  }
}

TEST_F(Cumsum, IntegersGiveInt64) {
  for (DType dt : {DType::Int32, DType::Int64, DType::UInt8, DType::Bool}) {
    Tensor x = ops::to_dtype(ops::mul_scalar(ops::unary("abs", random({4, 6})), 3), dt);
    Tensor out = ops::cumsum(x, 1);
    EXPECT_EQ(out.dtype(), DType::Int64);
    expect_close(values(out), naive_cumsum(values(x), {4, 6}, 1), 0);
  }
  // No wrap-around in the accumulator: 300 * 255 > 2^16.
  Tensor big = ops::full({300}, 255, DType::UInt8, Device{});
  EXPECT_EQ(values(ops::cumsum(big, 0)).back(), 300.0 * 255.0);
}

TEST_F(Cumsum, StridedEmptyScalar) {
  Tensor x = ops::transpose(random({5, 4}), 0, 1);
  expect_close(values(ops::cumsum(x, 1)), naive_cumsum(values(x), {4, 5}, 1), 1e-12);
  EXPECT_EQ(ops::cumsum(random({3, 0}), 1).shape(), (Shape{3, 0}));
  EXPECT_EQ(ops::cumsum(random({0, 3}), 1).shape(), (Shape{0, 3}));
  Tensor s = make({2.5}, {});
  EXPECT_EQ(ops::cumsum(s, 0).shape(), (Shape{}));
  EXPECT_EQ(values(ops::cumsum(s, -1))[0], 2.5);
}

TEST_F(Cumsum, ReverseAttr) {
  Tensor x = make({1, 2, 3, 4}, {4});
  expect_close(values(call1("cumsum", {x}, {{"dim", int64_t(0)}, {"reverse", true}})), {10, 9, 7, 4}, 0);
}

TEST_F(Cumsum, Gradients) {
  gradcheck([](const std::vector<Tensor>& in) { return ops::cumsum(in[0], 1); }, {random({3, 5, 2})});
  gradcheck([](const std::vector<Tensor>& in) { return ops::cumsum(in[0], -1); }, {random({2, 7})});
  gradcheck([](const std::vector<Tensor>& in) { return ops::cumsum(in[0], 0); }, {random({6})});
  // Second order: the backward is itself a cumsum, so it differentiates too.
  gradcheck([](const std::vector<Tensor>& in) {
    return call1("cumsum", {in[0]}, {{"dim", int64_t(0)}, {"reverse", true}});
  }, {random({5, 2})});
}

TEST_F(Cumsum, Errors) {
  EXPECT_THROW(ops::cumsum(random({3, 4}), 2), IndexError);
}

TEST_F(Cumsum, SixteenBitFloatsRoundOnlyTheOutputs) {
  for (DType dt : {DType::BFloat16, DType::Float16}) {
    Tensor x = random({3, 40}, dt);
    Tensor out = ops::cumsum(x, 1);
    EXPECT_EQ(out.dtype(), dt);
    // Each output is the float64 running sum converted to the 16-bit type (the running sum
    // itself is never rounded to 16 bits).
    Tensor ref = ops::to_dtype(ops::to_dtype(make(naive_cumsum(values(x), {3, 40}, 1), {3, 40}), dt), DType::Float64);
    expect_close(values(out), values(ref), 0);
  }
}

}  // namespace ls::test
