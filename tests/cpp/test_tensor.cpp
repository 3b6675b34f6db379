// Tensor metadata, views and strides, broadcasting, dtype conversions, the registry and the
// autograd tape.
#include "core/philox.h"
#include "test_util.h"

namespace ls::test {

class TensorCore : public Guarded {};

TEST_F(TensorCore, ContiguousStridesAndViews) {
  Tensor t = make({0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}, {3, 4});
  EXPECT_EQ(t.strides(), (Shape{4, 1}));
  EXPECT_TRUE(t.is_contiguous());
  Tensor tt = ops::transpose(t, 0, 1);
  EXPECT_EQ(tt.shape(), (Shape{4, 3}));
  EXPECT_EQ(tt.strides(), (Shape{1, 4}));
  EXPECT_FALSE(tt.is_contiguous());
  EXPECT_EQ(tt.raw_data(), t.raw_data());
  EXPECT_EQ(values(tt), (std::vector<double>{0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11}));
  Tensor s = ops::slice(t, 1, 1, 4, 2);  // columns 1 and 3
  EXPECT_EQ(s.offset(), 1);
  EXPECT_EQ(s.strides(), (Shape{4, 2}));
  EXPECT_EQ(values(s), (std::vector<double>{1, 3, 5, 7, 9, 11}));
  Tensor row = ops::select(t, 0, -1);
  EXPECT_EQ(values(row), (std::vector<double>{8, 9, 10, 11}));
  EXPECT_EQ(ops::unsqueeze(t, 1).shape(), (Shape{3, 1, 4}));
  EXPECT_EQ(ops::squeeze(ops::unsqueeze(t, 0)).shape(), (Shape{3, 4}));
}

TEST_F(TensorCore, ReshapeViewsWhenPossibleAndCopiesOtherwise) {
  Tensor t = random({2, 3, 4});
  Tensor v = ops::view(t, {6, -1});
  EXPECT_EQ(v.shape(), (Shape{6, 4}));
  EXPECT_EQ(v.raw_data(), t.raw_data());
  Tensor p = ops::permute(t, {0, 2, 1});
  EXPECT_THROW(ops::view(p, {-1}), ValueError);
  Tensor r = ops::reshape(p, {-1});
  EXPECT_NE(r.raw_data(), t.raw_data());
  EXPECT_EQ(values(r), values(ops::contiguous(p)));
  EXPECT_THROW(ops::view(t, {5, -1}), ValueError);
  // A split of a dimension on a strided view still views: (4, 6)[:, ::2] -> (4, 3) -> (2, 2, 3).
  Tensor w = ops::slice(random({4, 6}), 1, 0, 6, 2);
  Tensor wv = ops::view(w, {2, 2, 3});
  EXPECT_EQ(wv.strides(), (Shape{12, 6, 2}));
}

TEST_F(TensorCore, BroadcastShapesFollowNumpy) {
  EXPECT_EQ(broadcast_shapes({3, 1, 5}, {4, 1}, "t"), (Shape{3, 4, 5}));
  EXPECT_EQ(broadcast_shapes({}, {2, 2}, "t"), (Shape{2, 2}));
  EXPECT_THROW(broadcast_shapes({3}, {4}, "t"), ValueError);
  Tensor e = ops::expand(make({1, 2}, {2, 1}), {3, 2, 4});
  EXPECT_EQ(e.strides(), (Shape{0, 1, 0}));
  EXPECT_EQ(values(ops::sum(e)), (std::vector<double>{3 * 4 * 3}));
}

TEST_F(TensorCore, ElementwiseMatchesNaiveWithBroadcasting) {
  Tensor a = random({3, 1, 5}), b = random({4, 1});
  auto va = values(a), vb = values(b);
  Tensor c = ops::mul(ops::add(a, b), ops::sub(a, b));
  auto vc = values(c);
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 4; ++j)
      for (int k = 0; k < 5; ++k) {
        double x = va[i * 5 + k], y = vb[j];
        EXPECT_NEAR(vc[(i * 4 + j) * 5 + k], (x + y) * (x - y), 1e-12);
      }
}

