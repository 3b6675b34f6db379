// bf16 / fp16 GEMM for Hopper (sm_90a): the bulk tensor copy engine (TMA) feeds shared memory,
// warpgroup MMAs (wgmma) multiply from it, fp32 accumulation in registers.
//   C[z] (M, N) = A[z] (M, K) @ B[z] (K, N), operands in either layout (sm90a.h).
//
// Block tile 128 (M) x 256 (N), k-tiles of 64, three warpgroups (384 threads):
//   - warpgroup 0 is the producer: one thread issues the TMA copies of each k-tile into a 4-stage
//     ring of shared memory (48 KB a stage) and waits for a stage to be released before refilling
//     it. Completion is signalled on the stage's "full" mbarrier by the copy engine's byte count;
//     the consumers release a stage on its "empty" mbarrier.
//   - warpgroups 1 and 2 are the consumers: each owns 64 rows of the tile, 64 x 256 fp32
//     accumulators (128 registers a thread), and per k-tile issues four m64n256k16 wgmmas,
//     waits for them, then releases the stage. The producer gives its registers to them
//     (setmaxnreg), so the accumulators never spill.
// Shared-memory layout: TMA writes each box with the 128-byte swizzle, in 1024-byte atoms of
//   8 rows x 128 bytes, and the wgmma descriptors describe the same swizzle:
//   - K-major operand (K contiguous): one box of 64 (K) x rows; row r at r * 128 bytes; a 16-wide
//     k-step is +32 bytes in the descriptor's start; stride between 8-row groups (SBO) 1024.
//   - MN-major operand (M or N contiguous): boxes of 64 (M or N) x 64 (K), each K row 128 bytes,
//     8 KB a box; the wgmma reads it transposed (imm-trans = 1); the 64-element chunks of M or N
//     are 8192 bytes apart (LBO), 8-row K groups 1024 (SBO); a k-step is +2048 bytes.
// Tails in M, N and K: the copy engine zero-fills the part of a box outside the tensor, so the
//   mainloop has no tail path; the epilogue stores only elements inside C.
// Epilogue: each thread rounds its accumulators to the output type and stores pairs straight to
//   global memory (the wgmma accumulator layout: per 8 columns, rows lane/4 and lane/4 + 8 of the
//   warp's 16, columns 2 * (lane % 4) + {0, 1}).
// Tiles are numbered in groups of 8 tile rows, so blocks running together share A and B in L2.
// Limits: 16-byte aligned operand bases, leading dims and batch strides multiples of 8 elements
//   (the copy engine's rule); otherwise gemm() declines and cuda/matmul.cu runs its mma.sync path.
#include "sm90a.h"

#include "../pack.cuh"
#include "hopper.cuh"
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <atomic>
#include <type_traits>

