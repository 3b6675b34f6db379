#include "test_util.h"

namespace ls::test {

class Concat : public Guarded {};

// Naive cat of dense row-major tensors: out[a, off + n, b] = xs[i][a, n, b].
std::vector<double> naive_cat(const std::vector<Tensor>& xs, int64_t dim) {
  Shape s0 = xs[0].shape();
  int64_t outer = 1, inner = 1;
  for (int64_t d = 0; d < dim; ++d) outer *= s0[d];
  for (int64_t d = dim + 1; d < int64_t(s0.size()); ++d) inner *= s0[d];
  std::vector<double> out;
  for (int64_t o = 0; o < outer; ++o)
    for (auto& x : xs) {
      auto v = values(x);
      int64_t len = x.shape()[dim] * inner;
      out.insert(out.end(), v.begin() + o * len, v.begin() + (o + 1) * len);
    }
  return out;
}

TEST_F(Concat, CatMatchesNaiveAllDims) {
  for (DType dt : {DType::Float32, DType::Float64, DType::Int64, DType::Int32, DType::BFloat16, DType::UInt8}) {
    for (int64_t dim = 0; dim < 3; ++dim) {
      Shape a{3, 5, 7}, b{3, 5, 7}, c{3, 5, 7};
      a[dim] = 1; b[dim] = 4; c[dim] = 2;
      std::vector<Tensor> xs{ops::to_dtype(ops::mul_scalar(random(a), 10), dt),
                             ops::to_dtype(ops::mul_scalar(random(b), 10), dt),
                             ops::to_dtype(ops::mul_scalar(random(c), 10), dt)};
      Tensor out = ops::cat(xs, dim - 3);  // negative dims count from the end
      Shape expect{3, 5, 7};
      expect[dim] = 7;
      EXPECT_EQ(out.shape(), expect);
      EXPECT_EQ(out.dtype(), dt);
      expect_close(values(out), naive_cat(xs, dim), 0);
    }
  }
}

TEST_F(Concat, CatStridedInputsAndEmpties) {
  Tensor a = ops::transpose(random({4, 3}), 0, 1);   // (3, 4), not contiguous
  Tensor b = random({3, 0});
  Tensor c = ops::slice(random({3, 10}), 1, 1, 10, 3);  // (3, 3) strided
  Tensor legacy = random({0});                          // (0,) is skipped whatever the rank
  Tensor out = ops::cat({a, b, legacy, c}, 1);
  EXPECT_EQ(out.shape(), (Shape{3, 7}));
  expect_close(values(out), naive_cat({ops::contiguous(a), b, ops::contiguous(c)}, 1), 0);
  EXPECT_EQ(ops::cat({random({0, 4}), random({0, 4})}, 0).shape(), (Shape{0, 4}));
  EXPECT_EQ(ops::cat({legacy, legacy}, 0).shape(), (Shape{0}));
}

TEST_F(Concat, CatGradients) {
  gradcheck([](const std::vector<Tensor>& in) { return ops::cat(in, 1); },
            {random({2, 3, 2}), random({2, 1, 2}), random({2, 4, 2})});
  gradcheck([](const std::vector<Tensor>& in) { return ops::cat({in[0], in[1], in[0]}, 0); },
            {random({3}), random({5})});
  // Only some inputs need a gradient.
  Tensor a = random({2, 3}), b = random({2, 2});
  a.set_requires_grad(true);
  Tensor out = ops::cat({a, b}, 1);
  run_backward({ops::sum(out)}, {});
  expect_close(values(a.grad()), std::vector<double>(6, 1.0), 0);
  EXPECT_FALSE(b.grad().defined());
}

TEST_F(Concat, CatErrors) {
  EXPECT_THROW(ops::cat({}, 0), ValueError);
  EXPECT_THROW(ops::cat({random({2, 3}), random({3, 3})}, 1), ValueError);
  EXPECT_THROW(ops::cat({random({2, 3}), random({2, 3, 1})}, 0), ValueError);
  EXPECT_THROW(ops::cat({random({2, 3}), random({2, 3}, DType::Float32)}, 0), TypeError);
  EXPECT_THROW(ops::cat({random({2, 3}), random({2, 3})}, 2), IndexError);
  EXPECT_THROW(ops::cat({random({}), random({})}, 0), ValueError);
  try {
    ops::cat({random({2, 3}), random({3, 3})}, 1);
  } catch (const ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("(3, 3)"), std::string::npos) << e.what();
  }
}

