#include "dtype_compare.h"

namespace ls::test {

class Swiglu : public Guarded {};

TEST_F(Swiglu, ForwardMatchesNaive) {
  for (Shape shape : {Shape{1}, Shape{3, 5}, Shape{2, 3, 127}, Shape{100, 300}})
    for (DType dt : {DType::Float32, DType::Float64}) {
      Tensor a = ops::mul_scalar(random(shape, dt), 3.0), b = random(shape, dt);
      auto va = values(a), vb = values(b);
      std::vector<double> ref;
      for (size_t i = 0; i < va.size(); ++i) ref.push_back(va[i] / (1 + std::exp(-va[i])) * vb[i]);
      expect_close(values(ops::swiglu(a, b)), ref, dt == DType::Float32 ? 1e-6 : 1e-15);
    }
}

TEST_F(Swiglu, Gradients) {
  auto f = [](const std::vector<Tensor>& in) { return ops::swiglu(in[0], in[1]); };
  gradcheck(f, {ops::mul_scalar(random({4, 9}), 3.0), random({4, 9})});
  expect_float32_matches_float64(f, {ops::mul_scalar(random({50, 41}), 3.0), random({50, 41})}, 1e-5);
  // One side only: the other gradient is not computed.
  Tensor a = random({3, 4}), b = random({3, 4});
  b.set_requires_grad(true);
  run_backward({ops::sum(ops::swiglu(a, b))}, {});
  EXPECT_FALSE(a.grad().defined());
  expect_close(values(b.grad()), values(ops::silu(a)), 1e-15);
  Tensor a2 = random({3, 4}), b2 = random({3, 4});
  a2.set_requires_grad(true);
  run_backward({ops::sum(ops::swiglu(a2, b2))}, {});
  EXPECT_TRUE(a2.grad().defined());
}

TEST_F(Swiglu, NonContiguousAndEmpty) {
  Tensor at = ops::transpose(random({5, 4}), 0, 1), b = random({4, 5});
  expect_close(values(ops::swiglu(at, b)), values(ops::swiglu(ops::contiguous_copy(at), b)), 0);
  Tensor e = Tensor::empty({0, 3}, DType::Float32);
  EXPECT_EQ(ops::swiglu(e, e).shape(), (Shape{0, 3}));
}

TEST_F(Swiglu, Errors) {
  expect_error<ValueError>([] { ops::swiglu(random({2, 3}), random({3, 2})); }, "swiglu: shapes (2, 3) and (3, 2)");
  expect_error<TypeError>([] { ops::swiglu(random({2}), random({2}, DType::Float32)); }, "swiglu");
  expect_error<ValueError>([] { call("swiglu", {random({2}), random({3})}); }, "swiglu");
  expect_error<TypeError>([] { call("swiglu", {random({2}), random({2}, DType::Float32)}); }, "swiglu");
  expect_error<ValueError>([] { call("swiglu", {random({2})}); }, "swiglu");
}

}  // namespace ls::test
