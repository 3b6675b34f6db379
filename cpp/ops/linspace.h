// linspace's element i: one definition for the CPU kernel (cpp/ops/creation.cpp) and the CUDA
// kernel (cuda/creation.cu), so both give the same values, torch's bit for bit in float32,
// float64 and the integer dtypes (in bfloat16 and float16 torch rounds every step of its math to
// the 16-bit type; here the float32 value is rounded once). As torch's kernels:
//   step = (end - start) / (steps - 1)            (ops::linspace computes it, in the math type C)
//   out[i] = start + i step              for i < steps / 2
//            end - (steps - 1 - i) step  otherwise (so both ends are exact)
//   steps = 1: out = [start].
// Each is one fused multiply-add, rounded once, as torch's kernels compile (CUDA contracts by
// default, as does the CPU build of torch's vectorised-ISA kernels). C is float for float32 and
// the 16-bit floats (rounded once more to those), double for float64 and the integer dtypes
// (start and end truncated to integers first, the values truncated after).
#pragma once
#include <cmath>
#include <cstdint>

#include "core/dtype.h"
#include "core/host_device.h"

namespace ls {

// The math type C: float (true) or double.
inline bool linspace_in_float(DType d) { return is_floating(d) && d != DType::Float64; }

template <typename C> LS_HD C linspace_at(C start, C end, C step, int64_t steps, int64_t i) {
  if (i < steps / 2 || steps == 1) {
    if constexpr (sizeof(C) == 4) return fmaf(step, C(i), start);
    else return fma(step, C(i), start);
  }
  if constexpr (sizeof(C) == 4) return fmaf(-step, C(steps - 1 - i), end);
  else return fma(-step, C(steps - 1 - i), end);
}

}  // namespace ls
