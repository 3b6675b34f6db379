// bf16 / fp16 GEMM for Hopper (sm_90a): the bulk tensor copy engine (TMA) feeds shared memory,
// warpgroup MMAs (wgmma) multiply from it, fp32 accumulation in registers.
//   C[z] (M, N) = A[z] (M, K) @ B[z] (K, N), operands in either layout (sm90a.h).
//
// Block tile 128 (M) x 256 (N), k-tiles of 64, three warpgroups (384 threads), one block per SM,
// persistent: block b takes work items b, b + gridDim.x, ... (a work item is one output tile of
// one batch, or one K range of a tile under split-K, below).
//   - warpgroup 0 is the producer: one thread issues the TMA copies of each k-tile into a 4-stage
//     ring of shared memory (48 KB a stage) and waits for a stage to be released before refilling
//     it. Completion is signalled on the stage's "full" mbarrier by the copy engine's byte count;
//     the consumers release a stage on its "empty" mbarrier. The ring runs on across work items,
//     so the next tile's first k-tiles load while the consumers store this one: with GPT-2's
//     K = 768 a tile has only 12 k-tiles, and one block per tile left the pipeline's fill and
//     the stores exposed.
//   - warpgroups 1 and 2 are the consumers: each owns 64 rows of the tile, 64 x 256 fp32
//     accumulators (128 registers a thread), and per k-tile issues four m64n256k16 wgmmas and
//     commits them; it then waits for the previous k-tile's group only (one group stays in
//     flight) and releases that k-tile's stage. The producer gives its registers to them
//     (setmaxnreg), so the accumulators never spill.
// Split-K: a problem of fewer tiles than the SMs (a weight gradient, (out, in) with K the token
//   count) would leave SMs idle, so its K range is cut into `splits` parts, as many as
//   gemm_splits' cost model says pay; each part writes fp32 partial sums to a workspace
//   (splits, M, N) and reduce_splits_kernel adds them in split order and rounds them into C, so
//   results do not depend on timing.
// Shared-memory layout: TMA writes each box with the 128-byte swizzle, in 1024-byte atoms of
//   8 rows x 128 bytes, and the wgmma descriptors describe the same swizzle:
//   - K-major operand (K contiguous): one box of 64 (K) x rows; row r at r * 128 bytes; a 16-wide
//     k-step is +32 bytes in the descriptor's start; stride between 8-row groups (SBO) 1024.
//   - MN-major operand (M or N contiguous): boxes of 64 (M or N) x 64 (K), each K row 128 bytes,
//     8 KB a box; the wgmma reads it transposed (imm-trans = 1); the 64-element chunks of M or N
//     are 8192 bytes apart (LBO), 8-row K groups 1024 (SBO); a k-step is +2048 bytes.
// Tails in M, N and K: the copy engine zero-fills the part of a box outside the tensor, so the
//   mainloop has no tail path; the epilogue stores only elements inside C.
// Epilogue: each consumer adds the bias (when given) to its accumulators, rounds them to the
//   output type and writes them through shared memory, so C is stored row by row (fp32 partials
//   under split-K go straight out, and reduce_splits_kernel adds the bias to their sum).
// Limits: 16-byte aligned operand bases, leading dims and batch strides multiples of 8 elements
//   (the copy engine's rule); otherwise gemm() declines and cuda/matmul.cu runs its mma.sync path.
#include "sm90a.h"

#include "../pack.cuh"
#include "hopper.cuh"
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <type_traits>

