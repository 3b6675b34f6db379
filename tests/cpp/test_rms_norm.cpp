#include "dtype_compare.h"

namespace ls::test {

class RmsNorm : public Guarded {};

// Naive reference in double: y = x / sqrt(mean(x^2) + eps) * w, and rstd per row.
std::pair<std::vector<double>, std::vector<double>> naive_rms_norm(const std::vector<double>& x, int64_t C,
                                                                   const std::vector<double>& w, double eps) {
  std::vector<double> y(x.size()), rstd;
  for (int64_t i = 0; i < int64_t(x.size()) / C; ++i) {
    double ss = 0;
    for (int64_t c = 0; c < C; ++c) ss += x[i * C + c] * x[i * C + c];
    double rs = 1 / std::sqrt(ss / C + eps);
    for (int64_t c = 0; c < C; ++c) y[i * C + c] = x[i * C + c] * rs * (w.empty() ? 1 : w[c]);
    rstd.push_back(rs);
  }
  return {y, rstd};
}

TEST_F(RmsNorm, ForwardMatchesNaive) {
  for (Shape shape : {Shape{1, 1}, Shape{3, 5}, Shape{2, 3, 127}, Shape{300, 48}, Shape{9}}) {
    int64_t C = shape.back();
    for (DType dt : {DType::Float32, DType::Float64})
      for (bool hw : {false, true}) {
        Tensor x = random(shape, dt), w = hw ? random({C}, dt) : Tensor();
        Tensors out = call("rms_norm", {x, w}, {{"eps", 1e-6}});
        auto [y, rstd] = naive_rms_norm(values(x), C, hw ? values(w) : std::vector<double>{}, 1e-6);
        double tol = dt == DType::Float32 ? 2e-5 : 1e-12;
        expect_close(values(out[0]), y, tol);
        expect_close(values(out[1]), rstd, tol);
        EXPECT_EQ(out[1].shape(), Shape(shape.begin(), shape.end() - 1));
        expect_close(values(ops::rms_norm(x, w, 1e-6)), y, tol);
      }
  }
}

TEST_F(RmsNorm, ZeroRowIsFinite) {
  Tensor x = make({0, 0, 0}, {1, 3}, DType::Float32);
  expect_close(values(ops::rms_norm(x, Tensor(), 1e-6)), {0, 0, 0}, 0);
}

TEST_F(RmsNorm, NonContiguousAndEmpty) {
  Tensor xt = ops::transpose(random({6, 4}), 0, 1);
  expect_close(values(ops::rms_norm(xt, Tensor(), 1e-6)),
               values(ops::rms_norm(ops::contiguous_copy(xt), Tensor(), 1e-6)), 1e-15);
  EXPECT_EQ(ops::rms_norm(Tensor::empty({0, 3}, DType::Float32), Tensor(), 1e-6).shape(), (Shape{0, 3}));
  Tensor x = Tensor::empty({0, 3}, DType::Float64), w = random({3});
  w.set_requires_grad(true);
  run_backward({ops::sum(ops::rms_norm(x, w, 1e-6))}, {});
  expect_close(values(w.grad()), {0, 0, 0}, 0);
}

TEST_F(RmsNorm, Gradients) {
  auto f = [](const std::vector<Tensor>& in) { return ops::rms_norm(in[0], in[1], 1e-6); };
  gradcheck(f, {random({3, 7}), random({7})});
  gradcheck(f, {random({2, 2, 5}), Tensor()});
  gradcheck(f, {random({1, 1}), random({1})});
  expect_float32_matches_float64(f, {random({333, 37}), random({37})}, 1e-4);
}

TEST_F(RmsNorm, WeightLeftOutOfTheCall) {
  gradcheck([](const std::vector<Tensor>& in) { return call("rms_norm", {in[0]}, {{"eps", 1e-6}})[0]; },
            {random({3, 5})});
}

TEST_F(RmsNorm, Errors) {
  expect_error<ValueError>([] { ops::rms_norm(random({2, 3}), random({4}), 1e-6); }, "rms_norm: weight of shape (4,)");
  expect_error<TypeError>([] { ops::rms_norm(random({2, 3}), random({3}, DType::Float32), 1e-6); }, "rms_norm");
  expect_error<TypeError>([] { ops::rms_norm(make({1, 2}, {2}, DType::Int64), Tensor(), 1e-6); }, "rms_norm");
  expect_error<ValueError>([] { ops::rms_norm(make({1}, {}), Tensor(), 1e-6); }, "rms_norm");
  expect_error<ValueError>([] { call("rms_norm", {random({2, 3}), random({2})}, {{"eps", 1e-6}}); }, "rms_norm");
  expect_error<ValueError>([] { call("rms_norm_backward", {random({2, 3})}); }, "rms_norm_backward");
}

}  // namespace ls::test
