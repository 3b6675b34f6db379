#include <cmath>

#include "test_util.h"

namespace ls::test {

class Rope : public Guarded {};

// Reference rotation of x (L, T, NH, HS) with tables (T, HS/2), pair by pair.
std::vector<double> naive_rope(const std::vector<double>& x, const std::vector<double>& c,
                               const std::vector<double>& s, int64_t L, int64_t T, int64_t NH,
                               int64_t HS, bool interleaved) {
  std::vector<double> out(x.size());
  int64_t half = HS / 2;
  for (int64_t l = 0; l < L; ++l)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t h = 0; h < NH; ++h) {
        int64_t base = ((l * T + t) * NH + h) * HS;
        for (int64_t i = 0; i < half; ++i) {
          int64_t ia = interleaved ? 2 * i : i, ib = interleaved ? 2 * i + 1 : i + half;
          double a = x[base + ia], b = x[base + ib], cc = c[t * half + i], ss = s[t * half + i];
          out[base + ia] = a * cc - b * ss;
          out[base + ib] = a * ss + b * cc;
        }
      }
  return out;
}

// Standard tables: angle t * theta^(-2i/HS).
std::pair<Tensor, Tensor> tables(int64_t T, int64_t HS, DType dt) {
  std::vector<double> c, s;
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < HS / 2; ++i) {
      double ang = double(t) * std::pow(10000.0, -2.0 * double(i) / double(HS));
      c.push_back(std::cos(ang));
      s.push_back(std::sin(ang));
    }
  return {make(c, {T, HS / 2}, dt), make(s, {T, HS / 2}, dt)};
}

TEST_F(Rope, ForwardBothLayoutsOddShapes) {
  for (DType dt : {DType::Float32, DType::Float64})
    for (bool inter : {false, true})
      for (auto [B, T, NH, HS] : std::vector<std::array<int64_t, 4>>{{1, 1, 1, 2}, {2, 5, 3, 6}, {3, 17, 2, 10}}) {
        Tensor x = random({B, T, NH, HS}, dt);
        auto [c, s] = tables(T, HS, dt);
        auto ref = naive_rope(values(x), values(c), values(s), B, T, NH, HS, inter);
        expect_close(values(ops::rope(x, c, s, inter)), ref, dt == DType::Float32 ? 1e-6 : 1e-14);
      }
}

TEST_F(Rope, AnyLeadingDims) {
  auto [c, s] = tables(4, 8, DType::Float64);
  Tensor x3 = random({4, 3, 8});
  expect_close(values(ops::rope(x3, c, s)), naive_rope(values(x3), values(c), values(s), 1, 4, 3, 8, false), 1e-14);
  Tensor x5 = random({2, 3, 4, 2, 8});
  expect_close(values(ops::rope(x5, c, s, true)), naive_rope(values(x5), values(c), values(s), 6, 4, 2, 8, true), 1e-14);
}

TEST_F(Rope, NonContiguousInput) {
  // x as a (B, T, NH, HS) view of a (B, NH, T, HS) tensor, as after a head split.
  Tensor base = random({2, 3, 5, 4});
  Tensor x = ops::transpose(base, 1, 2);
  auto [c, s] = tables(5, 4, DType::Float64);
  expect_close(values(ops::rope(x, c, s)), naive_rope(values(x), values(c), values(s), 2, 5, 3, 4, false), 1e-14);
}

TEST_F(Rope, InverseUndoesRotation) {
  Tensor x = random({2, 6, 3, 8});
  auto [c, s] = tables(6, 8, DType::Float64);
  Tensor y = ops::rope(x, c, s);
  Tensor back = call1("rope", {y, c, s}, {{"interleaved", false}, {"inverse", true}});
  expect_close(values(back), values(x), 1e-13);
}

TEST_F(Rope, Gradients) {
  for (bool inter : {false, true}) {
    // x, cos and sin all get gradients; random tables so cos and sin are independent inputs.
    gradcheck([inter](const std::vector<Tensor>& in) { return ops::rope(in[0], in[1], in[2], inter); },
              {random({2, 3, 2, 6}), random({3, 3}), random({3, 3})});
  }
  // Gradient of the inverse rotation (the backward of the backward).
  gradcheck([](const std::vector<Tensor>& in) {
    return call1("rope", {in[0], in[1], in[2]}, {{"interleaved", true}, {"inverse", true}});
  }, {random({3, 2, 4}), random({3, 2}), random({3, 2})});
}

TEST_F(Rope, Empty) {
  auto [c, s] = tables(0, 4, DType::Float64);
  EXPECT_EQ(ops::rope(random({2, 0, 3, 4}), c, s).shape(), (Shape{2, 0, 3, 4}));
  auto [c3, s3] = tables(3, 4, DType::Float64);
  EXPECT_EQ(ops::rope(random({0, 3, 3, 4}), c3, s3).shape(), (Shape{0, 3, 3, 4}));
}

TEST_F(Rope, Errors) {
  auto [c, s] = tables(4, 6, DType::Float64);
  EXPECT_THROW(ops::rope(random({1, 4, 2, 5}), c, s), ValueError);     // odd HS
  EXPECT_THROW(ops::rope(random({1, 5, 2, 6}), c, s), ValueError);     // T mismatch
  EXPECT_THROW(ops::rope(random({4, 6}), c, s), ValueError);           // too few dims
  EXPECT_THROW(ops::rope(random({1, 4, 2, 6}, DType::Float32), c, s), TypeError);
  EXPECT_THROW(call1("rope", {random({1, 4, 2, 8}), c, s}), ValueError);  // HS/2 mismatch
  try {
    ops::rope(random({1, 4, 2, 5}), c, s);
  } catch (const ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("rope"), std::string::npos);
  }
}

}  // namespace ls::test