TEST_F(TensorCore, ElementwiseGradients) {
  auto bin = [](const char* op) {
    return [op](const std::vector<Tensor>& in) { return call1(op, {in[0], in[1]}); };
  };
  for (const char* op : {"add", "sub", "mul", "div", "maximum", "minimum"})
    gradcheck(bin(op), {random({3, 1, 4}), ops::add_scalar(random({2, 1}), 3.0)});
  gradcheck([](const std::vector<Tensor>& in) { return ops::pow(in[0], in[1]); },
            {ops::add_scalar(ops::unary("abs", random({5})), 0.5), random({5})});
  for (const char* op : {"exp", "tanh", "sigmoid", "sin", "cos", "neg"})
    gradcheck([op](const std::vector<Tensor>& in) { return ops::unary(op, in[0]); }, {random({2, 7})});
  for (const char* op : {"log", "sqrt", "rsqrt"})
    gradcheck([op](const std::vector<Tensor>& in) { return ops::unary(op, in[0]); },
              {ops::add_scalar(ops::unary("abs", random({9})), 0.5)});
}

TEST_F(TensorCore, ReductionsAndTheirGradients) {
  Tensor t = make({1, 5, 3, 2, 4, 6}, {2, 3});
  EXPECT_EQ(values(ops::sum(t, {1})), (std::vector<double>{9, 12}));
  EXPECT_EQ(values(ops::sum(t, {0}, true)), (std::vector<double>{3, 9, 9}));
  EXPECT_EQ(values(ops::mean(t)), (std::vector<double>{3.5}));
  auto mx = ops::max(t, 1);
  EXPECT_EQ(values(mx[0]), (std::vector<double>{5, 6}));
  EXPECT_EQ(values(mx[1]), (std::vector<double>{1, 2}));
  gradcheck([](const std::vector<Tensor>& in) { return ops::sum(in[0], {0, 2}); }, {random({3, 4, 5})});
  gradcheck([](const std::vector<Tensor>& in) { return ops::var(in[0], {1}, 1, true); }, {random({3, 6})});
  gradcheck([](const std::vector<Tensor>& in) { return ops::max(in[0], 0)[0]; }, {random({4, 3})});
}

TEST_F(TensorCore, CastsRoundLikeIeee) {
  Tensor t = make({1.0, 1.00390625, 65504.0, 1e-8, -2.5}, {5}, DType::Float32);
  EXPECT_EQ(values(ops::to_dtype(t, DType::BFloat16)), (std::vector<double>{1.0, 1.0, 65536.0, 1.0011717677116394e-08, -2.5}));  // as torch rounds
  EXPECT_EQ(values(ops::to_dtype(t, DType::Float16)), (std::vector<double>{1.0, 1.00390625, 65504.0, 0.0, -2.5}));
  EXPECT_EQ(values(ops::to_dtype(make({2.7, -2.7}, {2}), DType::Int64)), (std::vector<double>{2, -2}));
}

TEST_F(TensorCore, RegistryFallbackAndErrors) {
  EXPECT_TRUE(has_op("matmul"));
  EXPECT_FALSE(has_op("no_such_op"));
  EXPECT_THROW(call("no_such_op", {random({1})}), NotImplementedError);
  try {
    ops::unary("exp", ops::to_dtype(random({2}), DType::BFloat16));
    FAIL() << "expected an error";
  } catch (const NotImplementedError& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("'exp'"), std::string::npos) << msg;
    EXPECT_NE(msg.find("bfloat16"), std::string::npos) << msg;
    EXPECT_NE(msg.find("cpu"), std::string::npos) << msg;
  }
  // A chosen backend without an implementation falls back to the device's native one.
  {
    BackendGuard g("triton");
    EXPECT_EQ(values(ops::add(make({1}, {1}), make({2}, {1}))), (std::vector<double>{3}));
  }
  EXPECT_EQ(backend_report(true)["add"], "cpu");
  EXPECT_THROW(set_backend("tpu"), ValueError);
}

