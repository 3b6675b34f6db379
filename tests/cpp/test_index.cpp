#include "test_util.h"

namespace ls::test {

class Index : public Guarded {};

// Row-major multi-index helpers for the naive references.
std::vector<int64_t> unravel(int64_t i, const Shape& s) {
  std::vector<int64_t> r(s.size());
  for (int64_t d = int64_t(s.size()) - 1; d >= 0; --d) {
    r[d] = i % s[d];
    i /= s[d];
  }
  return r;
}
int64_t ravel(const std::vector<int64_t>& idx, const Shape& s) {
  int64_t r = 0;
  for (size_t d = 0; d < s.size(); ++d) r = r * s[d] + idx[d];
  return r;
}

Tensor random_index(const Shape& shape, int64_t n, DType dt = DType::Int64) {
  return ops::randint(0, n, shape, dt, Device{});
}

TEST_F(Index, IndexSelectMatchesNaive) {
  for (DType dt : {DType::Float64, DType::Float32, DType::Int32, DType::BFloat16, DType::Bool}) {
    for (int64_t dim = 0; dim < 3; ++dim) {
      Shape s{4, 5, 3};
      Tensor x = ops::to_dtype(ops::mul_scalar(random(s), 5), dt);
      Tensor idx = random_index({7}, s[dim], dim == 1 ? DType::Int32 : DType::Int64);
      Tensor out = ops::index_select(x, dim, idx);
      Shape os = s;
      os[dim] = 7;
      ASSERT_EQ(out.shape(), os);
      auto vx = values(x), vi = values(idx), vo = values(out);
      for (int64_t i = 0; i < out.numel(); ++i) {
        auto p = unravel(i, os);
        p[dim] = int64_t(vi[p[dim]]);
        EXPECT_EQ(vo[i], vx[ravel(p, s)]);
      }
    }
  }
  // Strided input, empty index, 0-d index (keeps the dimension), 0-d input.
  Tensor xt = ops::transpose(random({5, 4}), 0, 1);
  expect_close(values(ops::index_select(xt, 1, make({4, 0}, {2}, DType::Int64))),
               values(ops::index_select(ops::contiguous(xt), 1, make({4, 0}, {2}, DType::Int64))), 0);
  EXPECT_EQ(ops::index_select(random({3, 4}), 1, make({}, {0}, DType::Int64)).shape(), (Shape{3, 0}));
  EXPECT_EQ(ops::index_select(random({3, 4}), 1, make({2}, {}, DType::Int64)).shape(), (Shape{3, 1}));
  EXPECT_EQ(ops::index_select(make({5}, {}), 0, make({0}, {1}, DType::Int64)).shape(), (Shape{}));
}

TEST_F(Index, IndexSelectGradientsAccumulateRepeats) {
  Tensor idx = make({2, 0, 2, 2, 1}, {5}, DType::Int64);
  gradcheck([&](const std::vector<Tensor>& in) { return ops::index_select(in[0], 1, idx); },
            {random({2, 3, 4})});
  gradcheck([&](const std::vector<Tensor>& in) { return ops::index_select(in[0], 0, idx); },
            {random({3, 300})});  // more than one column block
  gradcheck([&](const std::vector<Tensor>& in) { return ops::index_select(in[0], -1, idx); },
            {random({3})});
}

TEST_F(Index, IndexSelectErrors) {
  Tensor x = random({3, 4});
  EXPECT_THROW(ops::index_select(x, 1, make({4}, {1}, DType::Int64)), IndexError);
  EXPECT_THROW(ops::index_select(x, 1, make({-1}, {1}, DType::Int64)), IndexError);
  EXPECT_THROW(ops::index_select(x, 1, make({0}, {1}, DType::Float32)), TypeError);
  EXPECT_THROW(ops::index_select(x, 1, make({0, 1}, {1, 2}, DType::Int64)), ValueError);
  EXPECT_THROW(ops::index_select(x, 2, make({0}, {1}, DType::Int64)), IndexError);
  try {
    ops::index_select(x, 1, make({0, 9}, {2}, DType::Int64));
    FAIL();
  } catch (const IndexError& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("index_select"), std::string::npos) << m;
    EXPECT_NE(m.find("9"), std::string::npos) << m;
    EXPECT_NE(m.find("size 4"), std::string::npos) << m;
  }
}

