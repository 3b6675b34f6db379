// LS_HD marks a function that both the CPU kernels and the CUDA kernels call, so that one
// definition of the math serves both devices (the Philox stream, linspace, floor division).
#pragma once

#if defined(__CUDACC__)
#define LS_HD __host__ __device__ __forceinline__
#else
#define LS_HD inline
#endif
