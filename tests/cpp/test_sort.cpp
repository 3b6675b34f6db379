#include <algorithm>
#include <numeric>

#include "test_util.h"

namespace ls::test {

class Sort : public Guarded {};

// Reference: std::stable_sort of positions, NaN largest.
std::vector<int64_t> naive_sort_row(const std::vector<double>& row, bool descending) {
  std::vector<int64_t> pos(row.size());
  std::iota(pos.begin(), pos.end(), 0);
  std::stable_sort(pos.begin(), pos.end(), [&](int64_t i, int64_t j) {
    bool ni = std::isnan(row[i]), nj = std::isnan(row[j]);
    if (ni || nj) return descending ? (ni && !nj) : (nj && !ni);
    return descending ? row[i] > row[j] : row[i] < row[j];
  });
  return pos;
}

void check_sort(const Tensor& x, int64_t dim, bool descending) {
  auto r = ops::sort(x, dim, descending);
  int64_t d = dim < 0 ? dim + x.dim() : dim;
  EXPECT_EQ(r[0].shape(), x.shape());
  Tensor xt = ops::contiguous(ops::transpose(x, d, -1));
  auto vv = values(ops::transpose(r[0], d, -1)), vi = values(ops::transpose(r[1], d, -1));
  auto va = values(ops::transpose(ops::argsort(x, dim, descending), d, -1));
  int64_t n = x.shape()[d];
  auto vx = values(xt);
  for (int64_t row = 0; row < xt.numel() / n; ++row) {
    std::vector<double> xr(vx.begin() + row * n, vx.begin() + (row + 1) * n);
    auto ref = naive_sort_row(xr, descending);
    for (int64_t j = 0; j < n; ++j) {
      EXPECT_EQ(vi[row * n + j], double(ref[j]));
      EXPECT_EQ(va[row * n + j], double(ref[j]));
      double want = xr[ref[j]], got = vv[row * n + j];
      EXPECT_TRUE(got == want || (std::isnan(got) && std::isnan(want)));
    }
  }
}

TEST_F(Sort, MatchesStableNaive) {
  for (DType dt : {DType::Float64, DType::Float32, DType::Int64, DType::Int32, DType::UInt8}) {
    // |x| * 3 so that the integer dtypes see many ties (stability matters) and uint8 is valid.
    Tensor x = ops::to_dtype(ops::mul_scalar(ops::unary("abs", random({4, 11, 3})), 3), dt);
    for (int64_t dim : {0, 1, 2, -1})
      for (bool desc : {false, true}) check_sort(x, dim, desc);
  }
  check_sort(ops::transpose(random({6, 5}), 0, 1), 1, false);  // strided input
  check_sort(random({1, 1000}), 1, true);                       // one long row
}

TEST_F(Sort, NaNLargestAndStable) {
  Tensor x = make({2, NAN, 1, 2, NAN, 0, 1}, {7});
  auto r = ops::sort(x, 0, false);
  expect_close(values(r[1]), {5, 2, 6, 0, 3, 1, 4}, 0);
  r = ops::sort(x, 0, true);
  expect_close(values(r[1]), {1, 4, 0, 3, 2, 6, 5}, 0);
  check_sort(x, 0, false);
  check_sort(x, 0, true);
}

TEST_F(Sort, EmptyAndScalar) {
  EXPECT_EQ(ops::sort(random({3, 0}), 1, false)[0].shape(), (Shape{3, 0}));
  EXPECT_EQ(ops::sort(random({0, 3}), 1, false)[1].shape(), (Shape{0, 3}));
  auto r = ops::sort(make({4}, {}), 0, false);
  EXPECT_EQ(r[0].shape(), (Shape{}));
  EXPECT_EQ(values(r[1])[0], 0.0);
}

TEST_F(Sort, Gradients) {
  gradcheck([](const std::vector<Tensor>& in) { return ops::sort(in[0], 1, false)[0]; },
            {random({3, 6, 2})});
  gradcheck([](const std::vector<Tensor>& in) { return ops::sort(in[0], 0, true)[0]; },
            {random({5, 3})});
}

TEST_F(Sort, SixteenBitFloats) {
  for (DType dt : {DType::BFloat16, DType::Float16}) {
    Tensor x = random({3, 17}, dt);  // 16-bit rounding makes some ties
    check_sort(x, 1, false);
    check_sort(x, 0, true);
    EXPECT_EQ(ops::sort(x, 1, false)[0].dtype(), dt);
  }
}

TEST_F(Sort, Errors) {
  EXPECT_THROW(ops::sort(random({3, 4}), 2, false), IndexError);
  EXPECT_THROW(ops::argsort(random({3, 4}), -3, false), IndexError);
}

}  // namespace ls::test
