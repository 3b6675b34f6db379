#include "core/philox.h"
#include "test_util.h"

namespace ls::test {

class Dropout : public Guarded {};

TEST_F(Dropout, IdentityWhenOffOrPZero) {
  Tensor x = random({3, 5});
  expect_close(values(ops::dropout(x, 0.0)), values(x), 0);
  expect_close(values(ops::dropout(x, 0.7, /*training=*/false)), values(x), 0);
}

TEST_F(Dropout, POneGivesZeros) {
  for (DType dt : {DType::Float32, DType::Float64}) {
    Tensor x = random({4, 7}, dt);
    expect_close(values(ops::dropout(x, 1.0)), std::vector<double>(28, 0.0), 0);
  }
}

// Element n is kept iff the n-th uniform of the reserved stream is >= p (core/philox.h).
TEST_F(Dropout, MaskFollowsThePhiloxStream) {
  const double p = 0.37;
  Tensor x = random({5, 13, 3}, DType::Float32);
  GeneratorState g = generator_state();
  Tensor y = ops::dropout(x, p);
  auto vx = values(x), vy = values(y);
  for (size_t n = 0; n < vx.size(); ++n) {
    bool keep = double(philox_uniform_at(g.seed, g.offset, n)) >= p;
    EXPECT_EQ(vy[n], keep ? double(float(vx[n]) * float(1.0 / (1.0 - p))) : 0.0) << n;
  }
  // The draw reserved ceil(numel / 4) counters.
  EXPECT_EQ(generator_state().offset, g.offset + (x.numel() + 3) / 4);
}

TEST_F(Dropout, Statistics) {
  for (double p : {0.1, 0.5, 0.9}) {
    const int64_t n = 200000;
    Tensor x = ops::full({n}, 1.0, DType::Float64, Device{});
    auto y = values(ops::dropout(x, p));
    int64_t kept = 0;
    for (double v : y) {
      if (v != 0.0) {
        ++kept;
        EXPECT_NEAR(v, 1.0 / (1.0 - p), 1e-12);
      }
    }
    double frac = double(kept) / double(n);
    // Binomial standard deviation sqrt(p (1-p) / n) < 0.0012; allow 5 sigma.
    EXPECT_NEAR(frac, 1.0 - p, 0.006) << "p = " << p;
  }
}

TEST_F(Dropout, SameSeedSameMaskNextCallDifferent) {
  Tensor x = random({100});
  manual_seed(1234);
  auto a = values(ops::dropout(x, 0.5));
  auto b = values(ops::dropout(x, 0.5));
  manual_seed(1234);
  auto c = values(ops::dropout(x, 0.5));
  EXPECT_EQ(a, c);
  EXPECT_NE(a, b);
}

TEST_F(Dropout, BackwardUsesTheForwardMask) {
  Tensor x = random({6, 11});
  x.set_requires_grad(true);
  Tensor y = ops::dropout(x, 0.4);
  Tensor g = random({6, 11});
  run_backward({y}, {g});
  auto vx = values(x), vy = values(y), vg = values(g), dx = values(x.grad());
  for (size_t i = 0; i < vx.size(); ++i) {
    double m = vy[i] / vx[i];  // mask * scale, recovered from the forward
    EXPECT_NEAR(dx[i], vg[i] * m, 1e-12);
  }
}

TEST_F(Dropout, Gradcheck) {
  // Fixed (seed, offset) so every evaluation uses one mask.
  Attrs a{{"p", 0.3}, {"seed", int64_t(99)}, {"offset", int64_t(5)}};
  gradcheck([&](const std::vector<Tensor>& in) { return call1("dropout", {in[0]}, a); },
            {random({3, 7})});
}

TEST_F(Dropout, NonContiguousAndEmpty) {
  Tensor base = random({5, 4});
  Tensor xt = ops::transpose(base, 0, 1);
  GeneratorState g = generator_state();
  auto y = values(ops::dropout(xt, 0.5));
  auto vx = values(xt);  // row-major order of the (4, 5) view
  for (size_t n = 0; n < vx.size(); ++n)
    EXPECT_EQ(y[n], philox_uniform_at(g.seed, g.offset, n) >= 0.5f ? 2 * vx[n] : 0.0);
  Tensor e = Tensor::empty({0, 3}, DType::Float32);
  EXPECT_EQ(ops::dropout(e, 0.5).shape(), (Shape{0, 3}));
}

TEST_F(Dropout, Errors) {
  Tensor x = random({3});
  EXPECT_THROW(ops::dropout(x, -0.1), ValueError);
  EXPECT_THROW(ops::dropout(x, 1.5), ValueError);
  EXPECT_THROW(ops::dropout(x, std::nan("")), ValueError);
  EXPECT_THROW(call1("dropout", {x}, {{"p", 2.0}, {"seed", int64_t(0)}, {"offset", int64_t(0)}}),
               ValueError);
  EXPECT_THROW(ops::dropout(make({1, 2}, {2}, DType::Int64), 0.5), TypeError);
}

}  // namespace ls::test
