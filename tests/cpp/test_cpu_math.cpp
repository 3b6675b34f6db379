// The float32 exp/erfc of cpu_math.h against libm in double, and the lane reductions.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "ops/cpu_math.h"

namespace ls::test {

TEST(CpuMath, ExpFloat32WithinTwoUlpEverywhere) {
  double worst = 0;
  for (double v = -103.9; v < 88.72; v += 0.00123) {
    float x = float(v);
    double ref = std::exp(double(x));
    double got = cpu::exp_f32(x);
    if (ref < 1.1754944e-38) {  // denormal results: absolute error of one denormal step
      EXPECT_NEAR(got, ref, 1.5e-45) << "x = " << x;
      continue;
    }
    worst = std::max(worst, std::abs(got - ref) / ref);
  }
  EXPECT_LT(worst, 2 * 5.96e-8);
  EXPECT_EQ(cpu::exp_f32(-INFINITY), 0.0f);
  EXPECT_EQ(cpu::exp_f32(INFINITY), INFINITY);
  EXPECT_EQ(cpu::exp_f32(89.0f), INFINITY);
  EXPECT_EQ(cpu::exp_f32(-200.0f), 0.0f);
  EXPECT_EQ(cpu::exp_f32(0.0f), 1.0f);
  EXPECT_TRUE(std::isnan(cpu::exp_f32(NAN)));
}

TEST(CpuMath, ExpNonPositive) {
  double worst = 0;
  for (double v = -87.3; v <= 0.01; v += 0.000731) {
    float x = float(v);
    double ref = std::exp(double(x));
    worst = std::max(worst, std::abs(cpu::exp_nonpos_f32(x) - ref) / ref);
  }
  EXPECT_LT(worst, 2 * 5.96e-8);
  EXPECT_EQ(cpu::exp_nonpos_f32(-INFINITY), 0.0f);
  EXPECT_EQ(cpu::exp_nonpos_f32(-88.0f), 0.0f);  // flushed (true value 6e-39 < FLT_MIN)
  EXPECT_TRUE(std::isnan(cpu::exp_nonpos_f32(NAN)));
}

TEST(CpuMath, ErfcFloat32RelativeAccuracy) {
  for (double v = -6; v < 9.5; v += 0.00117) {
    float x = float(v);
    double ref = std::erfc(double(x));
    // The fit is good to 1.2e-7; float32 rounding of the 10-term polynomial adds a few ulp, and
    // rounding x^2 inside exp(-x^2) adds an error that grows like x^2 ulp.
    double tol = 6e-7 + 2e-7 * double(x) * double(x);
    double rel = std::abs(cpu::erfc_f32(x) - ref) / ref;
    EXPECT_LT(rel, tol) << "x = " << x;
  }
  EXPECT_EQ(cpu::erfc_f32(INFINITY), 0.0f);
  EXPECT_EQ(cpu::erfc_f32(-INFINITY), 2.0f);
}

TEST(CpuMath, LaneReductionsMatchSequentialSums) {
  for (int64_t n : {0, 1, 7, 31, 32, 33, 100, 1000}) {
    std::vector<float> x(n), y(n);
    double s = 0, d = 0, m = -INFINITY;
    for (int64_t i = 0; i < n; ++i) {
      x[i] = float(std::sin(0.37 * double(i)) * 3);
      y[i] = float(std::cos(0.11 * double(i)));
      s += x[i];
      d += double(x[i]) * y[i];
      m = std::max(m, double(x[i]));
    }
    EXPECT_NEAR(cpu::row_sum(x.data(), n), s, 1e-5 * (1 + std::abs(s)));
    EXPECT_NEAR(cpu::row_dot(x.data(), y.data(), n), d, 1e-5 * (1 + std::abs(d)));
    EXPECT_EQ(cpu::row_max(x.data(), n), float(m));
    double se = 0;
    for (int64_t i = 0; i < n; ++i) se += std::exp(double(x[i]) - 3.0);
    EXPECT_NEAR(cpu::row_sum_exp(x.data(), n, 3.0f), se, 1e-6 * (1 + se));
  }
}

}  // namespace ls::test
