// Cache-blocked, packed GEMM in the BLIS/GotoBLAS structure:
//   for jc in N by NC:  for pc in K by KC:  pack B[pc:pc+KC, jc:jc+NC] into NR-wide panels
//     for ic in M by MC (in parallel):      pack A[ic:ic+MC, pc:pc+KC] into MR-tall panels
//       for each MR x NR tile: micro-kernel, KC rank-1 updates held in registers
// The float micro-kernel is 6 x 16 with AVX2+FMA (12 ymm accumulators, 2 B loads and 6 A
// broadcasts per k); without AVX2 a portable loop of the same shape lets the compiler vectorise.
// Edge tiles are packed with zeros and written through a small buffer.
#include "gemm_cpu.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "core/parallel.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define LS_GEMM_AVX2 1
#endif

namespace ls::cpu {

namespace {

template <typename T> struct Blocking;
template <> struct Blocking<float> { static constexpr int MR = 6, NR = 16, KC = 256, MC = 96, NC = 3072; };
template <> struct Blocking<double> { static constexpr int MR = 4, NR = 8, KC = 256, MC = 64, NC = 2048; };

struct AlignedFree { void operator()(void* p) const { std::free(p); } };
template <typename T>
std::unique_ptr<T, AlignedFree> aligned_buffer(size_t n) {
  size_t bytes = (n * sizeof(T) + 63) / 64 * 64;
  return std::unique_ptr<T, AlignedFree>(static_cast<T*>(std::aligned_alloc(64, bytes ? bytes : 64)));
}

// Pack rows [0, mc) x cols [0, kc) of A into panels of MR rows: panel p, k, r at p*MR*kc + k*MR + r.
template <typename T, int MR>
void pack_a(int64_t mc, int64_t kc, const T* A, int64_t rsa, int64_t csa, T* out) {
  for (int64_t i0 = 0; i0 < mc; i0 += MR) {
    int64_t rows = std::min<int64_t>(MR, mc - i0);
    for (int64_t k = 0; k < kc; ++k) {
      for (int64_t r = 0; r < rows; ++r) out[k * MR + r] = A[(i0 + r) * rsa + k * csa];
      for (int64_t r = rows; r < MR; ++r) out[k * MR + r] = T(0);
    }
    out += MR * kc;
  }
}

// Pack rows [0, kc) x cols [0, nc) of B into panels of NR columns: k, c at p*NR*kc + k*NR + c.
template <typename T, int NR>
void pack_b(int64_t kc, int64_t nc, const T* B, int64_t rsb, int64_t csb, T* out) {
  for (int64_t j0 = 0; j0 < nc; j0 += NR) {
    int64_t cols = std::min<int64_t>(NR, nc - j0);
    for (int64_t k = 0; k < kc; ++k) {
      const T* src = B + k * rsb + j0 * csb;
      T* dst = out + k * NR;
      if (csb == 1 && cols == NR) {
        std::memcpy(dst, src, sizeof(T) * NR);
      } else {
        for (int64_t c = 0; c < cols; ++c) dst[c] = src[c * csb];
        for (int64_t c = cols; c < NR; ++c) dst[c] = T(0);
      }
    }
    out += NR * kc;
  }
}

// acc[MR][NR] = sum_k a[k][r] * b[k][c] over packed panels; then C = alpha acc + beta C.
template <typename T, int MR, int NR>
void micro_kernel_generic(int64_t kc, const T* a, const T* b, T* acc) {
  T c[MR][NR] = {};
  for (int64_t k = 0; k < kc; ++k) {
    for (int r = 0; r < MR; ++r) {
      T av = a[k * MR + r];
      for (int j = 0; j < NR; ++j) c[r][j] += av * b[k * NR + j];
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < NR; ++j) acc[r * NR + j] = c[r][j];
}

#ifdef LS_GEMM_AVX2
void micro_kernel_6x16(int64_t kc, const float* a, const float* b, float* acc) {
  __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps(), c10 = _mm256_setzero_ps(),
         c11 = _mm256_setzero_ps(), c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps(),
         c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps(), c40 = _mm256_setzero_ps(),
         c41 = _mm256_setzero_ps(), c50 = _mm256_setzero_ps(), c51 = _mm256_setzero_ps();
  for (int64_t k = 0; k < kc; ++k) {
    __m256 b0 = _mm256_load_ps(b), b1 = _mm256_load_ps(b + 8);
    __m256 av;
    av = _mm256_broadcast_ss(a + 0); c00 = _mm256_fmadd_ps(av, b0, c00); c01 = _mm256_fmadd_ps(av, b1, c01);
    av = _mm256_broadcast_ss(a + 1); c10 = _mm256_fmadd_ps(av, b0, c10); c11 = _mm256_fmadd_ps(av, b1, c11);
    av = _mm256_broadcast_ss(a + 2); c20 = _mm256_fmadd_ps(av, b0, c20); c21 = _mm256_fmadd_ps(av, b1, c21);
    av = _mm256_broadcast_ss(a + 3); c30 = _mm256_fmadd_ps(av, b0, c30); c31 = _mm256_fmadd_ps(av, b1, c31);
    av = _mm256_broadcast_ss(a + 4); c40 = _mm256_fmadd_ps(av, b0, c40); c41 = _mm256_fmadd_ps(av, b1, c41);
    av = _mm256_broadcast_ss(a + 5); c50 = _mm256_fmadd_ps(av, b0, c50); c51 = _mm256_fmadd_ps(av, b1, c51);
    a += 6;
    b += 16;
  }
  _mm256_storeu_ps(acc + 0, c00); _mm256_storeu_ps(acc + 8, c01);
  _mm256_storeu_ps(acc + 16, c10); _mm256_storeu_ps(acc + 24, c11);
  _mm256_storeu_ps(acc + 32, c20); _mm256_storeu_ps(acc + 40, c21);
  _mm256_storeu_ps(acc + 48, c30); _mm256_storeu_ps(acc + 56, c31);
  _mm256_storeu_ps(acc + 64, c40); _mm256_storeu_ps(acc + 72, c41);
  _mm256_storeu_ps(acc + 80, c50); _mm256_storeu_ps(acc + 88, c51);
}
#endif

template <typename T, int MR, int NR>
void micro_kernel(int64_t kc, const T* a, const T* b, T* acc) {
#ifdef LS_GEMM_AVX2
  if constexpr (std::is_same_v<T, float> && MR == 6 && NR == 16) {
    micro_kernel_6x16(kc, a, b, acc);
    return;
  }
#endif
  micro_kernel_generic<T, MR, NR>(kc, a, b, acc);
}

template <typename T>
void packed_gemm(int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t rsa, int64_t csa,
                 const T* B, int64_t rsb, int64_t csb, T beta, T* C, int64_t ldc) {
  using BL = Blocking<T>;
  constexpr int MR = BL::MR, NR = BL::NR;
  if (M == 0 || N == 0) return;
  if (K == 0) {  // C = beta C
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) C[i * ldc + j] = beta == T(0) ? T(0) : beta * C[i * ldc + j];
    return;
  }
  const int64_t nc_max = std::min<int64_t>(BL::NC, (N + NR - 1) / NR * NR);
  const int64_t kc_max = std::min<int64_t>(BL::KC, K);
  auto bpack = aligned_buffer<T>(size_t(nc_max) * kc_max);
  const int64_t m_blocks_max = (M + BL::MC - 1) / BL::MC;

  for (int64_t jc = 0; jc < N; jc += BL::NC) {
    int64_t nc = std::min<int64_t>(BL::NC, N - jc);
    for (int64_t pc = 0; pc < K; pc += BL::KC) {
      int64_t kc = std::min<int64_t>(BL::KC, K - pc);
      T beta_here = pc == 0 ? beta : T(1);
      // Pack B panels in parallel: panel p covers columns [p*NR, p*NR+NR).
      int64_t panels = (nc + NR - 1) / NR;
      parallel_for(0, panels, 8, [&](int64_t p0, int64_t p1) {
        int64_t c0 = p0 * NR, c1 = std::min<int64_t>(nc, p1 * NR);
        pack_b<T, NR>(kc, c1 - c0, B + pc * rsb + (jc + c0) * csb, rsb, csb, bpack.get() + p0 * NR * kc);
      });
      // Tasks are (row block, column chunk) pairs so small-M shapes still use every thread;
      // each task packs its own A block (a cost of 1/kChunkCols of its arithmetic).
      constexpr int64_t kChunkCols = 16 * NR;
      const int64_t n_chunks = (nc + kChunkCols - 1) / kChunkCols;
      parallel_for(0, m_blocks_max * n_chunks, 1, [&](int64_t t0, int64_t t1) {
        auto apack = aligned_buffer<T>(size_t(BL::MC) * kc);
        alignas(64) T acc[MR * NR];
        int64_t packed_blk = -1;
        for (int64_t t = t0; t < t1; ++t) {
          int64_t blk = t / n_chunks, chunk = t % n_chunks;
          int64_t ic = blk * BL::MC, mc = std::min<int64_t>(BL::MC, M - ic);
          if (blk != packed_blk) {
            pack_a<T, MR>(mc, kc, A + ic * rsa + pc * csa, rsa, csa, apack.get());
            packed_blk = blk;
          }
          int64_t j_end = std::min<int64_t>(nc, (chunk + 1) * kChunkCols);
          for (int64_t jr = chunk * kChunkCols; jr < j_end; jr += NR) {
            int64_t cols = std::min<int64_t>(NR, nc - jr);
            const T* bp = bpack.get() + jr * kc;
            for (int64_t ir = 0; ir < mc; ir += MR) {
              int64_t rows = std::min<int64_t>(MR, mc - ir);
              micro_kernel<T, MR, NR>(kc, apack.get() + ir * kc, bp, acc);
              T* c = C + (ic + ir) * ldc + jc + jr;
              for (int64_t r = 0; r < rows; ++r) {
                T* crow = c + r * ldc;
                const T* arow = acc + r * NR;
                if (beta_here == T(0)) {
                  for (int64_t j = 0; j < cols; ++j) crow[j] = alpha * arow[j];
                } else {
                  for (int64_t j = 0; j < cols; ++j) crow[j] = alpha * arow[j] + beta_here * crow[j];
                }
              }
            }
          }
        }
      });
    }
  }
}

}  // namespace

void sgemm(int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t rsa, int64_t csa,
           const float* B, int64_t rsb, int64_t csb, float beta, float* C, int64_t ldc) {
  packed_gemm<float>(M, N, K, alpha, A, rsa, csa, B, rsb, csb, beta, C, ldc);
}

void dgemm(int64_t M, int64_t N, int64_t K, double alpha, const double* A, int64_t rsa,
           int64_t csa, const double* B, int64_t rsb, int64_t csb, double beta, double* C,
           int64_t ldc) {
  packed_gemm<double>(M, N, K, alpha, A, rsa, csa, B, rsb, csb, beta, C, ldc);
}

}  // namespace ls::cpu
