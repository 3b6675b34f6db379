#include <cmath>
#include <limits>

#include "core/parallel.h"
#include "test_util.h"

namespace ls::test {

class Attention : public Guarded {};

struct Ref {
  std::vector<double> out, lse;
};

// Direct loops: scores, mask, softmax, weighted sum. mask (if given) is dense (B, NH, T, S);
// kind 0 = none, 1 = bool (nonzero attends), 2 = additive.
Ref naive_attention(const std::vector<double>& q, const std::vector<double>& k,
                    const std::vector<double>& v, int64_t B, int64_t NH, int64_t NKV, int64_t T,
                    int64_t S, int64_t HS, bool causal, double scale,
                    const std::vector<double>& mask = {}, int kind = 0) {
  Ref r{std::vector<double>(B * NH * T * HS, 0.0), std::vector<double>(B * NH * T)};
  const double ninf = -std::numeric_limits<double>::infinity();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < NH; ++h) {
      int64_t kh = h / (NH / NKV);
      for (int64_t t = 0; t < T; ++t) {
        std::vector<double> x(S);
        for (int64_t s = 0; s < S; ++s) {
          double d = 0;
          for (int64_t e = 0; e < HS; ++e)
            d += q[((b * NH + h) * T + t) * HS + e] * k[((b * NKV + kh) * S + s) * HS + e];
          x[s] = d * scale;
          double m = kind ? mask[((b * NH + h) * T + t) * S + s] : 0.0;
          if (kind == 1 && m == 0) x[s] = ninf;
          if (kind == 2) x[s] += m;
          if (causal && s > t + S - T) x[s] = ninf;
        }
        double mx = ninf;
        for (double xi : x) mx = std::max(mx, xi);
        int64_t row = (b * NH + h) * T + t;
        if (mx == ninf) {
          r.lse[row] = ninf;
          continue;
        }
        double sum = 0;
        for (double xi : x) sum += std::exp(xi - mx);
        r.lse[row] = mx + std::log(sum);
        for (int64_t s = 0; s < S; ++s) {
          double p = std::exp(x[s] - r.lse[row]);
          for (int64_t e = 0; e < HS; ++e)
            r.out[row * HS + e] += p * v[((b * NKV + kh) * S + s) * HS + e];
        }
      }
    }
  return r;
}

void check_forward(int64_t B, int64_t NH, int64_t NKV, int64_t T, int64_t S, int64_t HS, bool causal,
                   DType dt) {
  Tensor q = random({B, NH, T, HS}, dt), k = random({B, NKV, S, HS}, dt), v = random({B, NKV, S, HS}, dt);
  Tensors r = ops::attention(q, k, v, Tensor(), causal);
  Ref ref = naive_attention(values(q), values(k), values(v), B, NH, NKV, T, S, HS, causal,
                            1.0 / std::sqrt(double(HS)));
  double tol = dt == DType::Float32 ? 2e-5 : 1e-12;
  EXPECT_EQ(r[0].shape(), (Shape{B, NH, T, HS}));
  EXPECT_EQ(r[1].shape(), (Shape{B, NH, T}));
  expect_close(values(r[0]), ref.out, tol);
  auto lse = values(r[1]);
  for (size_t i = 0; i < lse.size(); ++i) {
    if (std::isinf(ref.lse[i])) EXPECT_EQ(lse[i], ref.lse[i]);
    else EXPECT_NEAR(lse[i], ref.lse[i], tol * (1 + std::abs(ref.lse[i])));
  }
}

TEST_F(Attention, ForwardOddShapes) {
  for (DType dt : {DType::Float32, DType::Float64})
    for (bool causal : {false, true}) {
      check_forward(1, 1, 1, 1, 1, 1, causal, dt);
      check_forward(2, 3, 3, 5, 5, 7, causal, dt);
      check_forward(2, 4, 2, 5, 9, 3, causal, dt);   // GQA, S > T (kv cache)
      check_forward(1, 6, 1, 3, 3, 4, causal, dt);   // multi-query
      check_forward(1, 2, 1, 131, 129, 5, causal, dt);  // several 64-row blocks
    }
}

