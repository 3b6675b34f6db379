// Device-side building blocks of the CUDA GEMMs, shared by cuda/matmul.cu (dense, batched) and
// cuda/moe.cu (grouped over per-expert row segments). A kernel picks its block's problem (which
// tile of which matrix) and calls one of the block-level GEMMs below:
//
//   mma_block_tile  (bf16 / fp16): C[m0:m0+BM, n0:n0+BN] of C (M x N) = A (M x K) @ B (K x N) on
//     tensor cores, fp32 accumulation, output rounded to T. Shared memory is filled by 16-byte
//     cp.async in a STAGES-deep ring, read by ldmatrix (.trans for an operand whose rows, not K,
//     are contiguous) into mma.sync.m16n8k16. Each 16-byte chunk of a tile sits at an XOR-swizzled
//     position so ldmatrix and cp.async phases hit 8 distinct bank groups. Register fragments are
//     double-buffered: the ldmatrix of the next 16-wide k slice (the next stage's first slice at
//     the end of a k-tile) is issued before the mma of the current one, and one barrier per
//     k-tile both publishes the next stage and frees the stage that the new copies refill. Both
//     layouts of each operand are template parameters (KMAJOR: K contiguous). Tails in M, N and
//     K are zero-filled by the cp.async source size, so nothing past a row is read. Sources must
//     be 16-byte aligned and the strided dim a multiple of 8 elements (the caller copies an
//     operand that is not). K = 0 stores zeros.
//   simt_block_tile (fp32 / fp64): a 64 x 64 tile of C on any strides, K steps of 16 through
//     shared memory, 4 x 4 outputs per thread, accumulating in T (no TF32).
//
// Limits: M, N, K below 2^31; mma.sync (sm_80+) only, no wgmma.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "async_copy.cuh"
#include "elementwise.cuh"

namespace ls::cuda::gemm {

// ---- tensor-core building blocks (bf16, fp16) ----

constexpr int kBK = 64;     // k-tile depth: 128-byte rows for K-contiguous tiles
constexpr int kKSlices = kBK / 16;  // mma k16 slices per k-tile
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
// Large problems: 64 x 64 per warp, the most mma per byte of shared memory read; 192 KB.
using BigTile = TileConfig<128, 256, 2, 4, 4, 1>;
// Problems with fewer big tiles than SMs (weight gradients such as 768 x 3072 over many tokens):
// half the tile with 4 warps of the same 64 x 64 (8 warps of 64 x 32 with double-buffered
// fragments spill at the 128 registers that two 256-thread blocks allow), two blocks per SM,
// 96 KB each (two fit in the 228 KB of an SM).
using SmallTile = TileConfig<128, 128, 2, 2, 3, 2>;

// A ROWS x COLS tile of 16-bit elements in shared memory, COLS contiguous, made of 16-byte
// chunks (8 elements). Chunk c of row r is stored at chunk c ^ (r & 7): 8 consecutive rows
// read at one logical chunk then hit 8 different 16-byte bank groups, and the swizzle repeats
// every 8 rows.
template <int ROWS, int COLS>
struct SmemTile {
  static constexpr int kChunks = COLS / 8;  // per row
  static constexpr int kElems = ROWS * COLS;
  static_assert(kChunks % 8 == 0, "swizzle written for rows of 8n chunks (128n bytes)");
  __device__ __forceinline__ static int offset(int r, int c) {
    return r * COLS + ((c ^ (r & 7)) << 3);
  }
};

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
// global memory, so every 16-byte chunk copies straight across. Thread tid copies chunks
// tid + i * THREADS: the same chunk column of tile rows row0 + i * kRowStep. kRowStep is a
// multiple of 8, so all of a thread's chunks share one swizzle, and their shared-memory offsets
// and sources follow from the first by constant steps: little per-thread state, no arrays.
template <typename T, bool KMAJOR, int R_TILE, int THREADS>
struct TileLoader {
  using Tile = std::conditional_t<KMAJOR, SmemTile<R_TILE, kBK>, SmemTile<kBK, R_TILE>>;
  static constexpr int kCols = KMAJOR ? kBK : R_TILE;
  static constexpr int kPer = Tile::kElems / 8 / THREADS;  // chunks per thread per k-tile
  static constexpr int kRowStep = THREADS / Tile::kChunks;  // tile rows between them
  static_assert(kPer * 8 * THREADS == Tile::kElems, "tile must split evenly over threads");
  static_assert(kRowStep * Tile::kChunks == THREADS && kRowStep % 8 == 0 && kPer <= 32,
                "a thread's chunks must sit 8n rows apart (one swizzle)");

