// Error checking shared by the CUDA kernels: every launch and runtime call is checked and a
// failure becomes an ls::RuntimeError naming the op.
#pragma once
#include <cuda_runtime.h>

#include "core/error.h"

namespace ls::cuda {

inline void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw RuntimeError(cat(what, ": CUDA error: ", cudaGetErrorString(err)));
}

// After a <<<...>>> launch: configuration errors show up here, faults at the next sync.
inline void check_launch(const char* op) { check(cudaGetLastError(), op); }

inline unsigned blocks_for(int64_t n, int threads) {
  return unsigned((n + threads - 1) / threads);
}

}  // namespace ls::cuda
