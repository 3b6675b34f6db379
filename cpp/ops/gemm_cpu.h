// CPU GEMM used by matmul, attention and the MoE grouped GEMM: C = alpha * A B + beta * C, row-major, with A(i, k) at
// A[i * rsa + k * csa] and B(k, j) at B[k * rsb + j * csb], so transposed or strided operands
// need no copy (the packing step reads them as they are). beta == 0 never reads C.
#pragma once
#include <cstdint>
#include <type_traits>

namespace ls::cpu {

void sgemm(int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t rsa, int64_t csa,
           const float* B, int64_t rsb, int64_t csb, float beta, float* C, int64_t ldc);

void dgemm(int64_t M, int64_t N, int64_t K, double alpha, const double* A, int64_t rsa,
           int64_t csa, const double* B, int64_t rsb, int64_t csb, double beta, double* C,
           int64_t ldc);

// The one above for the element type T (float or double).
template <typename T>
void gemm(int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t rsa, int64_t csa,
          const T* B, int64_t rsb, int64_t csb, T beta, T* C, int64_t ldc) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "gemm: float or double");
  if constexpr (std::is_same_v<T, float>)
    sgemm(M, N, K, alpha, A, rsa, csa, B, rsb, csb, beta, C, ldc);
  else
    dgemm(M, N, K, alpha, A, rsa, csa, B, rsb, csb, beta, C, ldc);
}

}  // namespace ls::cpu
