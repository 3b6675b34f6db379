// matmul on the GPU with torch semantics for operands of two or more dims (the public matmul in
// cpp/ops/matmul.cpp promotes 1-D operands before the registry call and squeezes after):
//   A (..., M, K) @ B (..., K, N) -> C (..., M, N),   C[z, m, n] = sum_k A[z, m, k] B[z, k, n]
// with the batch dims "..." broadcast. The backward (declared in cpp/ops/matmul.cpp) calls matmul
// on transposed views, dA = g B^T and dB = A^T g, so column-major operands are the common case
// and are read in place.
//
// bf16 / fp16: a tensor-core GEMM with fp32 accumulation, output rounded to the input dtype.
//   - Block tile 128 (M) x 256 (N) x 32 (K), 8 warps as 2 x 4, each warp owns 64 x 64 of C:
//     4 x 8 mma.sync.m16n8k16 per 16-wide K step, fed by ldmatrix.x4 (ldmatrix.trans for an
//     operand whose rows, not K, are contiguous in memory). When that tile would leave SMs idle
//     (fewer tiles than SMs), a 128 x 128 tile (warps of 64 x 32, two blocks per SM) runs instead.
//   - Shared memory is filled by 16-byte cp.async in a 4-stage ring (96 KB per block, 64 KB for
//     the small tile), so three k-tiles are in flight while the warps multiply the fourth. Each
//     tile is stored in 16-byte chunks with an XOR swizzle of the chunk index, so the 8 row
//     addresses of one ldmatrix phase, and the 8 chunks one cp.async phase writes, fall in 8
//     distinct bank groups.
//   - Both layouts of each operand are template parameters: A with K contiguous (row-major) or
//     M contiguous (a transposed view), B with N contiguous (row-major) or K contiguous.
//     cp.async needs 16-byte aligned sources, so an operand whose other stride is not a multiple
//     of 8 elements, whose base is misaligned, or which has no unit stride at all is first copied
//     into a buffer with K contiguous and a padded leading dimension (an O(MK) copy for an
//     O(MNK) product).
//   - Tails in M, N and K: every cp.async carries a source size, 0..16 bytes, and the rest of
//     the chunk is zero-filled, so tails need no separate path and nothing past a row is read.
//   - Blocks are numbered in groups of 8 tile rows so that blocks running together share their
//     A and B tiles in L2.
// fp32 / fp64: a tiled SIMT kernel (64 x 64 tile of C per block, K steps of 16 through shared
//   memory, 4 x 4 outputs per thread) on arbitrary strides, accumulating in the input type
//   (no TF32), so fp32 matches the CPU to rounding.
// Batch: blockIdx.z walks the broadcast batch; each operand's batch offset comes from its own
//   batch strides (0 where broadcast). A batched A against a 2-D B whose batch folds into rows
//   is one GEMM with M' = batch * M, as on the CPU.
// Limits: M, N, K below 2^31 each; no wgmma (sm_90a) path, so Hopper runs the mma.sync path.
#include <algorithm>
#include <atomic>
#include <type_traits>

#include "core/registry.h"
#include "elementwise.cuh"
#include "ops/ops.h"

namespace ls::cuda {

namespace {

// ---- batch indexing shared by both kernels ----

constexpr int kMaxBatchDims = 6;

// The output's batch dims (merged where possible) with each operand's strides; z is the flat
// batch index of the output.
struct BatchIndex {
  int nd;
  int64_t size[kMaxBatchDims];
  int64_t sa[kMaxBatchDims], sb[kMaxBatchDims];