TEST_F(Concat, Stack) {
  Tensor a = random({2, 3}), b = random({2, 3});
  for (int64_t dim : {0, 1, 2, -1}) {
    Tensor s = ops::stack({a, b}, dim);
    int64_t d = dim < 0 ? dim + 3 : dim;
    Shape expect{2, 3};
    expect.insert(expect.begin() + d, 2);
    EXPECT_EQ(s.shape(), expect);
    expect_close(values(ops::select(s, d, 0)), values(a), 0);
    expect_close(values(ops::select(s, d, 1)), values(b), 0);
  }
  EXPECT_EQ(ops::stack({random({}), random({}), random({})}, 0).shape(), (Shape{3}));
  gradcheck([](const std::vector<Tensor>& in) { return ops::stack(in, 1); },
            {random({2, 3}), random({2, 3}), random({2, 3})});
  EXPECT_THROW(ops::stack({}, 0), ValueError);
  EXPECT_THROW(ops::stack({random({2}), random({3})}, 0), ValueError);
  EXPECT_THROW(ops::stack({random({2}), random({2})}, 2), IndexError);
}

TEST_F(Concat, SplitAreViews) {
  Tensor x = random({3, 7, 2});
  auto parts = ops::split(x, {2, 0, 5}, 1);
  ASSERT_EQ(parts.size(), 3u);
  EXPECT_EQ(parts[0].shape(), (Shape{3, 2, 2}));
  EXPECT_EQ(parts[1].shape(), (Shape{3, 0, 2}));
  EXPECT_EQ(parts[2].shape(), (Shape{3, 5, 2}));
  EXPECT_EQ(parts[2].storage(), x.storage());  // no copy
  expect_close(values(parts[2]), values(ops::slice(x, 1, 2, 7)), 0);
  expect_close(values(ops::cat(parts, 1)), values(x), 0);
  gradcheck([](const std::vector<Tensor>& in) {
    auto p = ops::split(in[0], {1, 3, 2}, -1);
    return ops::cat({ops::mul(p[2], p[2]), p[0]}, 1);  // p[1] unused: its gradient is zero
  }, {random({2, 6})});
  EXPECT_THROW(ops::split(x, {2, 2}, 1), ValueError);
  EXPECT_THROW(ops::split(x, {8, -1}, 1), ValueError);
  EXPECT_THROW(ops::split(random({}), {1}, 0), ValueError);
}

TEST_F(Concat, ChunkTorchSizes) {
  auto sizes = [](const std::vector<Tensor>& parts) {
    std::vector<int64_t> s;
    for (auto& p : parts) s.push_back(p.shape()[0]);
    return s;
  };
  EXPECT_EQ(sizes(ops::chunk(random({5}), 3, 0)), (std::vector<int64_t>{2, 2, 1}));
  EXPECT_EQ(sizes(ops::chunk(random({6}), 4, 0)), (std::vector<int64_t>{2, 2, 2}));  // fewer pieces
  EXPECT_EQ(sizes(ops::chunk(random({7}), 1, 0)), (std::vector<int64_t>{7}));
  EXPECT_EQ(sizes(ops::chunk(random({2}), 5, 0)), (std::vector<int64_t>{1, 1}));
  EXPECT_EQ(sizes(ops::chunk(random({0}), 3, 0)), (std::vector<int64_t>{0, 0, 0}));
  gradcheck([](const std::vector<Tensor>& in) {
    auto p = ops::chunk(in[0], 3, 1);
    return ops::mul(p[0], p[1]);
  }, {random({3, 6})});
  EXPECT_THROW(ops::chunk(random({5}), 0, 0), ValueError);
  EXPECT_THROW(ops::chunk(random({5}), 2, 1), IndexError);
}

}  // namespace ls::test
