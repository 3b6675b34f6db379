#include "dtype_compare.h"

namespace ls::test {

class LayerNorm : public Guarded {};

struct NaiveLN {
  std::vector<double> y, mean, rstd;
};

// Naive reference in double over rows of C; w, b empty = absent.
NaiveLN naive_layer_norm(const std::vector<double>& x, int64_t C, const std::vector<double>& w,
                         const std::vector<double>& b, double eps) {
  NaiveLN r;
  int64_t R = int64_t(x.size()) / C;
  r.y.resize(x.size());
  for (int64_t i = 0; i < R; ++i) {
    double m = 0, v = 0;
    for (int64_t c = 0; c < C; ++c) m += x[i * C + c];
    m /= C;
    for (int64_t c = 0; c < C; ++c) v += (x[i * C + c] - m) * (x[i * C + c] - m);
    double rs = 1 / std::sqrt(v / C + eps);
    for (int64_t c = 0; c < C; ++c)
      r.y[i * C + c] = (x[i * C + c] - m) * rs * (w.empty() ? 1 : w[c]) + (b.empty() ? 0 : b[c]);
    r.mean.push_back(m);
    r.rstd.push_back(rs);
  }
  return r;
}

TEST_F(LayerNorm, ForwardMatchesNaive) {
  for (Shape shape : {Shape{1, 1}, Shape{3, 5}, Shape{2, 3, 127}, Shape{300, 48}, Shape{7}}) {
    int64_t C = shape.back();
    for (DType dt : {DType::Float32, DType::Float64})
      for (int variant = 0; variant < 4; ++variant) {
        bool hw = variant & 1, hb = variant & 2;
        Tensor x = ops::add_scalar(random(shape, dt), 2.0);  // a mean far from 0
        Tensor w = hw ? random({C}, dt) : Tensor(), b = hb ? random({C}, dt) : Tensor();
        Tensors out = call("layer_norm", {x, w, b}, {{"eps", 1e-5}});
        auto ref = naive_layer_norm(values(x), C, hw ? values(w) : std::vector<double>{},
                                    hb ? values(b) : std::vector<double>{}, 1e-5);
        double tol = dt == DType::Float32 ? 2e-5 : 1e-12;
        expect_close(values(out[0]), ref.y, tol);
        expect_close(values(out[1]), ref.mean, tol);
        expect_close(values(out[2]), ref.rstd, tol);
        EXPECT_EQ(out[1].shape(), Shape(shape.begin(), shape.end() - 1));
        expect_close(values(ops::layer_norm(x, w, b, 1e-5)), ref.y, tol);
      }
  }
}

TEST_F(LayerNorm, ConstantRowIsFinite) {
  // var = 0: rstd = 1/sqrt(eps), y = b.
  Tensor x = make({3, 3, 3, 3}, {1, 4}, DType::Float32);
  Tensor b = make({1, 2, 3, 4}, {4}, DType::Float32);
  expect_close(values(ops::layer_norm(x, Tensor(), b, 1e-5)), {1, 2, 3, 4}, 0);
}

TEST_F(LayerNorm, NonContiguousInput) {
  Tensor base = random({8, 5});
  Tensor xt = ops::transpose(base, 0, 1);
  Tensor w = random({8});
  expect_close(values(ops::layer_norm(xt, w, Tensor(), 1e-5)),
               values(ops::layer_norm(ops::contiguous_copy(xt), w, Tensor(), 1e-5)), 1e-15);
}

TEST_F(LayerNorm, EmptyInputs) {
  EXPECT_EQ(ops::layer_norm(Tensor::empty({0, 8}, DType::Float32), Tensor(), Tensor(), 1e-5).shape(),
            (Shape{0, 8}));
  EXPECT_EQ(ops::layer_norm(Tensor::empty({3, 0}, DType::Float32), Tensor(), Tensor(), 1e-5).shape(),
            (Shape{3, 0}));
  // Backward over zero rows still writes zero parameter gradients.
  Tensor x = Tensor::empty({0, 4}, DType::Float64), w = random({4}), b = random({4});
  w.set_requires_grad(true);
  b.set_requires_grad(true);
  x.set_requires_grad(true);
  run_backward({ops::sum(ops::layer_norm(x, w, b, 1e-5))}, {});
  expect_close(values(w.grad()), {0, 0, 0, 0}, 0);
  expect_close(values(b.grad()), {0, 0, 0, 0}, 0);
}

TEST_F(LayerNorm, Gradients) {
  auto f = [](const std::vector<Tensor>& in) { return ops::layer_norm(in[0], in[1], in[2], 1e-5); };
  gradcheck(f, {random({3, 7}), random({7}), random({7})});
  gradcheck(f, {random({2, 2, 5}), random({5}), Tensor()});
  gradcheck(f, {random({4, 6}), Tensor(), random({6})});
  gradcheck(f, {random({4, 6}), Tensor(), Tensor()});
  gradcheck(f, {random({1, 1}), random({1}), random({1})});
}

TEST_F(LayerNorm, ParameterGradientsOverManyRows) {
  // Enough rows to be split over threads and to flush the float partials several times.
  auto f = [](const std::vector<Tensor>& in) { return ops::layer_norm(in[0], in[1], in[2], 1e-5); };
  expect_float32_matches_float64(f, {random({333, 37}), random({37}), random({37})}, 1e-4);
  // Only some parameters need gradients: the others come back undefined.
  Tensor x = random({5, 3}), w = random({3}), b = random({3});
  w.set_requires_grad(true);
  run_backward({ops::sum(ops::layer_norm(x, w, b, 1e-5))}, {});
  EXPECT_TRUE(w.grad().defined());
  EXPECT_FALSE(b.grad().defined());
  EXPECT_FALSE(x.grad().defined());
}

TEST_F(LayerNorm, OptionalInputsLeftOutOfTheCall) {
  // call() with {x} or {x, w} (no trailing Nones) works forward and backward.
  gradcheck([](const std::vector<Tensor>& in) { return call("layer_norm", {in[0]}, {{"eps", 1e-5}})[0]; },
            {random({3, 5})});
  gradcheck([](const std::vector<Tensor>& in) { return call("layer_norm", {in[0], in[1]}, {{"eps", 1e-5}})[0]; },
            {random({3, 5}), random({5})});
}

TEST_F(LayerNorm, Errors) {
  expect_error<ValueError>([] { ops::layer_norm(random({2, 3}), random({4}), Tensor(), 1e-5); },
                           "layer_norm: weight of shape (4,)");
  expect_error<ValueError>([] { ops::layer_norm(random({2, 3}), Tensor(), random({3, 1}), 1e-5); },
                           "layer_norm: bias");
  expect_error<TypeError>([] { ops::layer_norm(random({2, 3}), random({3}, DType::Float32), Tensor(), 1e-5); },
                          "layer_norm");
  expect_error<TypeError>([] { ops::layer_norm(make({1, 2}, {2}, DType::Int32), Tensor(), Tensor(), 1e-5); },
                          "layer_norm");
  expect_error<ValueError>([] { ops::layer_norm(make({1}, {}), Tensor(), Tensor(), 1e-5); }, "layer_norm");
  expect_error<ValueError>([] { ops::layer_norm(random({2, 3}), Tensor(), Tensor(), -1.0); }, "eps");
  // Reached through call() directly, the kernel checks too.
  expect_error<ValueError>([] { call("layer_norm", {random({2, 3}), random({5})}, {{"eps", 1e-5}}); },
                           "layer_norm");
  expect_error<ValueError>([] { call("layer_norm_backward", {random({2, 3}), random({2, 3})}); },
                           "layer_norm_backward");
}

}  // namespace ls::test