  __device__ __forceinline__ void offsets(int64_t z, int64_t& oa, int64_t& ob) const {
    oa = 0;
    ob = 0;
    for (int d = nd - 1; d >= 0; --d) {
      int64_t i = z % size[d];
      z /= size[d];
      oa += i * sa[d];
      ob += i * sb[d];
    }
  }
};

// One GEMM problem (or a batch of them). A(m, k) at a[m * a_rs + k * a_ks], B(k, n) at
// b[k * b_ks + n * b_ns], C(m, n) of batch z at c[z * c_batch + m * ldc + n].
template <typename T>
struct GemmArgs {
  const T* a;
  const T* b;
  T* c;
  int M, N, K;
  int64_t a_rs, a_ks, b_ks, b_ns;
  int64_t ldc, c_batch;
  BatchIndex batch;
  int64_t z0;  // the launch covers batches z0 + blockIdx.z
};

// ---- tensor-core kernel (bf16, fp16) ----

constexpr int kBK = 32;     // k-tile depth: 64-byte rows for K-contiguous tiles
constexpr int kGroupM = 8;  // tile rows per L2 group

// The block tile: BM x BN of C per block of WARPS_M x WARPS_N warps, STAGES k-tiles in flight,
// MIN_BLOCKS blocks per SM asked of the register allocator.
template <int BM, int BN, int WARPS_M, int WARPS_N, int STAGES, int MIN_BLOCKS>
struct TileConfig {
  static constexpr int kBM = BM, kBN = BN, kWarpsN = WARPS_N;
  static constexpr int kStages = STAGES, kMinBlocks = MIN_BLOCKS;
  static constexpr int kThreads = 32 * WARPS_M * WARPS_N;
  static constexpr int kWM = BM / WARPS_M, kWN = BN / WARPS_N;  // C per warp
  static constexpr int kMI = kWM / 16, kNI = kWN / 8;            // m16 and n8 fragments per warp
  static constexpr int kSmemBytes = STAGES * (BM + BN) * kBK * 2;
  static_assert(kMI * 16 == kWM && kNI * 8 == kWN && kNI % 2 == 0, "warp tile must be 16 x 16k");
};
// Large problems: 64 x 64 per warp, the most mma per byte of shared memory read; 96 KB.
using BigTile = TileConfig<128, 256, 2, 4, 4, 1>;
// Problems with fewer big tiles than SMs (weight gradients such as 768 x 3072 over many tokens):
// half the tile, two blocks per SM; 64 KB.
using SmallTile = TileConfig<128, 128, 2, 4, 4, 2>;

// A ROWS x COLS tile of 16-bit elements in shared memory, COLS contiguous, made of 16-byte
// chunks (8 elements). Chunk c of row r is stored at chunk c ^ swizzle(r): 8 consecutive rows
// read at one logical chunk then hit 8 different 16-byte bank groups.
template <int ROWS, int COLS>
struct SmemTile {
  static constexpr int kChunks = COLS / 8;  // per row
  static constexpr int kElems = ROWS * COLS;
  static_assert(kChunks == 4 || kChunks % 8 == 0, "swizzle written for rows of 4 or 8n chunks");
  __device__ __forceinline__ static int offset(int r, int c) {
    // 64-byte rows: two rows share 128 bytes, so rows r and r + 2 collide unless permuted.
    int sw = kChunks >= 8 ? (r & 7) : ((r >> 1) & 3);
    return r * COLS + ((c ^ sw) << 3);
  }
};

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return uint32_t(__cvta_generic_to_shared(p));
}

// 16-byte copy global -> shared of which the first `bytes` are read and the rest zero-filled.
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, int bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

template <bool TRANS>
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  if constexpr (TRANS)
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
  else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}

// d += a (16 x 16, row) * b (16 x 8, col), fp32 accumulators.
template <typename T>
__device__ __forceinline__ void mma16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>)
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
                 "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  else
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, "
                 "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// Loads one operand's k-tiles into shared memory. The operand is R x K (R = M for A, N for B),
// element (r, k) at src[r * ld + k] when KMAJOR (K contiguous), else at src[k * ld + r]. In
// shared memory a KMAJOR tile is stored [R_TILE][kBK], the other [kBK][R_TILE]: always as in
// global memory, so every 16-byte chunk copies straight across.
template <typename T, bool KMAJOR, int R_TILE, int THREADS>
struct TileLoader {
  using Tile = std::conditional_t<KMAJOR, SmemTile<R_TILE, kBK>, SmemTile<kBK, R_TILE>>;
  static constexpr int kPer = Tile::kElems / 8 / THREADS;  // chunks per thread per k-tile
  static_assert(kPer * 8 * THREADS == Tile::kElems, "tile must split evenly over threads");