  const T* base;    // a readable address for the zero-byte copies
  const T* ptr;     // source of the thread's first chunk at k-tile 0
  int64_t step;     // source distance between the thread's chunks (kRowStep tile rows)
  int64_t kstep;    // how far a chunk's source moves per k-tile
  int soff;         // shared-memory offset (elements) of the first chunk
  int kidx;         // k of the first chunk's first element at k-tile 0
  int K;
  uint32_t rows_ok;  // KMAJOR: bit i set when chunk i's row r exists (r < R)
  int rlim;          // not KMAJOR: valid elements (0..8) of every chunk (one r range)

  __device__ __forceinline__ TileLoader(const T* src, int64_t ld, int R, int K_, int r0, int tid)
      : base(src), step(kRowStep * ld), kstep(KMAJOR ? kBK : kBK * ld), K(K_), rows_ok(0),
        rlim(0) {
    const int row = tid / Tile::kChunks, chunk = tid % Tile::kChunks;
    soff = Tile::offset(row, chunk);
    if constexpr (KMAJOR) {  // row = r within the tile, chunk = 8 k's
      const int r = r0 + row;
#pragma unroll
      for (int i = 0; i < kPer; ++i) rows_ok |= uint32_t(r + i * kRowStep < R) << i;
      kidx = chunk * 8;
      ptr = src + int64_t(r) * ld + chunk * 8;
    } else {  // row = k, chunk = 8 r's
      const int r = r0 + chunk * 8;
      rlim = max(0, min(8, R - r));
      kidx = row;
      ptr = src + int64_t(row) * ld + r;
    }
  }

