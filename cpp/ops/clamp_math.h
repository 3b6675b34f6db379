// relu and clamp of one element, as torch: one definition for the CPU kernels (cpp/ops/unary.cpp)
// and the CUDA kernels (cuda/unary.cu).
//
//   relu(v)          = v <= 0 ? 0 : v                 NaN stays NaN (torch's relu(nan) is nan)
//   clamp(v, lo, hi) = min(max(v, lo), hi)            NaN in v, lo or hi gives NaN
//
// clamp applies hi last, so lo > hi gives hi everywhere ([0, 5].clamp(2, 1) is [1, 1], as torch).
// The comparisons are written so that a NaN operand is the one selected: `v > 0 ? v : 0` sent
// relu(NaN) to 0, and `v < lo ? lo : ...` let a NaN bound through unused.
#pragma once
#include "core/host_device.h"

namespace ls::clamp_math {

template <typename T> LS_HD T relu(T v) { return v <= T(0) ? T(0) : v; }

template <typename T> LS_HD T clamp(T v, T lo, T hi) {
  T r = (v < lo || lo != lo) ? lo : v;  // max(v, lo); a NaN v fails the test and stays
  return (r > hi || hi != hi) ? hi : r;  // min(r, hi)
}

}  // namespace ls::clamp_math