TEST_F(Index, GatherMatchesNaive) {
  for (DType dt : {DType::Float64, DType::Int64, DType::Float16}) {
    for (int64_t dim = 0; dim < 3; ++dim) {
      Shape xs{4, 5, 3}, is{3, 4, 2};
      is[dim] = 6;  // along dim the index may be longer than x
      Tensor x = ops::to_dtype(ops::mul_scalar(random(xs), 5), dt);
      Tensor idx = random_index(is, xs[dim], dim == 2 ? DType::Int32 : DType::Int64);
      Tensor out = ops::gather(x, dim, idx);
      ASSERT_EQ(out.shape(), is);
      auto vx = values(x), vi = values(idx), vo = values(out);
      for (int64_t i = 0; i < out.numel(); ++i) {
        auto p = unravel(i, is);
        p[dim] = int64_t(vi[i]);
        EXPECT_EQ(vo[i], vx[ravel(p, xs)]);
      }
    }
  }
  // Strided x and index.
  Tensor x = ops::transpose(random({5, 4}), 0, 1);                           // (4, 5)
  Tensor idx = ops::transpose(random_index({3, 4}, 5), 0, 1);                // (4, 3)
  expect_close(values(ops::gather(x, 1, idx)),
               values(ops::gather(ops::contiguous(x), 1, ops::contiguous(idx))), 0);
  EXPECT_EQ(ops::gather(random({3, 4}), 0, random_index({0, 4}, 3)).shape(), (Shape{0, 4}));
}

TEST_F(Index, GatherGradients) {
  Tensor idx = random_index({3, 5, 2}, 4);
  gradcheck([&](const std::vector<Tensor>& in) { return ops::gather(in[0], 1, idx); },
            {random({3, 4, 2})});
  Tensor idx0 = random_index({2, 3}, 5);
  gradcheck([&](const std::vector<Tensor>& in) { return ops::gather(in[0], 0, idx0); },
            {random({5, 4})});
}

TEST_F(Index, GatherErrors) {
  Tensor x = random({3, 4});
  EXPECT_THROW(ops::gather(x, 1, make({4}, {1, 1}, DType::Int64)), IndexError);
  EXPECT_THROW(ops::gather(x, 1, make({-2}, {1, 1}, DType::Int64)), IndexError);
  EXPECT_THROW(ops::gather(x, 1, random_index({4, 2}, 4)), ValueError);   // too big off dim
  EXPECT_THROW(ops::gather(x, 1, random_index({3}, 4)), ValueError);      // rank
  EXPECT_THROW(ops::gather(x, 1, make({0}, {1, 1}, DType::Float64)), TypeError);
}

TEST_F(Index, ScatterAddMatchesNaive) {
  for (DType dt : {DType::Float64, DType::Float32, DType::Int64, DType::Int32}) {
    for (int64_t dim = 0; dim < 3; ++dim) {
      Shape xs{4, 5, 3}, is{3, 4, 2}, ss{3, 5, 3};
      is[dim] = 6;
      ss[dim] = 7;
      Tensor x = ops::to_dtype(ops::mul_scalar(random(xs), 5), dt);
      Tensor src = ops::to_dtype(ops::mul_scalar(random(ss), 5), dt);
      Tensor idx = random_index(is, xs[dim]);
      Tensor out = ops::scatter_add(x, dim, idx, src);
      ASSERT_EQ(out.shape(), xs);
      auto ref = values(x);
      auto vi = values(idx), vs = values(src);
      for (int64_t i = 0; i < idx.numel(); ++i) {
        auto p = unravel(i, is);
        double s = vs[ravel(p, ss)];
        p[dim] = int64_t(vi[i]);
        ref[ravel(p, xs)] += s;
      }
      expect_close(values(out), ref, dt == DType::Float32 ? 1e-6 : 1e-12);
    }
  }
  // x is not modified; strided src.
  Tensor x = random({2, 3});
  auto before = values(x);
  Tensor src = ops::transpose(random({3, 2}), 0, 1);
  ops::scatter_add(x, 1, random_index({2, 3}, 3), src);
  expect_close(values(x), before, 0);
}