namespace ls::cuda::sm90a {

namespace {

constexpr int kBM = 128, kBN = 256, kBK = 64, kStages = 4;
constexpr int kConsumers = 2;
constexpr int kThreads = 128 * (1 + kConsumers);
constexpr int kABytes = kBM * kBK * 2, kBBytes = kBN * kBK * 2;
constexpr int kStageBytes = kABytes + kBBytes;
constexpr int kBoxBytes = 64 * 64 * 2;  // an MN-major box: 64 x 64 elements
// The epilogue's staging rows: per consumer, 64 rows of 128 bytes (64 16-bit outputs or 32
// floats) and 16 bytes of padding (so the 8 rows one store instruction touches fall in distinct
// banks).
constexpr int kStageRowBytes = 64 * 2 + 16, kStagingBytes = 64 * kStageRowBytes;
constexpr int kSmemBytes = kStages * kStageBytes + 1024 /* alignment slack */ + 2 * kStages * 8 +
                           kConsumers * kStagingBytes;
constexpr int kGroupM = 8;

struct Work {
  void* c;
  int64_t ldc, c_batch;
  const void* bias;  // (N,) in C's type or null
  float* partials;  // splits > 1: (splits, M, N) fp32
  bool vector_stores;  // C's base, ldc and N allow 16-byte stores
  int M, N, K;
  int tiles_m, tiles_n, items;  // items = tiles * batch * splits
  int splits, split_k_tiles;    // k-tiles per split (the last may have fewer)
};

// Work item idx -> batch z, tile origin (m0, n0), split and its k-tiles [kt0, kt1). Tiles are
// numbered in groups of kGroupM tile rows, so blocks running together share A and B tiles in L2;
// the splits of a tile are adjacent.
struct Item {
  int z, m0, n0, split, kt0, kt1;
};

__device__ __forceinline__ Item item_of(const Work& w, int idx) {
  Item it;
  it.split = idx % w.splits;
  idx /= w.splits;
  const int tiles = w.tiles_m * w.tiles_n;
  it.z = idx / tiles;
  const int t = idx % tiles, per_group = kGroupM * w.tiles_n;
  const int first_m = (t / per_group) * kGroupM, group_rows = min(w.tiles_m - first_m, kGroupM);
  it.m0 = (first_m + (t % per_group) % group_rows) * kBM;
  it.n0 = ((t % per_group) / group_rows) * kBN;
  it.kt0 = it.split * w.split_k_tiles;
  it.kt1 = min((w.K + kBK - 1) / kBK, it.kt0 + w.split_k_tiles);
  return it;
}

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

// Two accumulators (adjacent columns) as U at p: a 16-bit pair, or two floats.
template <typename U>
__device__ __forceinline__ void put2(unsigned char* p, float x, float y) {
  if constexpr (std::is_same_v<U, float>) *reinterpret_cast<float2*>(p) = make_float2(x, y);
  else *reinterpret_cast<uint32_t*>(p) = pack2<U>(x, y);
}

// A consumer's 64 x 256 accumulators (rows row0.., columns col0..) plus bias[column] (when bias is
// not null) to out (leading dim ld, rows below M and columns below N), rounded to U (the output
// type, or float for split-K's partials, whose sum gets the bias).
// Through its staging rows, 128 bytes of columns at a time (64 16-bit elements or 32 floats), so
// that C is written row by row: 16-byte stores, 8 lanes per 128-byte row segment, when `vec`
// (out and ld 16-byte aligned, N a multiple of 16 bytes), else one element a lane, a warp's 32
// consecutive. Stored straight from the registers (the wgmma accumulator layout puts a lane's 4
// bytes in 8 rows per store instruction) a 128 x 256 tile took about 7.5 us, more than the 12
// k-tiles of a K = 768 GEMM (bench/notes_cuda_sm90a.md).
template <typename U, typename B>
__device__ __forceinline__ void store_tile(const float (&d)[128], unsigned char* staging, U* out, int64_t ld,
                                           int row0, int col0, int M, int N, bool vec, int c,
                                           const B* bias) {
  constexpr int kCols = 128 / sizeof(U), kGroups = kCols / 8, kChunk = 16 / sizeof(U);
  const int tid = threadIdx.x % 128, lane = tid % 32;
  // accumulator layout: per 8 columns j, rows lane/4 and lane/4 + 8 of the warp's 16, columns
  // 8j + 2 (lane % 4) + {0, 1}
  const int lr = (tid / 32) * 16 + lane / 4;
#pragma unroll
  for (int p = 0; p < kBN / kCols; ++p) {
#pragma unroll
    for (int jj = 0; jj < kGroups; ++jj) {
      const int j = kGroups * p + jj, lc = 8 * jj + 2 * (lane % 4);
      float b0 = 0.f, b1 = 0.f;
      if (bias) {
        const int gc = col0 + kCols * p + lc;
        if (gc < N) b0 = float(bias[gc]);
        if (gc + 1 < N) b1 = float(bias[gc + 1]);
      }
      put2<U>(staging + lr * kStageRowBytes + lc * sizeof(U), d[4 * j] + b0, d[4 * j + 1] + b1);
      put2<U>(staging + (lr + 8) * kStageRowBytes + lc * sizeof(U), d[4 * j + 2] + b0, d[4 * j + 3] + b1);
    }
    named_barrier_sync(1 + c, 128);
    const int cb = col0 + kCols * p;
    if (vec) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {  // 64 rows x 8 chunks of 16 bytes
        const int q = tid + 128 * i, r = q / 8, ch = q % 8;
        if (row0 + r < M && cb + kChunk * ch < N)  // a whole chunk: N a multiple of kChunk, or C padded
          *reinterpret_cast<uint4*>(out + int64_t(row0 + r) * ld + cb + kChunk * ch) =
              *reinterpret_cast<const uint4*>(staging + r * kStageRowBytes + ch * 16);
      }
    } else {
      for (int i = 0; i < 64 * kCols / 128; ++i) {
        const int q = tid + 128 * i, r = q / kCols, e = q % kCols;
        if (row0 + r < M && cb + e < N)
          out[int64_t(row0 + r) * ld + cb + e] = *reinterpret_cast<const U*>(staging + r * kStageRowBytes + e * sizeof(U));
      }
    }
    named_barrier_sync(1 + c, 128);  // read before the next columns overwrite it
  }
}

#endif  // sm_90a device code

template <typename T, bool A_KMAJOR, bool B_KMAJOR>
__global__ void __launch_bounds__(kThreads, 1)
    wgmma_gemm_kernel(const __grid_constant__ CUtensorMap map_a,
                      const __grid_constant__ CUtensorMap map_b, Work work) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ __align__(1024) unsigned char smem[];
  // The swizzle atoms must start on 1024-byte boundaries.
  const uint32_t tiles = (smem_addr(smem) + 1023) & ~uint32_t(1023);
  const uint32_t bars = tiles + kStages * kStageBytes;
  auto full = [&](int s) { return bars + 8 * s; };
  auto empty = [&](int s) { return bars + 8 * (kStages + s); };