  const T* base;
  const T* ptr[kPer];  // the chunk's source at k-tile 0
  int soff[kPer];      // its shared-memory offset in elements
  int rlim[kPer];      // KMAJOR: 1 when the row exists; else: valid elements of the chunk (0..8)
  int kidx[kPer];      // k of the chunk's first element at k-tile 0
  int64_t kstep;       // how far a chunk's source moves per k-tile
  int K;

  __device__ __forceinline__ TileLoader(const T* src, int64_t ld, int R, int K_, int r0, int tid)
      : base(src), kstep(KMAJOR ? kBK : kBK * ld), K(K_) {
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
      int q = tid + i * THREADS;
      int row = q / Tile::kChunks, chunk = q % Tile::kChunks;
      soff[i] = Tile::offset(row, chunk);
      if constexpr (KMAJOR) {  // row = r within the tile, chunk = 8 k's
        int r = r0 + row;
        rlim[i] = r < R;
        kidx[i] = chunk * 8;
        ptr[i] = src + int64_t(r) * ld + chunk * 8;
      } else {  // row = k, chunk = 8 r's
        int r = r0 + chunk * 8;
        rlim[i] = max(0, min(8, R - r));
        kidx[i] = row;
        ptr[i] = src + int64_t(row) * ld + r;
      }
    }
  }

  // Issue the copies of k-tile kt into the stage at shared address `stage`.
  __device__ __forceinline__ void load(uint32_t stage, int kt) const {
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
      int k = kt * kBK + kidx[i];
      int n = KMAJOR ? (rlim[i] ? max(0, min(8, K - k)) : 0) : (k < K ? rlim[i] : 0);
      const T* src = n ? ptr[i] + kt * kstep : base;  // nothing is read when n == 0
      cp_async16(stage + soff[i] * 2, src, n * 2);
    }
  }
};

// Shared-memory offset (elements) of this lane's ldmatrix row for A's fragment (mi, kk): the
// 16 x 16 block at rows wm*kWM + mi*16, k = kk*16. Matrices 0..3 of the x4 are (rows 0-7, k 0-7),
// (rows 8-15, k 0-7), (rows 0-7, k 8-15), (rows 8-15, k 8-15): a0..a3 of mma.m16n8k16.
template <typename C, bool KMAJOR>
__device__ __forceinline__ int a_frag_offset(int lane, int wm, int mi, int kk) {
  int j = lane >> 3, m = wm * C::kWM + mi * 16;
  if constexpr (KMAJOR) {  // [kBM][kBK]: lane gives row m + (lane & 15), chunk kk*2 + lane/16
    return SmemTile<C::kBM, kBK>::offset(m + (lane & 15), kk * 2 + (lane >> 4));
  } else {  // [kBK][kBM], read transposed: lane gives k row, chunk of 8 m's
    return SmemTile<kBK, C::kBM>::offset(kk * 16 + (j >> 1) * 8 + (lane & 7), (m + (j & 1) * 8) >> 3);
  }
}

// The same for B's n8 fragment pair (2np, 2np+1) at k = kk*16: matrices 0..3 are b0, b1 of
// n-tile 2np and b0, b1 of n-tile 2np+1.
template <typename C, bool KMAJOR>
__device__ __forceinline__ int b_frag_offset(int lane, int wn, int np, int kk) {
  int j = lane >> 3, n = wn * C::kWN + np * 16 + (j >> 1) * 8;
  if constexpr (KMAJOR) {  // [kBN][kBK]: lane gives row n + lane%8, chunk of 8 k's
    return SmemTile<C::kBN, kBK>::offset(n + (lane & 7), kk * 2 + (j & 1));
  } else {  // [kBK][kBN], read transposed
    return SmemTile<kBK, C::kBN>::offset(kk * 16 + (j & 1) * 8 + (lane & 7), n >> 3);
  }
}

template <typename T> struct Pair2;
template <> struct Pair2<__nv_bfloat16> {
  using type = __nv_bfloat162;
  __device__ static type make(float x, float y) { return __floats2bfloat162_rn(x, y); }
};
template <> struct Pair2<__half> {
  using type = __half2;
  __device__ static type make(float x, float y) { return __floats2half2_rn(x, y); }
};