namespace ls::cuda::sm90a {

namespace {

constexpr int kBM = 128, kBN = 256, kBK = 64, kStages = 4;
constexpr int kConsumers = 2;
constexpr int kThreads = 128 * (1 + kConsumers);
constexpr int kABytes = kBM * kBK * 2, kBBytes = kBN * kBK * 2;
constexpr int kStageBytes = kABytes + kBBytes;
constexpr int kBoxBytes = 64 * 64 * 2;  // an MN-major box: 64 x 64 elements
constexpr int kSmemBytes = kStages * kStageBytes + 1024 /* alignment slack */ + 2 * kStages * 8;
constexpr int kGroupM = 8;

struct Epilogue {
  void* c;
  int64_t ldc, c_batch;
  int M, N, K;
};

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)

template <typename T, int TRANS_A, int TRANS_B>
__device__ __forceinline__ void wgmma_m64n256k16(float (&d)[128], uint64_t da, uint64_t db) {
  static_assert(std::is_same_v<T, __nv_bfloat16> || std::is_same_v<T, __half>);
#define LS_WGMMA_ASM(TYPE)                                                                    \
  asm volatile(                                                                              \
      "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"                                            \
      "wgmma.mma_async.sync.aligned.m64n256k16.f32." TYPE "." TYPE " {"                     \
      "%0, %1, %2, %3, %4, %5, %6, %7,"                                                       \
      "%8, %9, %10, %11, %12, %13, %14, %15,"                                                 \
      "%16, %17, %18, %19, %20, %21, %22, %23,"                                               \
      "%24, %25, %26, %27, %28, %29, %30, %31,"                                               \
      "%32, %33, %34, %35, %36, %37, %38, %39,"                                               \
      "%40, %41, %42, %43, %44, %45, %46, %47,"                                               \
      "%48, %49, %50, %51, %52, %53, %54, %55,"                                               \
      "%56, %57, %58, %59, %60, %61, %62, %63,"                                               \
      "%64, %65, %66, %67, %68, %69, %70, %71,"                                               \
      "%72, %73, %74, %75, %76, %77, %78, %79,"                                               \
      "%80, %81, %82, %83, %84, %85, %86, %87,"                                               \
      "%88, %89, %90, %91, %92, %93, %94, %95,"                                               \
      "%96, %97, %98, %99, %100, %101, %102, %103,"                                           \
      "%104, %105, %106, %107, %108, %109, %110, %111,"                                       \
      "%112, %113, %114, %115, %116, %117, %118, %119,"                                       \
      "%120, %121, %122, %123, %124, %125, %126, %127"                                        \
      "}, %128, %129, p, 1, 1, %130, %131;\n}\n"                                             \
      : LS_ACC64(0), LS_ACC64(64)                                                            \
      : "l"(da), "l"(db), "n"(TRANS_A), "n"(TRANS_B))
  if constexpr (std::is_same_v<T, __nv_bfloat16>)
    LS_WGMMA_ASM("bf16");
  else
    LS_WGMMA_ASM("f16");
#undef LS_WGMMA_ASM
}

template <typename T>
__device__ __forceinline__ void store_pair(T* c, int64_t off, float x, float y, bool both,
                                           bool paired) {
  if (both && paired) {
    *reinterpret_cast<uint32_t*>(c + off) = pack2<T>(x, y);
  } else {
    c[off] = T(x);
    if (both) c[off + 1] = T(y);
  }
}

#endif  // sm_90a device code

template <typename T, bool A_KMAJOR, bool B_KMAJOR>
__global__ void __launch_bounds__(kThreads, 1)
    wgmma_gemm_kernel(const __grid_constant__ CUtensorMap map_a,
                      const __grid_constant__ CUtensorMap map_b, Epilogue ep) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ __align__(1024) unsigned char smem[];
  // The swizzle atoms must start on 1024-byte boundaries.
  const uint32_t tiles = (smem_addr(smem) + 1023) & ~uint32_t(1023);
  const uint32_t bars = tiles + kStages * kStageBytes;
  auto full = [&](int s) { return bars + 8 * s; };
  auto empty = [&](int s) { return bars + 8 * (kStages + s); };

  const int tiles_m = (ep.M + kBM - 1) / kBM, tiles_n = (ep.N + kBN - 1) / kBN;
  const int pid = blockIdx.x, per_group = kGroupM * tiles_n;
  const int first_m = (pid / per_group) * kGroupM, group_rows = min(tiles_m - first_m, kGroupM);
  const int m0 = (first_m + (pid % per_group) % group_rows) * kBM;
  const int n0 = ((pid % per_group) / group_rows) * kBN;
  const int z = blockIdx.z;
  const int k_tiles = (ep.K + kBK - 1) / kBK;

  if (threadIdx.x == 0) {
    for (int s = 0; s < kStages; ++s) {
      mbar_init(full(s), 1);
      mbar_init(empty(s), kConsumers);
    }
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();

  const int wg = threadIdx.x / 128, tid = threadIdx.x % 128;
  if (wg == 0) {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 40;");
    if (tid == 0) {
      for (int kt = 0; kt < k_tiles; ++kt) {
        const int s = kt % kStages, round = kt / kStages, k0 = kt * kBK;
        if (round > 0) mbar_wait(empty(s), (round - 1) & 1);
        const uint32_t sa = tiles + s * kStageBytes, sb = sa + kABytes;
        mbar_expect_tx(full(s), kStageBytes);
        if constexpr (A_KMAJOR) {
          tma_load(sa, &map_a, k0, m0, z, full(s));
        } else {
          for (int j = 0; j < kBM / 64; ++j) tma_load(sa + j * kBoxBytes, &map_a, m0 + 64 * j, k0, z, full(s));
        }
        if constexpr (B_KMAJOR) {
          tma_load(sb, &map_b, k0, n0, z, full(s));
        } else {
          for (int j = 0; j < kBN / 64; ++j) tma_load(sb + j * kBoxBytes, &map_b, n0 + 64 * j, k0, z, full(s));
        }
      }
    }
  } else {
    asm volatile("setmaxnreg.inc.sync.aligned.u32 232;");
    const int c = wg - 1;
    float d[128];
#pragma unroll
    for (int i = 0; i < 128; ++i) d[i] = 0.f;
    for (int kt = 0; kt < k_tiles; ++kt) {
      const int s = kt % kStages;
      mbar_wait(full(s), (kt / kStages) & 1);
      const uint32_t sa = tiles + s * kStageBytes, sb = sa + kABytes;
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < kBK / 16; ++kk) {
        const uint64_t da = A_KMAJOR ? descriptor(sa + c * 64 * 128 + kk * 32, 16, 1024)
                                     : descriptor(sa + c * kBoxBytes + kk * 2048, kBoxBytes, 1024);
        const uint64_t db = B_KMAJOR ? descriptor(sb + kk * 32, 16, 1024)
                                     : descriptor(sb + kk * 2048, kBoxBytes, 1024);
        wgmma_m64n256k16<T, A_KMAJOR ? 0 : 1, B_KMAJOR ? 0 : 1>(d, da, db);
      }
      wgmma_commit();
      wgmma_wait_all();
      if (tid == 0) mbar_arrive(empty(s));
    }

    T* out = static_cast<T*>(ep.c) + int64_t(z) * ep.c_batch;
    const int warp = tid / 32, lane = tid % 32;
    const int row = m0 + c * 64 + warp * 16 + lane / 4;
    const bool paired = ep.ldc % 2 == 0;
#pragma unroll
    for (int j = 0; j < kBN / 8; ++j) {
      const int col = n0 + 8 * j + 2 * (lane % 4);
      if (col >= ep.N) continue;
      const bool both = col + 1 < ep.N;
      if (row < ep.M) store_pair(out, int64_t(row) * ep.ldc + col, d[4 * j], d[4 * j + 1], both, paired);
      if (row + 8 < ep.M)
        store_pair(out, int64_t(row + 8) * ep.ldc + col, d[4 * j + 2], d[4 * j + 3], both, paired);
    }
  }
#endif
}