TEST_F(Index, SixteenBitFloatsSumInFloat32) {
  for (DType dt : {DType::BFloat16, DType::Float16}) {
    Tensor x = random({3, 4}, dt), src = random({3, 9}, dt);
    Tensor idx = random_index({3, 9}, 4);
    Tensor out = ops::scatter_add(x, 1, idx, src);
    EXPECT_EQ(out.dtype(), dt);
    Tensor ref = ops::scatter_add(ops::to_dtype(x, DType::Float32), 1, idx, ops::to_dtype(src, DType::Float32));
    expect_close(values(out), values(ops::to_dtype(ref, dt)), 0);
    // index_select's backward accumulates repeats the same way.
    Tensor xs = random({5, 3}, dt);
    xs.set_requires_grad(true);
    Tensor rep = make({1, 1, 1, 4}, {4}, DType::Int64);
    Tensor y = ops::index_select(xs, 0, rep);
    run_backward({y}, {ops::full(y.shape(), 1.0, dt, Device{})});
    EXPECT_EQ(xs.grad().dtype(), dt);
    expect_close(values(xs.grad()), {0, 0, 0, 3, 3, 3, 0, 0, 0, 0, 0, 0, 1, 1, 1}, 0);
  }
}

TEST_F(Index, ScatterAddGradients) {
  Tensor idx = random_index({3, 2, 4}, 5);
  gradcheck([&](const std::vector<Tensor>& in) { return ops::scatter_add(in[0], 1, idx, in[1]); },
            {random({3, 5, 4}), random({3, 2, 4})});
  // src larger than index: the uncovered part of src gets a zero gradient.
  Tensor idx2 = random_index({2, 2}, 4);
  gradcheck([&](const std::vector<Tensor>& in) { return ops::scatter_add(in[0], 0, idx2, in[1]); },
            {random({4, 3}), random({3, 3})});
}

TEST_F(Index, ScatterAddErrors) {
  Tensor x = random({3, 4});
  EXPECT_THROW(ops::scatter_add(x, 1, make({4}, {1, 1}, DType::Int64), random({1, 1})), IndexError);
  EXPECT_THROW(ops::scatter_add(x, 1, random_index({2, 3}, 4), random({2, 2})), ValueError);
  EXPECT_THROW(ops::scatter_add(x, 1, random_index({4, 3}, 4), random({4, 3})), ValueError);
  EXPECT_THROW(ops::scatter_add(x, 1, random_index({2, 2}, 4), random({2, 2}, DType::Float32)),
               TypeError);
}

TEST_F(Index, OneHot) {
  Tensor idx = make({2, 0, 3, 1, 3, 0}, {2, 3}, DType::Int64);
  Tensor out = ops::one_hot(idx, 5);
  EXPECT_EQ(out.shape(), (Shape{2, 3, 5}));
  EXPECT_EQ(out.dtype(), DType::Int64);
  auto v = values(out), vi = values(idx);
  for (int64_t i = 0; i < 6; ++i)
    for (int64_t c = 0; c < 5; ++c) EXPECT_EQ(v[i * 5 + c], c == vi[i] ? 1.0 : 0.0);
  EXPECT_EQ(ops::one_hot(idx, -1).shape(), (Shape{2, 3, 4}));
  EXPECT_EQ(ops::one_hot(make({1}, {}, DType::Int32), 3).shape(), (Shape{3}));
  EXPECT_EQ(ops::one_hot(make({}, {0}, DType::Int64), 3).shape(), (Shape{0, 3}));
  EXPECT_THROW(ops::one_hot(idx, 3), IndexError);
  EXPECT_THROW(ops::one_hot(make({-1}, {1}, DType::Int64), 3), IndexError);
  EXPECT_THROW(ops::one_hot(make({-3, -2}, {2}, DType::Int64), -1), IndexError);
  EXPECT_THROW(ops::one_hot(make({}, {0}, DType::Int64), -1), ValueError);
  EXPECT_THROW(ops::one_hot(make({1}, {1}, DType::Float32), 3), TypeError);
}

}  // namespace ls::test