  // Issue the copies of this thread's chunks first .. first + count - 1 of k-tile kt into the
  // stage at shared address `stage` (the mainloop spreads a k-tile's copies over its k slices).
  __device__ __forceinline__ void load(uint32_t stage, int kt, int first = 0,
                                       int count = kPer) const {
    const T* p = ptr + kt * kstep;
#pragma unroll
    for (int i = first; i < first + count; ++i) {
      int n;
      if constexpr (KMAJOR) {
        const int k = kt * kBK + kidx;
        n = (rows_ok >> i) & 1 ? max(0, min(8, K - k)) : 0;
      } else {
        n = kt * kBK + kidx + i * kRowStep < K ? rlim : 0;
      }
      const T* src = n ? p + i * step : base;  // nothing is read when n == 0
      cp_async16(stage + (soff + i * kRowStep * kCols) * 2, src, n * 2);
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

// The block-level tensor-core GEMM: C (M x N, row stride ldc) tile at (m0, n0) = A @ B, where
// A(m, k) is a[m * lda + k] when A_KMAJOR else a[k * lda + m], and B(k, n) is b[n * ldb + k]
// when B_KMAJOR else b[k * ldb + n]. smem: C::kSmemBytes of dynamic shared memory. paired: C
// rows may be written two elements at a time (ldc and c's offset even).
template <typename T, typename C, bool A_KMAJOR, bool B_KMAJOR>
__device__ __forceinline__ void mma_block_tile(const T* a, int64_t lda, const T* b, int64_t ldb,
                                               int M, int N, int K, int m0, int n0, T* c,
                                               int64_t ldc, bool paired, unsigned char* smem) {
  constexpr int kBM = C::kBM, kBN = C::kBN, kStages = C::kStages;
  constexpr int kWM = C::kWM, kWN = C::kWN, kMI = C::kMI, kNI = C::kNI;
  constexpr int kAElems = kBM * kBK, kBElems = kBN * kBK;
  static_assert(kKSlices % 2 == 0, "the slice after the last of a k-tile reuses buffer 0");
  const uint32_t sA = smem_addr(smem), sB = sA + kStages * kAElems * 2;

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = warp / C::kWarpsN, wn = warp % C::kWarpsN;
  TileLoader<T, A_KMAJOR, kBM, C::kThreads> la(a, lda, M, K, m0, tid);
  TileLoader<T, B_KMAJOR, kBN, C::kThreads> lb(b, ldb, N, K, n0, tid);
  // Each k slice of the mainloop issues kAPer + kBPer of this thread's copies of a later k-tile.
  constexpr int kAPer = decltype(la)::kPer / kKSlices, kBPer = decltype(lb)::kPer / kKSlices;
  static_assert(kAPer * kKSlices == decltype(la)::kPer && kBPer * kKSlices == decltype(lb)::kPer,
                "copies must split evenly over the k slices");
  static_assert(kStages >= 3, "a k-tile reads two stages while the third is refilled");

  float acc[kMI][kNI][4];
#pragma unroll
  for (int mi = 0; mi < kMI; ++mi)
#pragma unroll
    for (int ni = 0; ni < kNI; ++ni)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[mi][ni][e] = 0.f;

  // The fragments of one k16 slice from the stage at (a_st, b_st): af[mi] is A's 16 x 16 block
  // mi, bf[ni] B's 16 x 8 block ni.
  auto load_frags = [&](uint32_t (&af)[kMI][4], uint32_t (&bf)[kNI][2], uint32_t a_st,
                        uint32_t b_st, int kk) {
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
  };

  // Pipeline. Commit group j holds the copies of k-tile j (empty past the last), one group per
  // k-tile, so cp_async_wait<kStages - 2> after j + kStages - 1 commits means k-tile j landed.
  // Per k-tile kt (stage kt % kStages):
  //   every slice:      a 1/kKSlices share of the copies that refill stage (kt - 1) % kStages
  //                     with k-tile kt + kStages - 1, then the ldmatrix of the next slice, then
  //                     the mma of this one;
  //   slice kKSlices-1: after the last share, the commit; then wait for k-tile kt + 1 and
  //                     barrier before reading its slice 0.
  // The barrier of k-tile kt - 1 came after every read of stage (kt - 1) % kStages (its last
  // slices, read by ldmatrix issued before that barrier), and during k-tile kt only stages
  // kt % kStages and (kt + 1) % kStages are read (kStages >= 3), so the refill overwrites
  // nothing still to be read; and it is the only barrier per k-tile.
  const int KT = (K + kBK - 1) / kBK;
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < KT) {
      la.load(sA + s * kAElems * 2, s);
      lb.load(sB + s * kBElems * 2, s);
    }
    cp_async_commit();  // empty groups keep the group count in step with the k-tiles
  }
  cp_async_wait<kStages - 2>();  // k-tile 0 has landed (this thread's copies)
  __syncthreads();               // everyone's have

  uint32_t af[2][kMI][4], bf[2][kNI][2];  // fragments of slices with even / odd index
  // With K = 0 (KT = 0) this reads shared memory that no copy wrote and no mma uses.
  load_frags(af[0], bf[0], sA, sB, 0);

  int rd = 0;                 // stage of k-tile kt
  int wr = kStages - 1;       // stage of k-tile kt + kStages - 1 = stage of k-tile kt - 1
  for (int kt = 0; kt < KT; ++kt) {
    const uint32_t a_st = sA + rd * kAElems * 2, b_st = sB + rd * kBElems * 2;
    const int rd_next = rd + 1 == kStages ? 0 : rd + 1;
#pragma unroll
    for (int kk = 0; kk < kKSlices; ++kk) {
      const int next = kt + kStages - 1;
      if (next < KT) {
        la.load(sA + wr * kAElems * 2, next, kk * kAPer, kAPer);
        lb.load(sB + wr * kBElems * 2, next, kk * kBPer, kBPer);
      }
      if (kk + 1 < kKSlices) {
        load_frags(af[(kk + 1) & 1], bf[(kk + 1) & 1], a_st, b_st, kk + 1);
      } else {
        cp_async_commit();
        cp_async_wait<kStages - 2>();  // this thread's copies of k-tile kt + 1 have landed
        __syncthreads();  // everyone's have; everyone has read stage kt up to its last slice
        // Slice 0 of k-tile kt + 1. After the last k-tile this reads a stage with no copies in
        // flight (none are issued past k-tile KT - 1) into fragments that no mma uses.
        load_frags(af[(kk + 1) & 1], bf[(kk + 1) & 1], sA + rd_next * kAElems * 2,
                   sB + rd_next * kBElems * 2, 0);
      }
#pragma unroll
      for (int mi = 0; mi < kMI; ++mi)
#pragma unroll
        for (int ni = 0; ni < kNI; ++ni) mma16816<T>(acc[mi][ni], af[kk & 1][mi], bf[kk & 1][ni]);
    }
    rd = rd_next;
    wr = wr + 1 == kStages ? 0 : wr + 1;
  }
  cp_async_wait<0>();

  // Accumulator e of fragment (mi, ni) is C row g (+8 for e >= 2), column 2t + (e & 1).
  const int g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int mi = 0; mi < kMI; ++mi) {
    int row = m0 + wm * kWM + mi * 16 + g;
#pragma unroll
    for (int ni = 0; ni < kNI; ++ni) {
      int col = n0 + wn * kWN + ni * 8 + 2 * t;
      store_pair(c, ldc, M, N, row, col, acc[mi][ni][0], acc[mi][ni][1], paired);
      store_pair(c, ldc, M, N, row + 8, col, acc[mi][ni][2], acc[mi][ni][3], paired);
    }
  }
}

// ---- SIMT block tile (fp32, fp64) ----

constexpr int kSM = 64, kSN = 64, kSK = 16, kSThreads = 256;

// C (M x N, row stride ldc) tile at (m0, n0) = A @ B with A(m, k) = a[m * a_rs + k * a_ks] and
// B(k, n) = b[k * b_ks + n * b_ns]; kSThreads threads.
template <typename T>
__device__ __forceinline__ void simt_block_tile(const T* a, int64_t a_rs, int64_t a_ks,
                                                const T* b, int64_t b_ks, int64_t b_ns, int M,
                                                int N, int K, int m0, int n0, T* c, int64_t ldc) {
  // +1 column: a warp that fills one m (or n) over 16 consecutive k's hits 16 banks, not one.
  __shared__ T As[kSK][kSM + 1];
  __shared__ T Bs[kSK][kSN + 1];
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  // Consecutive threads walk the operand's unit-stride dim, so global loads coalesce.
  const bool a_kfast = a_ks == 1, b_nfast = b_ns == 1;

  T acc[4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = T(0);

  for (int k0 = 0; k0 < K; k0 += kSK) {
#pragma unroll
    for (int u = 0; u < kSM * kSK / kSThreads; ++u) {
      int q = tid + u * kSThreads;
      int mm = a_kfast ? q / kSK : q % kSM, kk = a_kfast ? q % kSK : q / kSM;
      int m = m0 + mm, k = k0 + kk;
      As[kk][mm] = (m < M && k < K) ? a[int64_t(m) * a_rs + int64_t(k) * a_ks] : T(0);
    }
#pragma unroll
    for (int u = 0; u < kSN * kSK / kSThreads; ++u) {
      int q = tid + u * kSThreads;
      int nn = b_nfast ? q % kSN : q / kSK, kk = b_nfast ? q / kSN : q % kSK;
      int n = n0 + nn, k = k0 + kk;
      Bs[kk][nn] = (n < N && k < K) ? b[int64_t(k) * b_ks + int64_t(n) * b_ns] : T(0);
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
    if (m >= M) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      int n = n0 + tx + 16 * j;
      if (n < N) c[int64_t(m) * ldc + n] = acc[i][j];
    }
  }
}

}  // namespace ls::cuda::gemm
