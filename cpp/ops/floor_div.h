// Floor division and the floored remainder of one element pair, as torch (c10's div_floor_integer
// and div_floor_floating, ATen's remainder kernels) and Python: one definition for the CPU kernels
// (cpp/ops/binary.cpp) and the CUDA kernels (cuda/binary.cu).
//
//   floor_divide(a, b) = floor(a / b)          remainder(a, b) = a - b floor(a / b)
//
// so the quotient rounds toward minus infinity and the remainder has the divisor's sign (or is 0).
// Integers: truncating division corrected by one where the signs differ and the remainder is
// nonzero. b = -1 is a wrapping negation and remainder 0 (the most negative value // -1 is itself,
// as torch gives, where the hardware division would trap). b = 0 is for the caller to refuse
// (the CPU kernels raise); here it gives 0, numpy's value.
// Floats, not a / b rounded: with mod = fmod(a, b) (exact),
//   remainder    = mod + b where mod != 0 and its sign differs from b's, else mod;
//   floor_divide = a / b where b == 0 (IEEE: +-inf or NaN); else div = (a - mod) / b, less 1 where
//                  remainder added b; then floor(div), plus 1 where div - floor(div) > 1/2 (div is
//                  an integer but for rounding); a zero result takes the sign of a / b.
// E.g. 5 // -0.0 = -inf, inf // 2 = NaN (fmod(inf, 2) is NaN), -1 // inf = -1, -1 % inf = inf.
#pragma once
#include <cmath>
#include <type_traits>

#include "core/host_device.h"

namespace ls::floor_math {

LS_HD float fmod_(float a, float b) { return fmodf(a, b); }
LS_HD double fmod_(double a, double b) { return fmod(a, b); }
LS_HD float floor_(float a) { return floorf(a); }
LS_HD double floor_(double a) { return floor(a); }
LS_HD float copysign_(float a, float b) { return copysignf(a, b); }
LS_HD double copysign_(double a, double b) { return copysign(a, b); }

template <typename T> LS_HD T remainder(T a, T b) {
  if constexpr (std::is_floating_point_v<T>) {
    T mod = fmod_(a, b);
    if (mod != 0 && (b < 0) != (mod < 0)) mod += b;
    return mod;
  } else {
    if (b == 0) return T(0);
    if constexpr (std::is_signed_v<T>) {
      if (b == -1) return T(0);
      T r = T(a % b);
      return r != 0 && (r < 0) != (b < 0) ? T(r + b) : r;
    } else {
      return T(a % b);
    }
  }
}

template <typename T> LS_HD T floor_divide(T a, T b) {
  if constexpr (std::is_floating_point_v<T>) {
    if (b == 0) return a / b;
    const T mod = fmod_(a, b);
    T div = (a - mod) / b;
    if (mod != 0 && (b < 0) != (mod < 0)) div -= T(1);
    if (div == 0) return copysign_(T(0), a / b);
    T fl = floor_(div);
    if (div - fl > T(0.5)) fl += T(1);
    return fl;
  } else {
    if (b == 0) return T(0);
    if constexpr (std::is_signed_v<T>) {
      if (b == -1) return T(std::make_unsigned_t<T>(0) - std::make_unsigned_t<T>(a));
      const T q = T(a / b);
      return a % b != 0 && (a < 0) != (b < 0) ? T(q - 1) : q;
    } else {
      return T(a / b);
    }
  }
}

}  // namespace ls::floor_math