TEST_F(TensorCore, TapeAccumulatesAndHandlesDiamonds) {
  Tensor x = random({4});
  x.set_requires_grad(true);
  Tensor h = ops::unary("tanh", x);
  Tensor y = ops::sum(ops::add(ops::mul(h, h), ops::unary("exp", h)));  // h used twice
  run_backward({y}, {});
  auto vx = values(x), g = values(x.grad());
  for (size_t i = 0; i < vx.size(); ++i) {
    double th = std::tanh(vx[i]);
    EXPECT_NEAR(g[i], (2 * th + std::exp(th)) * (1 - th * th), 1e-12);
  }
  run_backward({ops::sum(x)}, {});  // accumulates
  auto g2 = values(x.grad());
  for (size_t i = 0; i < vx.size(); ++i) EXPECT_NEAR(g2[i], g[i] + 1, 1e-12);
}

// An op whose backward returns a gradient of its input's shape summed away: the tape names it.
TEST_F(TensorCore, TapeRefusesABackwardsGradientOfAnotherShape) {
  declare_op("test_wrong_backward", {[](const BackwardCtx&, const Tensors& g) {
                                       return Tensors{ops::sum(g[0])};
                                     }, false});
  register_kernel("test_wrong_backward", "cpu",
                  [](const Tensors& in, const Attrs&) { return Tensors{ops::contiguous_copy(in[0])}; });
  Tensor x = random({2, 3});
  x.set_requires_grad(true);
  Tensor y = call("test_wrong_backward", {x})[0];
  try {
    run_backward({ops::sum(y)}, {});
    FAIL() << "expected an error";
  } catch (const RuntimeError& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("backward of 'test_wrong_backward' returned a gradient of shape ()"),
              std::string::npos) << msg;
    EXPECT_NE(msg.find("input 0 of shape (2, 3)"), std::string::npos) << msg;
  }
  EXPECT_FALSE(x.grad().defined());
}

TEST_F(TensorCore, TapeRefusesSavedTensorsWrittenInPlace) {
  Tensor x = random({3}), w = random({3});
  w.set_requires_grad(true);
  Tensor y = ops::sum(ops::mul(x, w));
  ops::fill_(x, 0.0);  // mul saved x: its backward would read the zeros
  EXPECT_THROW(run_backward({y}, {}), RuntimeError);
  Tensor z = ops::sum(ops::mul(x, w));
  run_backward({z}, {});
  EXPECT_EQ(values(w.grad()), (std::vector<double>{0, 0, 0}));
}

TEST_F(TensorCore, NoGradAndDetach) {
  Tensor x = random({3});
  x.set_requires_grad(true);
  {
    NoGradGuard ng;
    EXPECT_FALSE(ops::mul(x, x).requires_grad());
  }
  Tensor d = x.detach();
  EXPECT_FALSE(d.requires_grad());
  EXPECT_EQ(d.raw_data(), x.raw_data());
  EXPECT_THROW(run_backward({ops::sum(d)}, {}), RuntimeError);
  EXPECT_THROW(ops::fill_(x, 1.0), RuntimeError);  // in place on a leaf that requires grad
}

TEST_F(TensorCore, PhiloxMatchesKnownAnswerAndStreamDefinition) {
  Philox4 r = philox4x32_10(0, 0);
  EXPECT_EQ(r.v[0], 0x6627e8d5u);
  EXPECT_EQ(r.v[3], 0x9b00dbd8u);
  manual_seed(42);
  Tensor a = ops::rand({10}, DType::Float64, Device{});
  auto va = values(a);
  for (uint64_t i = 0; i < 10; ++i) {
    // 53 bits of w(i) on top of w'(i); the top 24 are the float32 uniform
    uint64_t w = (uint64_t(philox_bits(42, 0, i)) << 32) | philox4x32_10(i / 4, 42, 1).v[i % 4];
    EXPECT_EQ(va[i], std::ldexp(double(w >> 11), -53));
    EXPECT_EQ(std::ldexp(std::floor(std::ldexp(va[i], 24)), -24), double(philox_uniform_at(42, 0, i)));
  }
  EXPECT_EQ(generator_state().offset, 3u);  // ceil(10 / 4) blocks consumed, whatever the dtype
}

}  // namespace ls::test
