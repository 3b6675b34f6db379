// Math shared by the CPU row kernels (softmax, norms, cross-entropy, activations): exp, erfc and
// sigmoid written so that GCC/Clang vectorise the loops that call them, and lane-blocked row
// reductions (max, sum, dot) that vectorise without -ffast-math.
//
// Why not std::exp: libm's expf is a scalar call, which keeps every loop that uses it scalar
// (8x slower on AVX2). float32 uses the branch-free versions below; float64, which we use for
// gradient checks, keeps libm (exact to the last bit matters more there than speed).
//
// Why the bitwise blend: under -ftrapping-math (the compiler default) GCC will not turn
// `c ? a : b` into a vector select when the arms feed later arithmetic, and the whole loop stays
// scalar. Selecting with an integer mask is the same operation and vectorises.
//
// Why lanes: a float sum `s += x[i]` is a sequential dependency the compiler may not reorder
// without -ffast-math. Accumulating into L independent lanes (acc[j] += x[i + j]) is exactly a
// vector add per step, and as a bonus is more accurate than one running sum (each lane holds
// n/L terms). The lanes are added together at the end.
#pragma once
#include <cmath>
#include <cstdint>
#include <type_traits>

namespace ls::cpu {

inline int32_t as_int(float v) { return __builtin_bit_cast(int32_t, v); }
inline float as_float(int32_t v) { return __builtin_bit_cast(float, v); }

// c ? a : b, as a bitwise blend (see the header comment).
inline float blend(bool c, float a, float b) {
  int32_t m = -int32_t(c);
  return as_float((as_int(a) & m) | (as_int(b) & ~m));
}

// The shared core of both exps (Cephes expf): x = n ln2 + r with |r| <= ln2/2, exp(r) by a
// degree-6 polynomial. Returns exp(r); t holds n in its low mantissa bits (t = x / ln2 + 1.5 2^23).
inline float exp_reduced(float x, float& t) {
  t = x * 1.44269504088896341f + 12582912.0f;
  float n = t - 12582912.0f;
  float r = x - n * 0.693359375f;  // ln2 split in a high part exact in float ...
  r = r + n * 2.12194440e-4f;      // ... and the remainder, so r keeps its low bits
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  return p * r * r + r + 1.0f;
}

// exp(x) for float32, max error 1.4 ulp over the whole range, denormal results included;
// exp(-inf) = 0, exp(+inf) = inf, NaN stays NaN. 2^n is built in the exponent bits and applied
// as two factors 2^(n/2) 2^(n - n/2) so that n from -150 (denormals) to 128 (near FLT_MAX)
// needs no special case.
inline float exp_f32(float x) {
  const float lo = -103.972084f, hi = 88.7228391f;  // exp(lo) rounds to 0, exp(hi) ~ FLT_MAX
  float xc = blend(x < lo, lo, x);
  xc = blend(xc > hi, hi, xc);
  float t;
  float p = exp_reduced(xc, t);
  int32_t ni = int32_t(uint32_t(as_int(t)) << 23) >> 23;  // the low 9 bits, sign-extended
  int32_t n1 = ni >> 1, n2 = ni - n1;
  float y = p * as_float((n1 + 127) << 23) * as_float((n2 + 127) << 23);
  y = blend(x < lo, 0.0f, y);
  return blend(x > hi, INFINITY, y);
}

// exp(x) for x <= 0 (a little above 0 from rounding is fine), the case of every softmax and
// cross-entropy exponential (x - max, x - logsumexp). Same polynomial as exp_f32 but no overflow
// handling and results below FLT_MIN (x < -87.3) flushed to 0: a third fewer instructions, and
// the flushed probabilities are < 1e-38 of the row's total. -inf gives 0 and NaN stays NaN;
// x > 88 is out of contract.
inline float exp_nonpos_f32(float x) {
  const float lo = -87.3365447f;  // ln(FLT_MIN)
  float t;
  float p = exp_reduced(blend(x < lo, lo, x), t);
  float y = p * as_float(int32_t(uint32_t(as_int(t)) << 23) + 0x3f800000);  // p 2^n, n >= -126
  return blend(x < lo, 0.0f, y);
}

// erfc(x) for float32 with relative error about 1.2e-7 for x >= 0 (Numerical Recipes' erfcc,
// a Chebyshev fit of erfc(z) e^{z^2}); erfc(-z) = 2 - erfc(z). Relative accuracy on the positive
// side is what keeps gelu(x) = x erfc(-x/sqrt2)/2 accurate for large negative x, where an erf
// based formula would subtract two numbers close to 1.
inline float erfc_f32(float x) {
  float z = std::fabs(x);
  float t = 1.0f / (1.0f + 0.5f * z);
  float p = 0.17087277f;
  p = p * t - 0.82215223f;
  p = p * t + 1.48851587f;
  p = p * t - 1.13520398f;
  p = p * t + 0.27886807f;
  p = p * t - 0.18628806f;
  p = p * t + 0.09678418f;
  p = p * t + 0.37409196f;
  p = p * t + 1.00002368f;
  p = p * t - 1.26551223f;
  float r = t * exp_f32(p - z * z);
  return blend(x < 0.0f, 2.0f - r, r);
}

// The dispatch used by the kernels: fast float32 versions, libm for float64.
template <typename T> inline T exp_(T x) {
  if constexpr (std::is_same_v<T, float>) return exp_f32(x);
  else return std::exp(x);
}
template <typename T> inline T exp_nonpos_(T x) {
  if constexpr (std::is_same_v<T, float>) return exp_nonpos_f32(x);
  else return std::exp(x);
}
template <typename T> inline T erfc_(T x) {
  if constexpr (std::is_same_v<T, float>) return erfc_f32(x);
  else return std::erfc(x);
}
// 1 / (1 + e^-x); e^-x overflows to inf for x < -88.7 and the result is then exactly 0.
template <typename T> inline T sigmoid_(T x) { return T(1) / (T(1) + exp_(-x)); }

// Lanes per reduction: four AVX2 vectors, enough independent adds to hide the add latency.
template <typename T> constexpr int kLanes = 128 / int(sizeof(T));

// max of x[0..n); -inf for n == 0. A NaN element does not win here, but every caller then
// computes exp(x - max), so a NaN in the row still reaches the output.
template <typename T> inline T row_max(const T* x, int64_t n) {
  constexpr int L = kLanes<T>;
  T acc[L];
  for (int j = 0; j < L; ++j) acc[j] = -INFINITY;
  int64_t i = 0;
  for (; i + L <= n; i += L)
    for (int j = 0; j < L; ++j) acc[j] = x[i + j] > acc[j] ? x[i + j] : acc[j];
  T m = -INFINITY;
  for (int j = 0; j < L; ++j) m = acc[j] > m ? acc[j] : m;
  for (; i < n; ++i) m = x[i] > m ? x[i] : m;
  return m;
}

template <typename T> inline T row_sum(const T* x, int64_t n) {
  constexpr int L = kLanes<T>;
  T acc[L] = {};
  int64_t i = 0;
  for (; i + L <= n; i += L)
    for (int j = 0; j < L; ++j) acc[j] += x[i + j];
  T s = 0;
  for (; i < n; ++i) s += x[i];
  for (int j = 0; j < L; ++j) s += acc[j];
  return s;
}

template <typename T> inline T row_dot(const T* x, const T* y, int64_t n) {
  constexpr int L = kLanes<T>;
  T acc[L] = {};
  int64_t i = 0;
  for (; i + L <= n; i += L)
    for (int j = 0; j < L; ++j) acc[j] += x[i + j] * y[i + j];
  T s = 0;
  for (; i < n; ++i) s += x[i] * y[i];
  for (int j = 0; j < L; ++j) s += acc[j];
  return s;
}

// sum of (x[i] - mu)^2: the second pass of a two-pass variance (no cancellation, unlike
// sum(x^2) - n mu^2).
template <typename T> inline T row_sum_sq_dev(const T* x, int64_t n, T mu) {
  constexpr int L = kLanes<T>;
  T acc[L] = {};
  int64_t i = 0;
  for (; i + L <= n; i += L)
    for (int j = 0; j < L; ++j) acc[j] += (x[i + j] - mu) * (x[i + j] - mu);
  T s = 0;
  for (; i < n; ++i) s += (x[i] - mu) * (x[i] - mu);
  for (int j = 0; j < L; ++j) s += acc[j];
  return s;
}

// sum of exp(x[i] - shift) over the row, shift >= max(x), without writing the exponentials out:
// they go through a small buffer so the exp loop and the sum loop each vectorise.
template <typename T> inline T row_sum_exp(const T* x, int64_t n, T shift) {
  constexpr int64_t B = 512;
  T buf[B];
  T s = 0;
  for (int64_t i0 = 0; i0 < n; i0 += B) {
    int64_t m = n - i0 < B ? n - i0 : B;
    for (int64_t i = 0; i < m; ++i) buf[i] = exp_nonpos_(x[i0 + i] - shift);
    s += row_sum(buf, m);
  }
  return s;
}

}  // namespace ls::cpu
