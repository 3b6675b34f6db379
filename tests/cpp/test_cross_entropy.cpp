#include "dtype_compare.h"

namespace ls::test {

class CrossEntropy : public Guarded {};

// Naive reference in double: per-row loss through an explicit log-softmax.
std::vector<double> naive_row_losses(const std::vector<double>& x, const std::vector<double>& t,
                                     int64_t V, int64_t ignore, double eps) {
  std::vector<double> loss;
  for (size_t n = 0; n < t.size(); ++n) {
    double m = -INFINITY, s = 0;
    for (int64_t v = 0; v < V; ++v) m = std::max(m, x[n * V + v]);
    for (int64_t v = 0; v < V; ++v) s += std::exp(x[n * V + v] - m);
    double lse = m + std::log(s);
    if (int64_t(t[n]) == ignore) {
      loss.push_back(0);
      continue;
    }
    double smooth = 0;
    for (int64_t v = 0; v < V; ++v) smooth += (lse - x[n * V + v]) / V;
    loss.push_back((1 - eps) * (lse - x[n * V + int64_t(t[n])]) + eps * smooth);
  }
  return loss;
}

Tensor targets_of(const std::vector<double>& t, DType dt = DType::Int64) {
  return make(t, {int64_t(t.size())}, dt);
}

TEST_F(CrossEntropy, ForwardMatchesNaive) {
  for (auto [N, V] : std::vector<std::pair<int64_t, int64_t>>{{1, 1}, {3, 5}, {7, 127}, {300, 33}})
    for (DType dt : {DType::Float32, DType::Float64})
      for (DType tdt : {DType::Int32, DType::Int64})
        for (double eps : {0.0, 0.1})
          for (std::string red : {"mean", "sum", "none"}) {
            Tensor x = ops::mul_scalar(random({N, V}, dt), 2.0);
            std::vector<double> t;
            for (int64_t n = 0; n < N; ++n) t.push_back(n % 4 == 1 ? -100 : double((n * 7) % V));
            auto rows = naive_row_losses(values(x), t, V, -100, eps);
            std::vector<double> ref = rows;
            if (red != "none") {
              double s = 0, count = 0;
              for (size_t n = 0; n < rows.size(); ++n) s += rows[n], count += t[n] != -100;
              ref = {red == "sum" ? s : s / count};
            }
            Tensor loss = ops::cross_entropy(x, targets_of(t, tdt), -100, red, eps);
            EXPECT_EQ(loss.shape(), red == "none" ? Shape{N} : Shape{});
            expect_close(values(loss), ref, dt == DType::Float32 ? 1e-5 : 1e-12);
          }
}

TEST_F(CrossEntropy, LseOutput) {
  Tensor x = random({4, 9});
  Tensors out = call("cross_entropy", {x, targets_of({0, 1, 2, 3})});
  auto vx = values(x), lse = values(out[1]);
  for (int64_t n = 0; n < 4; ++n) {
    double s = 0;
    for (int64_t v = 0; v < 9; ++v) s += std::exp(vx[n * 9 + v]);
    EXPECT_NEAR(lse[n], std::log(s), 1e-12);
  }
}

TEST_F(CrossEntropy, AllIgnoredMeanIsNaN) {
  Tensor x = random({3, 4});
  x.set_requires_grad(true);
  Tensor loss = ops::cross_entropy(x, targets_of({-100, -100, -100}));
  EXPECT_TRUE(std::isnan(values(loss)[0]));
  EXPECT_EQ(values(ops::cross_entropy(x, targets_of({-100, -100, -100}), -100, "sum"))[0], 0.0);
  run_backward({loss}, {});
  for (double g : values(x.grad())) EXPECT_EQ(g, 0.0);  // no row contributes
}

TEST_F(CrossEntropy, CustomIgnoreIndex) {
  Tensor x = random({3, 4});
  auto a = values(ops::cross_entropy(x, targets_of({1, 3, 2}), 3, "none"));
  EXPECT_EQ(a[1], 0.0);
  EXPECT_NE(a[0], 0.0);
}

TEST_F(CrossEntropy, EmptyBatch) {
  Tensor x = Tensor::empty({0, 5}, DType::Float32);
  Tensor t = Tensor::empty({0}, DType::Int64);
  EXPECT_TRUE(std::isnan(values(ops::cross_entropy(x, t))[0]));
  EXPECT_EQ(values(ops::cross_entropy(x, t, -100, "sum"))[0], 0.0);
  EXPECT_EQ(ops::cross_entropy(x, t, -100, "none").shape(), (Shape{0}));
}

TEST_F(CrossEntropy, Gradients) {
  for (std::string red : {"mean", "sum", "none"})
    for (double eps : {0.0, 0.2}) {
      auto f = [red, eps](const std::vector<Tensor>& in) {
        return ops::cross_entropy(in[0], in[1], -100, red, eps);
      };
      gradcheck(f, {random({5, 7}), targets_of({0, 6, -100, 3, 3})});
      expect_float32_matches_float64(f, {random({40, 301}), targets_of(std::vector<double>(40, 7.0))}, 1e-5);
    }
  // The lse output is differentiable too (d lse / d logits = softmax), as a z-loss needs.
  gradcheck([](const std::vector<Tensor>& in) { return call("cross_entropy", {in[0], in[1]})[1]; },
            {random({3, 6}), targets_of({1, -100, 5})});
  gradcheck([](const std::vector<Tensor>& in) {
              Tensors o = call("cross_entropy", {in[0], in[1]});
              return ops::add(o[0], ops::sum(ops::mul(o[1], o[1])));
            }, {random({3, 6}), targets_of({1, 2, 5})});
}

TEST_F(CrossEntropy, NonContiguousLogits) {
  Tensor xt = ops::transpose(random({6, 4}), 0, 1);  // (4, 6)
  Tensor t = targets_of({0, 5, 2, 1});
  expect_close(values(ops::cross_entropy(xt, t, -100, "none")),
               values(ops::cross_entropy(ops::contiguous_copy(xt), t, -100, "none")), 1e-15);
}

TEST_F(CrossEntropy, Errors) {
  expect_error<IndexError>([] { ops::cross_entropy(random({2, 5}), targets_of({1, 5})); },
                           "cross_entropy: target 5 at position 1 is out of range for 5 classes");
  expect_error<IndexError>([] { ops::cross_entropy(random({2, 5}), targets_of({-1, 0}, DType::Int32)); },
                           "target -1");
  expect_error<ValueError>([] { ops::cross_entropy(random({2, 5}), targets_of({1, 2, 3})); },
                           "cross_entropy: expected logits (N, V) and targets (N,), got (2, 5) and (3,)");
  expect_error<ValueError>([] { ops::cross_entropy(random({2, 3, 5}), targets_of({1, 2})); }, "cross_entropy");
  expect_error<TypeError>([] { ops::cross_entropy(random({2, 5}), random({2})); }, "cross_entropy: targets");
  expect_error<TypeError>([] { ops::cross_entropy(targets_of({1, 2}), targets_of({1, 2})); }, "cross_entropy");
  expect_error<ValueError>([] { ops::cross_entropy(random({2, 5}), targets_of({1, 2}), -100, "avg"); },
                           "reduction");
  expect_error<ValueError>([] { ops::cross_entropy(random({2, 5}), targets_of({1, 2}), -100, "mean", 1.5); },
                           "label_smoothing");
  expect_error<ValueError>([] { ops::cross_entropy(Tensor::empty({2, 0}, DType::Float64), targets_of({1, 2})); },
                           "no classes");
  expect_error<ValueError>([] { call("cross_entropy", {random({2, 5})}); }, "cross_entropy");
}

}  // namespace ls::test
