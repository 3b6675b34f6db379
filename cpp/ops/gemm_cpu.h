// CPU GEMM used by matmul: C = alpha * A B + beta * C, row-major, with A(i, k) at
// A[i * rsa + k * csa] and B(k, j) at B[k * rsb + j * csb], so transposed or strided operands
// need no copy (the packing step reads them as they are). beta == 0 never reads C.
#pragma once
#include <cstdint>

namespace ls::cpu {

void sgemm(int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t rsa, int64_t csa,
           const float* B, int64_t rsb, int64_t csb, float beta, float* C, int64_t ldc);

void dgemm(int64_t M, int64_t N, int64_t K, double alpha, const double* A, int64_t rsa,
           int64_t csa, const double* B, int64_t rsb, int64_t csb, double beta, double* C,
           int64_t ldc);

}  // namespace ls::cpu