// C (row, col) and (row, col + 1) of one batch from two fp32 accumulators.
template <typename T>
__device__ __forceinline__ void store_pair(T* c, int64_t ldc, int M, int N, int row, int col,
                                           float x, float y, bool paired) {
  if (row >= M) return;
  T* p = c + int64_t(row) * ldc + col;
  if (paired && col + 1 < N) {
    *reinterpret_cast<typename Pair2<T>::type*>(p) = Pair2<T>::make(x, y);
  } else {
    if (col < N) p[0] = convert<T>(x);
    if (col + 1 < N) p[1] = convert<T>(y);
  }
}

template <typename T, typename C, bool A_KMAJOR, bool B_KMAJOR>
__global__ void __launch_bounds__(C::kThreads, C::kMinBlocks) mma_gemm_kernel(GemmArgs<T> p) {
  constexpr int kBM = C::kBM, kBN = C::kBN, kStages = C::kStages;
  constexpr int kWM = C::kWM, kWN = C::kWN, kMI = C::kMI, kNI = C::kNI;
  extern __shared__ __align__(128) unsigned char smem[];
  constexpr int kAElems = kBM * kBK, kBElems = kBN * kBK;
  const uint32_t sA = smem_addr(smem), sB = sA + kStages * kAElems * 2;

  // Tile order: groups of kGroupM tile rows, column by column inside a group.
  const int tiles_m = (p.M + kBM - 1) / kBM, tiles_n = (p.N + kBN - 1) / kBN;
  const int pid = blockIdx.x, per_group = kGroupM * tiles_n;
  const int first_m = (pid / per_group) * kGroupM, group_rows = min(tiles_m - first_m, kGroupM);
  const int tm = first_m + (pid % per_group) % group_rows, tn = (pid % per_group) / group_rows;
  const int m0 = tm * kBM, n0 = tn * kBN;

  int64_t z = p.z0 + blockIdx.z, oa, ob;
  p.batch.offsets(z, oa, ob);
  T* c = p.c + z * p.c_batch;  // c points at C[z, 0, 0]

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = warp / C::kWarpsN, wn = warp % C::kWarpsN;
  TileLoader<T, A_KMAJOR, kBM, C::kThreads> la(p.a + oa, A_KMAJOR ? p.a_rs : p.a_ks, p.M, p.K, m0, tid);
  TileLoader<T, B_KMAJOR, kBN, C::kThreads> lb(p.b + ob, B_KMAJOR ? p.b_ns : p.b_ks, p.N, p.K, n0, tid);

  float acc[kMI][kNI][4];
#pragma unroll
  for (int mi = 0; mi < kMI; ++mi)
#pragma unroll
    for (int ni = 0; ni < kNI; ++ni)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[mi][ni][e] = 0.f;

  const int KT = (p.K + kBK - 1) / kBK;
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < KT) {
      la.load(sA + s * kAElems * 2, s);
      lb.load(sB + s * kBElems * 2, s);
    }
    cp_async_commit();  // empty groups keep the group count in step with the k-tiles
  }

  for (int kt = 0; kt < KT; ++kt) {
    cp_async_wait<kStages - 2>();  // this thread's copies of k-tile kt have landed
    __syncthreads();               // everyone's have, and everyone is done with k-tile kt - 1
    const int next = kt + kStages - 1;
    if (next < KT) {  // refill the stage k-tile kt - 1 used
      la.load(sA + (next % kStages) * kAElems * 2, next);
      lb.load(sB + (next % kStages) * kBElems * 2, next);
    }
    cp_async_commit();

    const uint32_t a_st = sA + (kt % kStages) * kAElems * 2;
    const uint32_t b_st = sB + (kt % kStages) * kBElems * 2;
#pragma unroll
    for (int kk = 0; kk < kBK / 16; ++kk) {
      uint32_t af[kMI][4], bf[kNI][2];
#pragma unroll
      for (int mi = 0; mi < kMI; ++mi)
        ldmatrix_x4<!A_KMAJOR>(af[mi], a_st + a_frag_offset<C, A_KMAJOR>(lane, wm, mi, kk) * 2);
#pragma unroll
      for (int np = 0; np < kNI / 2; ++np) {
        uint32_t r[4];
        ldmatrix_x4<!B_KMAJOR>(r, b_st + b_frag_offset<C, B_KMAJOR>(lane, wn, np, kk) * 2);
        bf[2 * np][0] = r[0];
        bf[2 * np][1] = r[1];
        bf[2 * np + 1][0] = r[2];
        bf[2 * np + 1][1] = r[3];
      }
#pragma unroll
      for (int mi = 0; mi < kMI; ++mi)
#pragma unroll
        for (int ni = 0; ni < kNI; ++ni) mma16816<T>(acc[mi][ni], af[mi], bf[ni]);
    }
  }
  cp_async_wait<0>();

  // Accumulator e of fragment (mi, ni) is C row g (+8 for e >= 2), column 2t + (e & 1).
  const int g = lane >> 2, t = lane & 3;
  const bool paired = (p.ldc % 2 == 0) && (p.c_batch % 2 == 0);
