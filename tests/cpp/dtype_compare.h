// Checks the float32 kernels, forward and backward, against the same op in float64: gradcheck
// covers float64 only, and float32 takes different code (the vectorised exp of cpu_math.h).
#pragma once
#include "test_util.h"

namespace ls::test {

// Runs f on `inputs` (float64; undefined entries and integer tensors pass through unchanged) and
// on their float32 casts, with the same random output weighting, and compares outputs and the
// gradients of every floating input with relative tolerance tol.
inline void expect_float32_matches_float64(
    const std::function<Tensor(const std::vector<Tensor>&)>& f, const std::vector<Tensor>& inputs,
    double tol = 1e-5) {
  std::vector<Tensor> in64, in32;
  for (auto& t : inputs) {
    bool fl = t.defined() && is_floating(t.dtype());
    in64.push_back(fl ? ops::contiguous_copy(t) : t);
    in32.push_back(fl ? ops::to_dtype(t, DType::Float32) : t);
    if (fl) {
      in64.back().set_requires_grad(true);
      in32.back().set_requires_grad(true);
    }
  }
  Tensor out64 = f(in64), out32 = f(in32);
  ASSERT_EQ(out32.dtype(), DType::Float32);
  expect_close(values(out32), values(out64), tol);
  Tensor w = random(out64.shape());
  run_backward({ops::sum(ops::mul(out64, w))}, {});
  run_backward({ops::sum(ops::mul(out32, ops::to_dtype(w, DType::Float32)))}, {});
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (!in64[i].defined() || !in64[i].requires_grad()) continue;
    ASSERT_TRUE(in32[i].grad().defined()) << "no float32 gradient for input " << i;
    expect_close(values(in32[i].grad()), values(in64[i].grad()), tol);
  }
}

// Expects `fn` to throw Err with a message that contains `needle` (the op name, a value).
template <typename Err, typename Fn>
void expect_error(Fn&& fn, const std::string& needle) {
  try {
    fn();
    ADD_FAILURE() << "expected an exception mentioning '" << needle << "'";
  } catch (const Err& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos)
        << "message '" << e.what() << "' does not mention '" << needle << "'";
  }
}

}  // namespace ls::test