// ---- host side ----

bool aligned(const void* p, int64_t ld, int64_t batch, int64_t batch_stride) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0 && ld % 8 == 0 && ld > 0 &&
         (batch == 1 || (batch_stride % 8 == 0 && batch_stride > 0));
}

template <typename T, bool A_KMAJOR, bool B_KMAJOR>
bool launch(const GemmProblem& p, const CUtensorMap& ma, const CUtensorMap& mb, cudaStream_t stream) {
  auto kernel = wgmma_gemm_kernel<T, A_KMAJOR, B_KMAJOR>;
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return false;
  static std::atomic<uint64_t> configured{0};  // per device: the shared-memory limit is raised
  const uint64_t bit = uint64_t(1) << (dev & 63);
  if (!(configured.load() & bit)) {
    if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes) !=
        cudaSuccess) {
      cudaGetLastError();
      return false;
    }
    configured.fetch_or(bit);
  }
  const int64_t tiles = int64_t((p.M + kBM - 1) / kBM) * ((p.N + kBN - 1) / kBN);
  Epilogue ep{p.c, p.ldc, p.c_batch, p.M, p.N, p.K};
  kernel<<<dim3(unsigned(tiles), 1, unsigned(p.batch)), kThreads, kSmemBytes, stream>>>(ma, mb, ep);
  return true;
}

}  // namespace

bool gemm(const GemmProblem& p, cudaStream_t stream) {
  if (p.M <= 0 || p.N <= 0 || p.K <= 0 || p.batch <= 0 || p.batch > 65535) return false;
  if (!aligned(p.a, p.lda, p.batch, p.a_batch) || !aligned(p.b, p.ldb, p.batch, p.b_batch))
    return false;
  CUtensorMap ma, mb;
  // A: (K, M) boxes of 64 x 128 when K-major, (M, K) boxes of 64 x 64 when M-major; B alike.
  bool ok = p.a_kmajor ? make_map(&ma, p.bf16, p.a, p.K, p.M, p.lda, p.batch, p.a_batch, kBM)
                       : make_map(&ma, p.bf16, p.a, p.M, p.K, p.lda, p.batch, p.a_batch, 64);
  ok = ok && (p.b_kmajor ? make_map(&mb, p.bf16, p.b, p.K, p.N, p.ldb, p.batch, p.b_batch, kBN)
                         : make_map(&mb, p.bf16, p.b, p.N, p.K, p.ldb, p.batch, p.b_batch, 64));
  if (!ok) return false;
  auto run = [&](auto tag) {
    using T = decltype(tag);
    if (p.a_kmajor && p.b_kmajor) return launch<T, true, true>(p, ma, mb, stream);
    if (p.a_kmajor) return launch<T, true, false>(p, ma, mb, stream);
    if (p.b_kmajor) return launch<T, false, true>(p, ma, mb, stream);
    return launch<T, false, false>(p, ma, mb, stream);
  };
  return p.bf16 ? run(__nv_bfloat16{}) : run(__half{});
}

}  // namespace ls::cuda::sm90a