  if (threadIdx.x == 0) {
    for (int s = 0; s < kStages; ++s) {
      mbar_init(full(s), 1);
      mbar_init(empty(s), kConsumers);
    }
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();

  // `it` counts the k-tiles this block has passed through the ring, across its work items: stage
  // it % kStages, in round it / kStages. The producer and the consumers count alike.
  const int wg = threadIdx.x / 128, tid = threadIdx.x % 128;
  if (wg == 0) {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 40;");
    if (tid == 0) {
      uint32_t it = 0;
      for (int idx = blockIdx.x; idx < work.items; idx += gridDim.x) {
        const Item w = item_of(work, idx);
        for (int kt = w.kt0; kt < w.kt1; ++kt, ++it) {
          const int s = it % kStages, k0 = kt * kBK;
          if (it >= kStages) mbar_wait(empty(s), (it / kStages - 1) & 1);
          const uint32_t sa = tiles + s * kStageBytes, sb = sa + kABytes;
          mbar_expect_tx(full(s), kStageBytes);
          if constexpr (A_KMAJOR) {
            tma_load(sa, &map_a, k0, w.m0, w.z, full(s));
          } else {
            for (int j = 0; j < kBM / 64; ++j) tma_load(sa + j * kBoxBytes, &map_a, w.m0 + 64 * j, k0, w.z, full(s));
          }
          if constexpr (B_KMAJOR) {
            tma_load(sb, &map_b, k0, w.n0, w.z, full(s));
          } else {
            for (int j = 0; j < kBN / 64; ++j) tma_load(sb + j * kBoxBytes, &map_b, w.n0 + 64 * j, k0, w.z, full(s));
          }
        }
      }
    }
  } else {
    asm volatile("setmaxnreg.inc.sync.aligned.u32 232;");
    const int c = wg - 1;
    unsigned char* staging = smem + (bars + 2 * kStages * 8 - smem_addr(smem)) + c * kStagingBytes;
    uint32_t it = 0;
    float d[128];
    for (int idx = blockIdx.x; idx < work.items; idx += gridDim.x) {
      const Item w = item_of(work, idx);
#pragma unroll
      for (int i = 0; i < 128; ++i) d[i] = 0.f;
      for (int kt = w.kt0; kt < w.kt1; ++kt, ++it) {
        const int s = it % kStages;
        mbar_wait(full(s), (it / kStages) & 1);
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
        // the previous k-tile's wgmmas are done: its stage goes back to the producer
        wgmma_wait<1>();
        if (kt > w.kt0 && tid == 0) mbar_arrive(empty((it - 1) % kStages));
      }
      wgmma_wait<0>();
      // (an empty K range, a split past K's end, consumed no stage and stores zeros)
      if (w.kt1 > w.kt0 && tid == 0) mbar_arrive(empty((it - 1) % kStages));

      const int row0 = w.m0 + c * 64;
      if (work.splits == 1)
        store_tile(d, staging, static_cast<T*>(work.c) + int64_t(w.z) * work.c_batch, work.ldc, row0, w.n0,
                   work.M, work.N, work.vector_stores, c, static_cast<const T*>(work.bias));
      else
        store_tile(d, staging, work.partials + int64_t(w.split) * work.M * work.N, int64_t(work.N), row0,
                   w.n0, work.M, work.N, work.N % 4 == 0, c, static_cast<const T*>(nullptr));
    }
  }
#endif
}

// C (M, N) = the splits' partials (splits, M, N) summed in split order, plus bias[column] when
// bias is not null, rounded to T. V consecutive elements of a row per thread and step: 4 (float4
// loads, one 8-byte store) when N, ldc and C allow it, else 1. With one element and a 64-bit
// division per element the GPT-2 step's 48 reductions took 0.486 ms on an H100; 0.370 with four
// and a block per 256 elements, 0.351-0.356 with the grid counting the groups.
template <typename T, int V>
__global__ void reduce_splits_kernel(const float* __restrict__ partials, int splits, int M, int N,
                                     T* __restrict__ c, int64_t ldc, const T* __restrict__ bias) {
  static_assert(V == 1 || V == 4, "one element or a float4");
  const int64_t mn = int64_t(M) * N, groups = mn / V;
  for (int64_t g = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; g < groups;
       g += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = g * V, row = i / N, col = i - row * N;
    float acc[V];
    if constexpr (V == 4) {
      const float4 first = reinterpret_cast<const float4*>(partials)[g];
      acc[0] = first.x, acc[1] = first.y, acc[2] = first.z, acc[3] = first.w;
      for (int s = 1; s < splits; ++s) {
        const float4 more = reinterpret_cast<const float4*>(partials + s * mn)[g];
        acc[0] += more.x, acc[1] += more.y, acc[2] += more.z, acc[3] += more.w;
      }
    } else {
      acc[0] = partials[i];
      for (int s = 1; s < splits; ++s) acc[0] += partials[s * mn + i];
    }
    if (bias)
#pragma unroll
      for (int j = 0; j < V; ++j) acc[j] += float(bias[col + j]);
    if constexpr (V == 4)
      *reinterpret_cast<uint2*>(c + row * ldc + col) = make_uint2(pack2<T>(acc[0], acc[1]), pack2<T>(acc[2], acc[3]));
    else
      c[row * ldc + col] = T(acc[0]);
  }
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
  Work w{};
  w.c = p.c;
  w.ldc = p.ldc;
  w.c_batch = p.c_batch;
  w.bias = p.bias;
  w.partials = p.splits > 1 ? p.partials : nullptr;
  // A row's last chunk may run past N into C's own padding (it stores the zeros of B's
  // zero-filled columns there).
  w.vector_stores = reinterpret_cast<uintptr_t>(p.c) % 16 == 0 && p.ldc % 8 == 0 &&
                    (p.N % 8 == 0 || (p.c_padded && p.ldc >= (int64_t(p.N) + 7) / 8 * 8)) &&
                    (p.batch == 1 || p.c_batch % 8 == 0);
  w.M = p.M;
  w.N = p.N;
  w.K = p.K;
  w.tiles_m = (p.M + kBM - 1) / kBM;
  w.tiles_n = (p.N + kBN - 1) / kBN;
  w.splits = w.partials ? p.splits : 1;
  w.split_k_tiles = ((p.K + kBK - 1) / kBK + w.splits - 1) / w.splits;
  const int64_t items = int64_t(w.tiles_m) * w.tiles_n * p.batch * w.splits;
  if (items >= (int64_t(1) << 31)) return false;
  w.items = int(items);
  const int blocks = int(std::min<int64_t>(items, std::max(p.sms, 1)));
  kernel<<<blocks, kThreads, kSmemBytes, stream>>>(ma, mb, w);
  if (w.splits > 1) {
    const int64_t mn = int64_t(p.M) * p.N;
    const bool vec4 = p.N % 4 == 0 && p.ldc % 4 == 0 && reinterpret_cast<uintptr_t>(p.c) % 8 == 0;
    const int64_t groups = vec4 ? mn / 4 : mn;  // a thread per group of 4 or 1 elements
    const unsigned grid = unsigned(std::min<int64_t>((groups + 255) / 256, 4096));
    auto reduce = vec4 ? reduce_splits_kernel<T, 4> : reduce_splits_kernel<T, 1>;
    reduce<<<grid, 256, 0, stream>>>(p.partials, w.splits, p.M, p.N, static_cast<T*>(p.c), p.ldc,
                                     static_cast<const T*>(p.bias));
  }
  return true;
}

}  // namespace

int gemm_splits(const GemmProblem& p) {
  const int64_t tiles = int64_t((p.M + kBM - 1) / kBM) * ((p.N + kBN - 1) / kBN);
  const int k_tiles = (p.K + kBK - 1) / kBK;
  if (p.batch != 1 || p.sms <= 0 || tiles >= p.sms) return 1;
  // Estimated microseconds: the k-tiles of the busiest SM at about 0.85 us each (a 128 x 256 x
  // 64 step at about 5 TFLOP/s per SM), plus the partials written and read back at about
  // 2.5 TB/s (2.5e6 bytes per us) and C written.
  const double mn = double(p.M) * p.N;
  auto cost = [&](int s) {
    const int per = (k_tiles + s - 1) / s;
    const double waves = std::ceil(double(tiles * s) / p.sms);
    return waves * per * 0.85 + (s == 1 ? 0.0 : (2.0 * s * mn * 4 + mn * 2) / 2.5e6);
  };
  int best = 1;
  for (int s = 2; s <= 16 && k_tiles / s >= 4; ++s)
    if ((k_tiles + s - 1) / s * (s - 1) < k_tiles && cost(s) < cost(best)) best = s;  // no empty split
  return best;
}

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