#pragma unroll
  for (int mi = 0; mi < kMI; ++mi) {
    int row = m0 + wm * kWM + mi * 16 + g;
#pragma unroll
    for (int ni = 0; ni < kNI; ++ni) {
      int col = n0 + wn * kWN + ni * 8 + 2 * t;
      store_pair(c, p.ldc, p.M, p.N, row, col, acc[mi][ni][0], acc[mi][ni][1], paired);
      store_pair(c, p.ldc, p.M, p.N, row + 8, col, acc[mi][ni][2], acc[mi][ni][3], paired);
    }
  }
}

// ---- SIMT kernel (fp32, fp64) ----

constexpr int kSM = 64, kSN = 64, kSK = 16, kSThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kSThreads) simt_gemm_kernel(GemmArgs<T> p) {
  // +1 column: a warp that fills one m (or n) over 16 consecutive k's hits 16 banks, not one.
  __shared__ T As[kSK][kSM + 1];
  __shared__ T Bs[kSK][kSN + 1];
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  const int m0 = blockIdx.x * kSM, n0 = blockIdx.y * kSN;  // M on x: folded batches make M long
  int64_t z = p.z0 + blockIdx.z, oa, ob;
  p.batch.offsets(z, oa, ob);
  const T* a = p.a + oa;  // a points at A[z, 0, 0]
  const T* b = p.b + ob;
  T* c = p.c + z * p.c_batch;
  // Consecutive threads walk the operand's unit-stride dim, so global loads coalesce.
  const bool a_kfast = p.a_ks == 1, b_nfast = p.b_ns == 1;

  T acc[4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = T(0);

  for (int k0 = 0; k0 < p.K; k0 += kSK) {
#pragma unroll
    for (int u = 0; u < kSM * kSK / kSThreads; ++u) {
      int q = tid + u * kSThreads;
      int mm = a_kfast ? q / kSK : q % kSM, kk = a_kfast ? q % kSK : q / kSM;
      int m = m0 + mm, k = k0 + kk;
      As[kk][mm] = (m < p.M && k < p.K) ? a[int64_t(m) * p.a_rs + int64_t(k) * p.a_ks] : T(0);
    }
#pragma unroll
    for (int u = 0; u < kSN * kSK / kSThreads; ++u) {
      int q = tid + u * kSThreads;
      int nn = b_nfast ? q % kSN : q / kSK, kk = b_nfast ? q / kSN : q % kSK;
      int n = n0 + nn, k = k0 + kk;
      Bs[kk][nn] = (n < p.N && k < p.K) ? b[int64_t(k) * p.b_ks + int64_t(n) * p.b_ns] : T(0);
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kSK; ++kk) {
      T av[4], bv[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) av[i] = As[kk][ty + 16 * i];
#pragma unroll
      for (int j = 0; j < 4; ++j) bv[j] = Bs[kk][tx + 16 * j];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fma(av[i], bv[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    int m = m0 + ty + 16 * i;
    if (m >= p.M) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      int n = n0 + tx + 16 * j;
      if (n < p.N) c[int64_t(m) * p.ldc + n] = acc[i][j];
    }
  }
}

// ---- launchers ----

constexpr int64_t kMaxGridZ = 65535;

// Per device: multiprocessor count, read once.
int sm_count(int dev) {
  static std::atomic<int> counts[64];
  int n = counts[dev & 63].load();
  if (n == 0) {
    check(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev), "matmul");
    counts[dev & 63].store(n);
  }
  return n;
}

template <typename T, typename C, bool A_KMAJOR, bool B_KMAJOR>
void launch_mma(GemmArgs<T> p, int64_t nbatch, int dev) {
  auto kernel = mma_gemm_kernel<T, C, A_KMAJOR, B_KMAJOR>;
  // More than 48 KB of dynamic shared memory must be allowed per device, once.
  static std::atomic<uint64_t> configured{0};
  uint64_t bit = uint64_t(1) << (dev & 63);
  if (!(configured.load() & bit)) {
    check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, C::kSmemBytes),
          "matmul");
    configured.fetch_or(bit);
  }
  int64_t tiles = int64_t((p.M + C::kBM - 1) / C::kBM) * ((p.N + C::kBN - 1) / C::kBN);
  for (int64_t z0 = 0; z0 < nbatch; z0 += kMaxGridZ) {
    p.z0 = z0;
    dim3 grid(unsigned(tiles), 1, unsigned(std::min(kMaxGridZ, nbatch - z0)));
    kernel<<<grid, C::kThreads, C::kSmemBytes>>>(p);
    check_launch("matmul");
  }
}