TEST_F(Attention, CausalWithMoreQueriesThanKeysGivesZeroRows) {
  // T = 5 > S = 3: rows t < T - S see no key; they are 0 with lse -inf, not NaN.
  check_forward(1, 2, 2, 5, 3, 4, true, DType::Float64);
  Tensor q = random({1, 1, 5, 4}), k = random({1, 1, 3, 4}), v = random({1, 1, 3, 4});
  Tensors r = ops::attention(q, k, v, Tensor(), true);
  auto out = values(r[0]), lse = values(r[1]);
  for (int e = 0; e < 8; ++e) EXPECT_EQ(out[e], 0.0);
  EXPECT_EQ(lse[0], -std::numeric_limits<double>::infinity());
  EXPECT_TRUE(std::isfinite(lse[2]));
}

TEST_F(Attention, BoolAndFloatMasksBroadcast) {
  const int64_t B = 2, NH = 4, NKV = 2, T = 5, S = 6, HS = 3;
  Tensor q = random({B, NH, T, HS}), k = random({B, NKV, S, HS}), v = random({B, NKV, S, HS});
  // A (T, S) bool mask broadcast over B and NH, with one fully masked row (t = 2).
  std::vector<double> m2(T * S);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t s = 0; s < S; ++s) m2[t * S + s] = t != 2 && ((t + s) % 3 != 0);
  std::vector<double> dense;
  for (int64_t i = 0; i < B * NH; ++i) dense.insert(dense.end(), m2.begin(), m2.end());
  Tensor mb = make(m2, {T, S}, DType::Bool);
  for (bool causal : {false, true}) {
    Tensors r = ops::attention(q, k, v, mb, causal, 0.7);
    Ref ref = naive_attention(values(q), values(k), values(v), B, NH, NKV, T, S, HS, causal, 0.7, dense, 1);
    expect_close(values(r[0]), ref.out, 1e-12);
  }
  // A float (B, 1, 1, S) additive mask (padding-style), in float32 for float64 inputs.
  std::vector<double> mf(B * S), mfd;
  for (size_t i = 0; i < mf.size(); ++i) mf[i] = double(i % 4) - 1.5;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < NH; ++h)
      for (int64_t t = 0; t < T; ++t) mfd.insert(mfd.end(), mf.begin() + b * S, mf.begin() + (b + 1) * S);
  Tensors r = ops::attention(q, k, v, make(mf, {B, 1, 1, S}, DType::Float32), false);
  Ref ref = naive_attention(values(q), values(k), values(v), B, NH, NKV, T, S, HS, false,
                            1.0 / std::sqrt(3.0), mfd, 2);
  expect_close(values(r[0]), ref.out, 1e-12);
}

TEST_F(Attention, NonContiguousInputs) {
  // q, k, v as (B, NH, T, HS) views of (B, T, NH, HS) projections.
  Tensor qb = random({2, 5, 3, 4}), kb = random({2, 5, 3, 4}), vb = random({2, 5, 3, 4});
  Tensor q = ops::transpose(qb, 1, 2), k = ops::transpose(kb, 1, 2), v = ops::transpose(vb, 1, 2);
  Tensors r = ops::attention(q, k, v, Tensor(), true);
  Ref ref = naive_attention(values(q), values(k), values(v), 2, 3, 3, 5, 5, 4, true, 0.5);
  expect_close(values(r[0]), ref.out, 1e-12);
}

TEST_F(Attention, GradientsCausalGQA) {
  for (bool causal : {false, true})
    gradcheck([causal](const std::vector<Tensor>& in) {
      return ops::attention(in[0], in[1], in[2], Tensor(), causal)[0];
    }, {random({2, 4, 3, 5}), random({2, 2, 4, 5}), random({2, 2, 4, 5})});
}

TEST_F(Attention, GradientsThroughLse) {
  gradcheck([](const std::vector<Tensor>& in) {
    return ops::attention(in[0], in[1], in[2], Tensor(), true, 0.9)[1];
  }, {random({1, 2, 3, 4}), random({1, 1, 5, 4}), random({1, 1, 5, 4})});
}

TEST_F(Attention, GradientsWithMasksAndEmptyRows) {
  std::vector<double> m = {1, 0, 1, 1,  0, 0, 0, 0,  1, 1, 0, 1};  // row 1 attends nothing
  Tensor mb = make(m, {1, 1, 3, 4}, DType::Bool);
  gradcheck([&](const std::vector<Tensor>& in) {
    return ops::attention(in[0], in[1], in[2], mb, false)[0];
  }, {random({2, 2, 3, 3}), random({2, 1, 4, 3}), random({2, 1, 4, 3})});
  Tensor mf = random({3, 4});
  gradcheck([&](const std::vector<Tensor>& in) {
    return ops::attention(in[0], in[1], in[2], mf, true)[0];
  }, {random({1, 3, 3, 2}), random({1, 3, 4, 2}), random({1, 3, 4, 2})});
}

