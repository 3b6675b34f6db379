#include <algorithm>
#include <numeric>

#include "test_util.h"

namespace ls::test {

class TopK : public Guarded {};

// Reference: stable sort of positions by value (descending when largest), NaN largest, take k.
std::vector<int64_t> naive_topk_row(const std::vector<double>& row, int64_t k, bool largest) {
  std::vector<int64_t> pos(row.size());
  std::iota(pos.begin(), pos.end(), 0);
  auto key = [&](int64_t i) { return std::isnan(row[i]) ? INFINITY : row[i]; };
  std::stable_sort(pos.begin(), pos.end(), [&](int64_t i, int64_t j) {
    bool ni = std::isnan(row[i]), nj = std::isnan(row[j]);
    if (ni != nj) return largest ? ni : nj;
    if (ni) return false;
    return largest ? key(i) > key(j) : key(i) < key(j);
  });
  pos.resize(k);
  return pos;
}

void check_topk(const Tensor& x, int64_t k, int64_t dim, bool largest) {
  auto r = ops::topk(x, k, dim, largest);
  int64_t d = dim < 0 ? dim + x.dim() : dim;
  Tensor xt = ops::contiguous(ops::transpose(x, d, -1));
  Tensor vt = ops::contiguous(ops::transpose(r[0], d, -1));
  Tensor it = ops::contiguous(ops::transpose(r[1], d, -1));
  EXPECT_EQ(r[1].dtype(), DType::Int64);
  int64_t n = x.shape()[d];
  auto vx = values(xt), vv = values(vt), vi = values(it);
  for (int64_t row = 0; row < xt.numel() / n; ++row) {
    std::vector<double> xr(vx.begin() + row * n, vx.begin() + (row + 1) * n);
    auto ref = naive_topk_row(xr, k, largest);
    for (int64_t j = 0; j < k; ++j) {
      EXPECT_EQ(vi[row * k + j], double(ref[j])) << "row " << row << " j " << j;
      double want = xr[ref[j]], got = vv[row * k + j];
      EXPECT_TRUE(got == want || (std::isnan(got) && std::isnan(want)));
    }
  }
}

TEST_F(TopK, MatchesNaive) {
  for (DType dt : {DType::Float64, DType::Float32, DType::Int64, DType::Int32}) {
    Tensor x = ops::to_dtype(ops::mul_scalar(random({5, 9, 3}), 3), dt);  // ints: many ties
    for (int64_t dim : {0, 1, 2, -1})
      for (bool largest : {true, false})
        for (int64_t k : {int64_t(0), int64_t(1), int64_t(2), x.shape()[dim < 0 ? 2 : dim]})
          check_topk(x, k, dim, largest);
  }
}

TEST_F(TopK, TiesAndNaN) {
  Tensor x = make({1, NAN, 3, 3, NAN, 1, 2}, {7});
  auto r = ops::topk(x, 4, 0, true);
  expect_close(values(r[1]), {1, 4, 2, 3}, 0);
  r = ops::topk(x, 5, 0, false);
  expect_close(values(r[1]), {0, 5, 6, 2, 3}, 0);
  check_topk(x, 7, 0, true);
  check_topk(x, 7, 0, false);
}

TEST_F(TopK, EmptyAndScalar) {
  auto r = ops::topk(random({0, 4}), 2, 1, true);
  EXPECT_EQ(r[0].shape(), (Shape{0, 2}));
  r = ops::topk(random({3, 0}), 0, 1, true);
  EXPECT_EQ(r[0].shape(), (Shape{3, 0}));
  Tensor s = make({2.5}, {});
  r = ops::topk(s, 1, 0, true);
  EXPECT_EQ(r[0].shape(), (Shape{}));
  EXPECT_EQ(values(r[0])[0], 2.5);
}

TEST_F(TopK, Gradients) {
  gradcheck([](const std::vector<Tensor>& in) { return ops::topk(in[0], 3, 1, true)[0]; },
            {random({4, 7, 2})});
  gradcheck([](const std::vector<Tensor>& in) { return ops::topk(in[0], 2, 0, false)[0]; },
            {random({5, 3})});
}

TEST_F(TopK, Errors) {
  EXPECT_THROW(ops::topk(random({3, 4}), 5, 1, true), IndexError);
  EXPECT_THROW(ops::topk(random({3, 4}), -1, 1, true), IndexError);
  EXPECT_THROW(ops::topk(random({3, 4}), 1, 2, true), IndexError);
}

TEST_F(TopK, SixteenBitFloats) {
  for (DType dt : {DType::BFloat16, DType::Float16}) {
    Tensor x = random({4, 9}, dt);
    auto r = ops::topk(x, 3, 1, false);
    auto ref = ops::topk(ops::to_dtype(x, DType::Float32), 3, 1, false);
    EXPECT_EQ(r[0].dtype(), dt);
    expect_close(values(r[0]), values(ref[0]), 0);
    expect_close(values(r[1]), values(ref[1]), 0);
  }
}

}  // namespace ls::test