// The big tile unless it leaves SMs idle: then the small one, two blocks per SM.
template <typename T, bool A_KMAJOR, bool B_KMAJOR>
void launch_mma(GemmArgs<T> p, int64_t nbatch) {
  int dev = 0;
  check(cudaGetDevice(&dev), "matmul");
  int64_t big = nbatch * ((p.M + BigTile::kBM - 1) / BigTile::kBM) *
                ((p.N + BigTile::kBN - 1) / BigTile::kBN);
  if (big >= sm_count(dev))
    launch_mma<T, BigTile, A_KMAJOR, B_KMAJOR>(p, nbatch, dev);
  else
    launch_mma<T, SmallTile, A_KMAJOR, B_KMAJOR>(p, nbatch, dev);
}

template <typename T>
void launch_simt(GemmArgs<T> p, int64_t nbatch) {
  LS_CHECK((p.N + kSN - 1) / kSN <= 65535, ValueError, "matmul: the float32/float64 CUDA kernel "
           "takes N up to ", 65535 * kSN, ", got ", p.N);
  for (int64_t z0 = 0; z0 < nbatch; z0 += kMaxGridZ) {
    p.z0 = z0;
    dim3 grid(unsigned((p.M + kSM - 1) / kSM), unsigned((p.N + kSN - 1) / kSN),
              unsigned(std::min(kMaxGridZ, nbatch - z0)));
    simt_gemm_kernel<T><<<grid, kSThreads>>>(p);
    check_launch("matmul");
  }
}

// ---- entry ----

// Which of an R x K operand's dims is contiguous, for the cp.async path: (r, k) at r*rs + k*ks.
// K contiguous (kmajor) needs rs to keep 16-byte alignment; R contiguous needs ks to. A dim of
// size 1 has no stride to honour.
enum class Major { K, R, None };

Major classify(int64_t rs, int64_t ks, int64_t R, int64_t K) {
  if ((ks == 1 || K == 1) && (R == 1 || rs % 8 == 0)) return Major::K;
  if ((rs == 1 || R == 1) && (K == 1 || ks % 8 == 0)) return Major::R;
  return Major::None;
}

// (rs, ks) of operand x: A (..., M, K) has R = M; B (..., K, N) has R = N.
void operand_strides(const Tensor& x, bool is_b, int64_t& R, int64_t& K, int64_t& rs, int64_t& ks) {
  int64_t nd = x.dim();
  int64_t r_dim = is_b ? nd - 1 : nd - 2, k_dim = is_b ? nd - 2 : nd - 1;
  R = x.shape()[r_dim];
  K = x.shape()[k_dim];
  rs = x.strides()[r_dim];
  ks = x.strides()[k_dim];
}

bool cp_async_ready(const Tensor& x, bool is_b) {
  int64_t R, K, rs, ks;
  operand_strides(x, is_b, R, K, rs, ks);
  if (classify(rs, ks, R, K) == Major::None) return false;
  if (reinterpret_cast<uintptr_t>(x.raw_data()) % 16 != 0) return false;
  for (int64_t d = 0; d < x.dim() - 2; ++d)
    if (x.shape()[d] > 1 && x.strides()[d] % 8 != 0) return false;
  return true;
}

