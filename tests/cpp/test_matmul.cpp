#include "test_util.h"

namespace ls::test {

class Matmul : public Guarded {};

// Naive triple loop in double as the reference.
std::vector<double> naive(const std::vector<double>& a, const std::vector<double>& b, int64_t M,
                          int64_t K, int64_t N) {
  std::vector<double> c(M * N, 0.0);
  for (int64_t i = 0; i < M; ++i)
    for (int64_t k = 0; k < K; ++k)
      for (int64_t j = 0; j < N; ++j) c[i * N + j] += a[i * K + k] * b[k * N + j];
  return c;
}

TEST_F(Matmul, OddShapesFloat32AndFloat64) {
  for (auto [M, K, N] : std::vector<std::array<int64_t, 3>>{{1, 1, 1}, {3, 5, 7}, {127, 33, 65}, {200, 300, 17}}) {
    for (DType dt : {DType::Float32, DType::Float64}) {
      Tensor a = random({M, K}, dt), b = random({K, N}, dt);
      auto ref = naive(values(a), values(b), M, K, N);
      expect_close(values(ops::matmul(a, b)), ref, dt == DType::Float32 ? 1e-4 : 1e-12);
    }
  }
}

TEST_F(Matmul, TransposedOperandsNeedNoCopy) {
  Tensor at = random({40, 30}), bt = random({50, 40});  // a = at^T (30x40), b = bt^T (40x50)
  Tensor a = ops::transpose(at, 0, 1), b = ops::transpose(bt, 0, 1);
  auto ref = naive(values(a), values(b), 30, 40, 50);
  expect_close(values(ops::matmul(a, b)), ref, 1e-12);
}

TEST_F(Matmul, BroadcastBatch) {
  Tensor a = random({2, 3, 4, 5}), b = random({3, 5, 6});
  Tensor c = ops::matmul(a, b);
  EXPECT_EQ(c.shape(), (Shape{2, 3, 4, 6}));
  auto va = values(a), vb = values(b), vc = values(c);
  for (int64_t i = 0; i < 2; ++i)
    for (int64_t j = 0; j < 3; ++j) {
      std::vector<double> sa(va.begin() + (i * 3 + j) * 20, va.begin() + (i * 3 + j + 1) * 20);
      std::vector<double> sb(vb.begin() + j * 30, vb.begin() + (j + 1) * 30);
      std::vector<double> sc(vc.begin() + (i * 3 + j) * 24, vc.begin() + (i * 3 + j + 1) * 24);
      expect_close(sc, naive(sa, sb, 4, 5, 6), 1e-12);
    }
}

TEST_F(Matmul, Gradients) {
  gradcheck([](const std::vector<Tensor>& in) { return ops::matmul(in[0], in[1]); },
            {random({2, 3, 4}), random({4, 5})});
  gradcheck([](const std::vector<Tensor>& in) { return ops::matmul(in[0], in[1]); },
            {random({3}), random({2, 3, 4})});
}

TEST_F(Matmul, ShapeMismatchThrows) {
  EXPECT_THROW(ops::matmul(random({2, 3}), random({4, 5})), ValueError);
}

}  // namespace ls::test
