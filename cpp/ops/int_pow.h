// Integer power a ** b, as torch (ATen's powi): one definition for the CPU kernels
// (cpp/ops/binary.cpp) and the CUDA kernels (cuda/binary.cu).
//
//   b >= 0:  a^b by square-and-multiply, modulo 2^bits (wrapping, as torch: 3 ** 40 in int64 is
//            -6289078614652622815)
//   b <  0:  1 for a == 1, (-1)^b for a == -1, else 0 (1/a^|b| truncated toward 0; for a == 0,
//            whose true value is infinite, 0 too, as torch: no division by zero)
//   bool:    a || !b (1 ** b = 1, 0 ** 0 = 1, 0 ** 1 = 0)
//
// Why not pow(double(a), double(b)): double has 53 bits, so 3 ** 39 (62 bits) came back rounded
// (...256 for ...267), and past 2^63 the conversion back to int64 is undefined (it gave INT64_MIN,
// and INT64_MIN again for 0 ** -2 = inf). The products are taken in the unsigned type, where
// wrapping is defined (signed overflow is undefined); the conversion back to the signed type is
// modulo 2^bits (implementation-defined in C++17, so by GCC, Clang and NVCC alike; C++20 fixes it).
#pragma once
#include <type_traits>

#include "core/host_device.h"

namespace ls::int_math {

template <typename T> LS_HD T ipow(T a, T b) {
  static_assert(std::is_integral_v<T>, "ipow is for integer dtypes");
  if constexpr (std::is_same_v<T, bool>) {
    return a || !b;
  } else {
    using U = std::make_unsigned_t<T>;
    if constexpr (std::is_signed_v<T>) {
      if (b < 0) {
        if (a == 1) return T(1);
        if (a == -1) return (b & 1) ? T(-1) : T(1);  // b & 1: the parity, with no -b to overflow
        return T(0);
      }
    }
    U base = U(a), e = U(b), r = 1;
    while (e) {
      if (e & 1) r = U(r * base);  // U(...): uint8 products are computed in int and cut back
      e >>= 1;
      base = U(base * base);
    }
    return T(r);
  }
}

}  // namespace ls::int_math