// x itself when the tensor-core kernel can read it in place; else a copy with K contiguous and
// the row length padded to a multiple of 8 (the padding is never read: K tails are zero-filled).
Tensor for_tensor_cores(const Tensor& x, bool is_b) {
  if (cp_async_ready(x, is_b)) return x;
  int64_t R, K, rs, ks;
  operand_strides(x, is_b, R, K, rs, ks);
  Shape shape(x.shape().begin(), x.shape().end() - 2);
  shape.push_back(R);
  shape.push_back((K + 7) / 8 * 8);
  Tensor buf = Tensor::empty(shape, x.dtype(), x.device());
  Tensor view = ops::slice(buf, -1, 0, K);  // (..., R, K)
  if (is_b) view = ops::transpose(view, -1, -2);  // (..., K, N) with K contiguous
  ops::copy_(view, x);
  return view;
}

// Fold all leading dims of x (..., R, C) into rows when they are uniformly strided (as on the CPU).
bool fold_rows(const Tensor& x, int64_t& rows, int64_t& row_stride) {
  int64_t nd = x.dim();
  rows = x.shape()[nd - 2];
  row_stride = x.strides()[nd - 2];
  for (int64_t d = nd - 3; d >= 0; --d) {
    if (x.shape()[d] == 1) continue;
    if (x.strides()[d] != rows * row_stride && rows != 1) return false;
    if (rows == 1) row_stride = x.strides()[d];
    rows *= x.shape()[d];
  }
  return true;
}

// Batch dims of the output with each operand's strides (0 where it broadcasts), adjacent dims
// merged when both operands allow it.
void batch_dims(const Shape& batch, const Tensor& a, const Tensor& b, std::vector<int64_t>& size,
                std::vector<int64_t>& sa, std::vector<int64_t>& sb) {
  int64_t nb = int64_t(batch.size());
  auto stride_of = [&](const Tensor& x, int64_t d) {  // d indexes the output's batch dims
    int64_t xd = d - (nb - (x.dim() - 2));
    return xd < 0 || x.shape()[xd] == 1 ? int64_t(0) : x.strides()[xd];
  };
  for (int64_t d = 0; d < nb; ++d) {
    if (batch[d] == 1) continue;
    int64_t s_a = stride_of(a, d), s_b = stride_of(b, d);
    if (!size.empty() && sa.back() == s_a * batch[d] && sb.back() == s_b * batch[d]) {
      size.back() *= batch[d];  // the previous dim steps exactly over this one in both
      sa.back() = s_a;
      sb.back() = s_b;
    } else {
      size.push_back(batch[d]);
      sa.push_back(s_a);
      sb.push_back(s_b);
    }
  }
}

template <typename T>
void run_gemm(GemmArgs<T> p, int64_t nbatch, Major am, Major bm) {
  if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
    launch_simt<T>(p, nbatch);
  } else {
    bool ak = am == Major::K, bk = bm == Major::K;
    if (ak && bk) launch_mma<T, true, true>(p, nbatch);
    else if (ak) launch_mma<T, true, false>(p, nbatch);
    else if (bk) launch_mma<T, false, true>(p, nbatch);
    else launch_mma<T, false, false>(p, nbatch);
  }
}

