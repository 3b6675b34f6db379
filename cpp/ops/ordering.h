// The value order shared by sort and topk: NaN is the largest value (as in torch), and
// `before(a, b, descending)` is a strict "a comes first" test for that order.
#pragma once
#include <cmath>
#include <type_traits>

namespace ls::ops {

template <typename T> bool is_nan(T v) {
  if constexpr (std::is_floating_point_v<T>) return std::isnan(v);
  else return false;
}

template <typename T> bool before(T a, T b, bool descending) {
  bool na = is_nan(a), nb = is_nan(b);
  if (na || nb) return descending ? (na && !nb) : (nb && !na);
  return descending ? a > b : a < b;
}

}  // namespace ls::ops