TEST_F(Attention, GradientsAcrossBlocks) {
  // T = 70 spans two 64-row blocks; check a few hundred elements through the causal skip.
  gradcheck([](const std::vector<Tensor>& in) {
    return ops::attention(in[0], in[1], in[2], Tensor(), true)[0];
  }, {random({1, 2, 70, 2}), random({1, 1, 70, 2}), random({1, 1, 70, 2})});
}

TEST_F(Attention, BackwardDeterministicAcrossThreadCounts) {
  Tensor q = random({2, 6, 33, 8}, DType::Float32), k = random({2, 2, 40, 8}, DType::Float32),
         v = random({2, 2, 40, 8}, DType::Float32);
  Tensor g = random({2, 6, 33, 8}, DType::Float32);
  int prev = num_threads();
  std::vector<std::vector<double>> res;
  for (int threads : {1, 2, 3}) {
    set_num_threads(threads);
    Tensors f = ops::attention(q, k, v, Tensor(), true);
    Tensors d = call("attention_backward", {q, k, v, Tensor(), f[0], f[1], g, Tensor()}, {{"causal", true}});
    std::vector<double> all;
    for (auto& t : d) {
      auto x = values(t);
      all.insert(all.end(), x.begin(), x.end());
    }
    res.push_back(all);
  }
  set_num_threads(prev);
  EXPECT_EQ(res[0], res[1]);
  EXPECT_EQ(res[0], res[2]);
}

TEST_F(Attention, EmptyShapes) {
  Tensors r = ops::attention(random({2, 2, 0, 3}), random({2, 1, 4, 3}), random({2, 1, 4, 3}), Tensor(), true);
  EXPECT_EQ(r[0].shape(), (Shape{2, 2, 0, 3}));
  // No keys: every row is fully masked.
  Tensor q = random({1, 2, 3, 4});
  q.set_requires_grad(true);
  r = ops::attention(q, random({1, 2, 0, 4}), random({1, 2, 0, 4}), Tensor(), false);
  expect_close(values(r[0]), std::vector<double>(24, 0.0), 0);
  for (double l : values(r[1])) EXPECT_EQ(l, -std::numeric_limits<double>::infinity());
  run_backward({ops::sum(r[0])}, {});
  expect_close(values(q.grad()), std::vector<double>(24, 0.0), 0);
  r = ops::attention(random({0, 2, 3, 4}), random({0, 1, 3, 4}), random({0, 1, 3, 4}), Tensor(), true);
  EXPECT_EQ(r[1].shape(), (Shape{0, 2, 3}));
}

TEST_F(Attention, Errors) {
  Tensor q = random({1, 3, 4, 5}), k = random({1, 2, 4, 5}), v = random({1, 2, 4, 5});
  EXPECT_THROW(ops::attention(q, k, v, Tensor(), false), ValueError);  // 3 % 2 != 0
  Tensor k1 = random({1, 1, 4, 5});
  EXPECT_THROW(ops::attention(q, k1, random({1, 1, 4, 6}), Tensor(), false), ValueError);
  EXPECT_THROW(ops::attention(q, k1, random({1, 1, 4, 5}, DType::Float32), Tensor(), false), TypeError);
  EXPECT_THROW(ops::attention(random({3, 4, 5}), k1, k1, Tensor(), false), ValueError);
  EXPECT_THROW(ops::attention(q, random({1, 1, 4, 6}), random({1, 1, 4, 6}), Tensor(), false), ValueError);
  EXPECT_THROW(ops::attention(q, k1, k1, random({4, 3}), false), ValueError);  // mask (T, S) swapped
  EXPECT_THROW(ops::attention(q, k1, k1, make({1, 0}, {1, 2}, DType::Int64), false), TypeError);
  EXPECT_THROW(call("attention", {q, k, v}), ValueError);
  try {
    ops::attention(q, k, v, Tensor(), false);
  } catch (const ValueError& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("attention"), std::string::npos);
    EXPECT_NE(msg.find("(3)"), std::string::npos) << msg;
  }
}

}  // namespace ls::test