Tensors matmul_cuda(const Tensors& in, const Attrs&) {
  const Tensor& a0 = in[0];
  const Tensor& b0 = in[1];
  LS_CHECK(a0.dim() >= 2 && b0.dim() >= 2, ValueError, "matmul: the CUDA kernel takes operands "
           "of at least 2 dims, got shapes ", shape_str(a0.shape()), " and ", shape_str(b0.shape()));
  LS_CHECK(a0.dtype() == b0.dtype(), TypeError, "matmul: dtypes differ: ", dtype_name(a0.dtype()),
           " and ", dtype_name(b0.dtype()));
  int64_t M = a0.size(-2), K = a0.size(-1), N = b0.size(-1);
  LS_CHECK(b0.size(-2) == K, ValueError, "matmul: shapes ", shape_str(a0.shape()), " and ",
           shape_str(b0.shape()), " cannot be multiplied (", K, " != ", b0.size(-2), ")");
  Shape batch = broadcast_shapes(Shape(a0.shape().begin(), a0.shape().end() - 2),
                                 Shape(b0.shape().begin(), b0.shape().end() - 2), "matmul");
  Shape out_shape = batch;
  out_shape.push_back(M);
  out_shape.push_back(N);
  Tensor out = Tensor::empty(out_shape, a0.dtype(), a0.device());
  if (out.numel() == 0) return {out};
  set_device(out, "matmul");
  if (K == 0) {
    ops::fill_(out, 0.0);
    return {out};
  }
  const int64_t kMaxDim = (int64_t(1) << 31) - BigTile::kBN;
  LS_CHECK(M < kMaxDim && N < kMaxDim && K < kMaxDim, ValueError, "matmul: the CUDA kernel "
           "takes M, N, K below 2^31, got ", M, ", ", N, ", ", K);

  const bool tensor_cores = a0.dtype() == DType::BFloat16 || a0.dtype() == DType::Float16;
  Tensor a = tensor_cores ? for_tensor_cores(a0, false) : a0;
  Tensor b = tensor_cores ? for_tensor_cores(b0, true) : b0;
  int64_t bR, bK, b_ns, b_ks;
  operand_strides(b, true, bR, bK, b_ns, b_ks);
  Major bm = classify(b_ns, b_ks, N, K);

  CUDA_DISPATCH_FLOAT(a.dtype(), "matmul", {
    using T = scalar_t;
    GemmArgs<T> p{};
    p.a = static_cast<const T*>(a.raw_data());
    p.b = static_cast<const T*>(b.raw_data());
    p.c = static_cast<T*>(out.raw_data());
    p.N = int(N);
    p.K = int(K);
    p.b_ks = b_ks;
    p.b_ns = b_ns;
    p.ldc = N;
    int64_t rows, rs;
    // (..., M, K) @ (K, N) with a foldable batch: one GEMM over batch * M rows.
    if (b.dim() == 2 && fold_rows(a, rows, rs) && rows < kMaxDim &&
        (!tensor_cores || classify(rs, a.strides().back(), rows, K) != Major::None)) {
      p.M = int(rows);
      p.a_rs = rs;
      p.a_ks = a.strides().back();
      p.c_batch = 0;
      p.batch.nd = 0;
      run_gemm<T>(p, 1, classify(rs, p.a_ks, rows, K), bm);
      return Tensors{out};
    }
    p.M = int(M);
    p.a_rs = a.strides()[a.dim() - 2];
    p.a_ks = a.strides()[a.dim() - 1];
    p.c_batch = M * N;
    Major am = classify(p.a_rs, p.a_ks, M, K);
    std::vector<int64_t> size, sa, sb;
    batch_dims(batch, a, b, size, sa, sb);
    int64_t nbatch = shape_numel(batch);
    if (int64_t(size.size()) <= kMaxBatchDims) {
      p.batch.nd = int(size.size());
      for (size_t d = 0; d < size.size(); ++d) {
        p.batch.size[d] = size[d];
        p.batch.sa[d] = sa[d];
        p.batch.sb[d] = sb[d];
      }
      run_gemm<T>(p, nbatch, am, bm);
    } else {  // too many unmergeable batch dims for the kernel: one launch per matrix
      const T* pa = p.a;
      const T* pb = p.b;
      T* pc = p.c;
      p.batch.nd = 0;
      for (int64_t z = 0; z < nbatch; ++z) {
        int64_t oa = 0, ob = 0, rem = z;
        for (int64_t d = int64_t(size.size()) - 1; d >= 0; --d) {
          oa += (rem % size[d]) * sa[d];
          ob += (rem % size[d]) * sb[d];
          rem /= size[d];
        }
        p.a = pa + oa;
        p.b = pb + ob;
        p.c = pc + z * M * N;
        run_gemm<T>(p, 1, am, bm);
      }
    }
  });
  return {out};
}

}  // namespace

LS_REGISTER(matmul_cuda) {
  register_kernel("matmul", "cuda", matmul_cuda,
                  {DType::Float32, DType::Float64, DType::BFloat16, DType::Float16});
}

}  // namespace ls::cuda
