// Scaled dot-product attention on the GPU: ops "attention" and "attention_backward", the same
// signatures as the CPU reference cpp/ops/attention.cpp.
//   q (B, NH, T, HS), k and v (B, NKV, S, HS); query head h reads kv head h / (NH / NKV) (GQA).
//   X = scale * Q K^T (+ mask), causal hides key s > t + (S - T) (bottom-right aligned);
//   lse[t] = log sum_s exp(X[t, s]);  P = exp(X - lse);  out = P V.  Outputs {out, lse}; a row
//   that sees no key gives out 0 and lse -inf.
//   Backward: dV = P^T dO;  dP = dO V^T;  D[t] = sum_d dO[t, d] O[t, d];  dX = P (dP - D + dlse);
//   dQ = scale dX K;  dK = scale dX^T Q; with GQA the dK, dV of a group's query heads are summed.
// lse is float32 for 16-bit inputs (float64 for float64): a bf16 lse would put a ~1% error on
// every recomputed probability of the backward.
//
// Implementations:
// 0. On Hopper (compute capability 9.0, built with sm_90a), bf16/fp16, HS 64 or 128, no user
//    mask: the TMA + wgmma kernels of cuda/sm90a/attention_wgmma.cu, forward and backward (the
//    backward after the preprocess kernel below, and deterministic: no atomics);
//    LLMSCRATCH_ATTENTION=mma selects 1. instead. The copy engine reads q, k, v, dout where they
//    are (4-D tensor maps), so the (B, T, heads, HS) slices of a fused qkv projection, viewed as
//    (B, heads, T, HS), are not copied; out, dq, dk and dv are stored (B, T, heads, HS) and
//    returned as (B, heads, T, HS) views, the layout the model's next reshape and the gradient
//    of the qkv split read without a copy. (Those copies, about 11 a block, were most of the
//    GPT-2 training step's 181 copy kernels, 2.76 ms of it.)
// 1. bf16/fp16, HS 64 or 128, no user mask: FlashAttention-2 style fused kernels on the tensor
//    cores (mma.sync m16n8k16, fp32 accumulation; fragments loaded with ldmatrix from shared
//    memory tiles whose 16-byte chunks are XOR-swizzled by row so ldmatrix is bank-conflict free;
//    tiles streamed with cp.async, double buffered). The (T, S) score matrix never exists.
//    Forward: one CTA per (b, h, 128 query rows), 4 warps of two 16-row m-tiles each (every K/V
//    fragment read from shared memory feeds two mma); 64-key K/V tiles; the
//    online softmax runs in fp32 registers in the log2 domain (scale * log2(e) folded into one
//    multiply, exp2). Under the causal mask a CTA stops at its last visible key and masks only
//    the tiles that cross the diagonal; CTAs start heaviest first.
//    Backward: a preprocess kernel D' = rowsum(dO * O) - dlse; then one CTA per (b, kv head,
//    block of 16 * NW keys) that loops over the group's query heads and their 64-row query blocks,
//    recomputing P^T from q, k and lse, keeping dK and dV in registers (deterministic) and adding
//    dQ with fp32 atomicAdd into a float32 buffer, scaled and cast at the end. dQ is therefore
//    nondeterministic at the level of fp32 rounding (the order of the atomic adds varies).
// 2. Every other case (float32, float64, any HS <= 256, user masks, 16-bit with another HS): a
//    simple kernel, one warp per query row (forward and dQ) or per key row (dK, dV), HS spread
//    over the lanes, streaming over keys with an online softmax in float (double for float64).
//    Correct everywhere, not fast: each key costs a warp reduction.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstdint>
#include <limits>

#include "core/registry.h"
#include "async_copy.cuh"
#include "elementwise.cuh"
#include "ops/ops.h"
#include "pack.cuh"
#ifdef LLMSCRATCH_SM90A
#include "sm90a/sm90a.h"
#endif

namespace ls::cuda {

namespace {

constexpr float kLog2e = 1.4426950408889634f;

// ============================ PTX helpers (tensor-core path) ============================

__device__ __forceinline__ void ldsm_x4(uint32_t addr, uint32_t (&r)[4]) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t addr, uint32_t (&r)[4]) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// c += a (16x16, row) * b (16x8, col), fp32 accumulators.
template <typename T>
__device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// A shared-memory tile of ROWS x COLS 16-bit values, rows of COLS / 8 16-byte chunks; chunk c of
// row r lives at chunk c ^ (r & 7). ldmatrix reads 8 rows at one logical chunk, which the XOR
// spreads over 8 different bank groups. COLS must be a multiple of 64.
template <int COLS>
__device__ __forceinline__ uint32_t tile_off(int r, int chunk) {
  return uint32_t(r * COLS * 2 + ((chunk ^ (r & 7)) << 4));
}

// Cooperative cp.async of rows [row0, row0 + ROWS) of a (nrows, COLS) row-major global matrix
// into a swizzled tile; rows past nrows are zero-filled.
template <int ROWS, int COLS, int NT, typename T>
__device__ __forceinline__ void load_tile(uint32_t tile, const T* g, int row0, int nrows) {
  constexpr int CH = COLS / 8;
#pragma unroll
  for (int i = threadIdx.x; i < ROWS * CH; i += NT) {
    const int r = i / CH, c = i % CH;
    const bool valid = row0 + r < nrows;
    const T* src = valid ? g + (int64_t(row0 + r) * COLS + c * 8) : g;
    cp_async16(tile + tile_off<COLS>(r, c), src, valid ? 16 : 0);  // zero-filled when !valid
  }
}

// ldmatrix lane addresses. Matrices are numbered by lane groups 0-7, 8-15, 16-23, 24-31.
// A operand (16 rows x 16 k) at rows r0.., k chunks 2kk, 2kk+1: m0 rows 0-7 k lo, m1 rows 8-15
// k lo, m2 rows 0-7 k hi, m3 rows 8-15 k hi -> a[0..3] of mma's A fragment.
template <int COLS>
__device__ __forceinline__ uint32_t a_addr(uint32_t tile, int r0, int kk, int lane) {
  return tile + tile_off<COLS>(r0 + (lane & 15), 2 * kk + (lane >> 4));
}
// B operand from a tile stored [n][k] (the k of the mma along the tile's columns), two n-tiles of
// 8: m0 n 0-7 k lo, m1 n 0-7 k hi, m2 n 8-15 k lo, m3 n 8-15 k hi -> (b0, b1) of n-tile 0 in
// r[0], r[1] and of n-tile 1 in r[2], r[3]. Non-transposed ldmatrix.
template <int COLS>
__device__ __forceinline__ uint32_t bn_addr(uint32_t tile, int n0, int kk, int lane) {
  return tile + tile_off<COLS>(n0 + (lane & 7) + ((lane >> 4) << 3), 2 * kk + ((lane >> 3) & 1));
}
// B operand from a tile stored [k][n] (rows are the mma's k), k rows k0..k0+15, n chunks 2np,
// 2np+1: m0 k lo n-tile 0, m1 k hi n-tile 0, m2 k lo n-tile 1, m3 k hi n-tile 1. Transposed
// ldmatrix; the same (b0, b1) register order as bn_addr.
template <int COLS>
__device__ __forceinline__ uint32_t bk_addr(uint32_t tile, int k0, int np, int lane) {
  return tile + tile_off<COLS>(k0 + (lane & 7) + (((lane >> 3) & 1) << 3), 2 * np + (lane >> 4));
}

// ================================ forward, tensor cores ================================

// Forward tiling: NW warps, each owning MT m-tiles of 16 query rows, so every K and V fragment
// read from shared memory feeds MT mma (shared-memory bandwidth, not the tensor cores, bounds
// a 16-row warp). BN keys per K/V tile.
template <int HS> struct FwdCfg {
  static constexpr int NW = 4, MT = 2, BN = 64, BM = 16 * NW * MT;
};
// HS 128: 64-key tiles would need more than 255 registers (the O accumulators alone take 128).
template <> struct FwdCfg<128> {
  static constexpr int NW = 4, MT = 2, BN = 32, BM = 16 * NW * MT;
};

template <int HS>
constexpr int fwd_smem_bytes() {  // Q tile + double-buffered K and V tiles
  return (FwdCfg<HS>::BM * HS + 4 * FwdCfg<HS>::BN * HS) * 2;
}

// grid (ceil(T / BM), NH, B), block NW * 32 threads. Warp w owns the query rows
// t0 + 16 (w + NW m) .. +15 for m < MT; in each such m-tile a thread holds rows g = lane / 4 and
// g + 8, columns 2 (lane % 4) + {0, 1} of each 8-wide n-tile (the mma accumulator layout).
template <typename T, int HS>
__global__ void __launch_bounds__(FwdCfg<HS>::NW * 32, 1)
    flash_fwd_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                     T* __restrict__ out, float* __restrict__ lse, int NH, int NKV, int T_, int S,
                     float scale, bool causal) {
  constexpr int NW = FwdCfg<HS>::NW, MT = FwdCfg<HS>::MT, BN = FwdCfg<HS>::BN;
  constexpr int BM = FwdCfg<HS>::BM, NT = NW * 32;
  extern __shared__ __align__(128) unsigned char smem[];
  const uint32_t sQ = smem_addr(smem);
  const uint32_t sK = sQ + BM * HS * 2;   // 2 buffers of BN x HS
  const uint32_t sV = sK + 2 * BN * HS * 2;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int qb = gridDim.x - 1 - blockIdx.x;  // the longest causal rows first
  const int h = blockIdx.y, b = blockIdx.z, kvh = h / (NH / NKV);
  const int t0 = qb * BM;
  const T* qp = q + int64_t(b * NH + h) * T_ * HS;  // q[b, h, 0, :]
  const T* kp = k + int64_t(b * NKV + kvh) * S * HS;
  const T* vp = v + int64_t(b * NKV + kvh) * S * HS;
  const int shift = S - T_;  // key s is visible to row t iff s <= t + shift (causal)
  const int last_row = min(t0 + BM, T_) - 1;
  const int n_end = causal ? max(0, min(S, last_row + shift + 1)) : S;
  const int nblocks = (n_end + BN - 1) / BN;

  load_tile<BM, HS, NT>(sQ, qp, t0, T_);
  if (nblocks > 0) {
    load_tile<BN, HS, NT>(sK, kp, 0, S);
    load_tile<BN, HS, NT>(sV, vp, 0, S);
  }
  cp_async_commit();

  const float sl2 = scale * kLog2e;
  const int g = lane / 4, c2 = 2 * (lane % 4);
  float o[MT][HS / 8][4];
  float m[MT][2], l[MT][2];  // running max of the log2-domain scores; this thread's row sums
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int i = 0; i < HS / 8; ++i) o[mt][i][0] = o[mt][i][1] = o[mt][i][2] = o[mt][i][3] = 0.f;
    m[mt][0] = m[mt][1] = -INFINITY;
    l[mt][0] = l[mt][1] = 0.f;
  }

  for (int j = 0; j < nblocks; ++j) {
    cp_async_wait<0>();
    __syncthreads();  // tile j visible to all; every warp done with tile j - 1's buffer
    if (j + 1 < nblocks) {
      const int nb = (j + 1) & 1;
      load_tile<BN, HS, NT>(sK + nb * BN * HS * 2, kp, (j + 1) * BN, S);
      load_tile<BN, HS, NT>(sV + nb * BN * HS * 2, vp, (j + 1) * BN, S);
      cp_async_commit();
    }
    const uint32_t kt = sK + (j & 1) * BN * HS * 2, vt = sV + (j & 1) * BN * HS * 2;
    const int n0 = j * BN;

    // s = Q K^T for this warp's MT x 16 rows and the tile's BN keys
    float s[MT][BN / 8][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int i = 0; i < BN / 8; ++i) s[mt][i][0] = s[mt][i][1] = s[mt][i][2] = s[mt][i][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < HS / 16; ++kk) {
      uint32_t a[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) ldsm_x4(a_addr<HS>(sQ, (warp + NW * mt) * 16, kk, lane), a[mt]);
#pragma unroll
      for (int np = 0; np < BN / 16; ++np) {
        uint32_t bb[4];
        ldsm_x4(bn_addr<HS>(kt, np * 16, kk, lane), bb);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          mma16816<T>(s[mt][2 * np], a[mt], bb[0], bb[1]);
          mma16816<T>(s[mt][2 * np + 1], a[mt], bb[2], bb[3]);
        }
      }
    }
    // log2 domain; keys past S and (causal) past a row's diagonal become -inf
    const bool edge = n0 + BN > S || (causal && n0 + BN - 1 > t0 + shift);
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int i = 0; i < BN / 8; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          float x = s[mt][i][e] * sl2;
          if (edge) {
            const int key = n0 + i * 8 + c2 + (e & 1);
            const int row = t0 + (warp + NW * mt) * 16 + g + (e >> 1) * 8;
            if (key >= S || (causal && key > row + shift)) x = -INFINITY;
          }
          s[mt][i][e] = x;
        }
    // online softmax: new max, rescale the running sum and accumulator, P = exp2(x - max)
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int rh = 0; rh < 2; ++rh) {
        float mx = m[mt][rh];
#pragma unroll
        for (int i = 0; i < BN / 8; ++i)
          mx = fmaxf(mx, fmaxf(s[mt][i][2 * rh], s[mt][i][2 * rh + 1]));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float base = mx == -INFINITY ? 0.f : mx;  // a row with nothing visible yet: P = 0
        const float corr = exp2f(m[mt][rh] - base);
        m[mt][rh] = mx;
        float sum = 0.f;
#pragma unroll
        for (int i = 0; i < BN / 8; ++i) {
          s[mt][i][2 * rh] = exp2f(s[mt][i][2 * rh] - base);
          s[mt][i][2 * rh + 1] = exp2f(s[mt][i][2 * rh + 1] - base);
          sum += s[mt][i][2 * rh] + s[mt][i][2 * rh + 1];
        }
        l[mt][rh] = l[mt][rh] * corr + sum;
#pragma unroll
        for (int i = 0; i < HS / 8; ++i) {
          o[mt][i][2 * rh] *= corr;
          o[mt][i][2 * rh + 1] *= corr;
        }
      }
    // O += P V: the accumulators of n-tiles 2kt, 2kt+1 are the A fragment of key block kt
#pragma unroll
    for (int kt2 = 0; kt2 < BN / 16; ++kt2) {
      uint32_t a[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        a[mt][0] = pack2<T>(s[mt][2 * kt2][0], s[mt][2 * kt2][1]);
        a[mt][1] = pack2<T>(s[mt][2 * kt2][2], s[mt][2 * kt2][3]);
        a[mt][2] = pack2<T>(s[mt][2 * kt2 + 1][0], s[mt][2 * kt2 + 1][1]);
        a[mt][3] = pack2<T>(s[mt][2 * kt2 + 1][2], s[mt][2 * kt2 + 1][3]);
      }
#pragma unroll
      for (int np = 0; np < HS / 16; ++np) {
        uint32_t bb[4];
        ldsm_x4_t(bk_addr<HS>(vt, kt2 * 16, np, lane), bb);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          mma16816<T>(o[mt][2 * np], a[mt], bb[0], bb[1]);
          mma16816<T>(o[mt][2 * np + 1], a[mt], bb[2], bb[3]);
        }
      }
    }
  }
  cp_async_wait<0>();  // nothing in flight at exit (the Q tile when no key is visible)

  // normalise and store; rows past T are padding
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int rh = 0; rh < 2; ++rh) {
      float sum = l[mt][rh];
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      sum += __shfl_xor_sync(0xffffffffu, sum, 2);
      const int row = t0 + (warp + NW * mt) * 16 + g + rh * 8;
      if (row >= T_) continue;
      const float inv = sum > 0.f ? 1.f / sum : 0.f;
      T* orow = out + (int64_t(b * NH + h) * T_ + row) * HS;  // out[b, h, row, :]
#pragma unroll
      for (int i = 0; i < HS / 8; ++i)
        *reinterpret_cast<uint32_t*>(orow + i * 8 + c2) =
            pack2<T>(o[mt][i][2 * rh] * inv, o[mt][i][2 * rh + 1] * inv);
      if (lane % 4 == 0)  // natural log: (max + log2 sum) * ln 2
        lse[int64_t(b * NH + h) * T_ + row] =
            sum > 0.f ? (m[mt][rh] + log2f(sum)) * 0.6931471805599453f : -INFINITY;
    }
}

// ================================ backward, tensor cores ================================

// acc (the warp's 16 rows x BM columns, as BM / 8 mma accumulators) = A B^T over HS, A the rows
// warp * 16.. of tile sA, B the BM rows of tile sB, both stored [row][HS]: the S^T = K Q^T and
// dP^T = V dO^T products of the backward.
template <typename T, int HS, int BM>
__device__ __forceinline__ void warp_rows_times_cols(float (&acc)[BM / 8][4], uint32_t sA,
                                                     uint32_t sB, int warp, int lane) {
#pragma unroll
  for (int i = 0; i < BM / 8; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
#pragma unroll
  for (int kk = 0; kk < HS / 16; ++kk) {
    uint32_t a[4];
    ldsm_x4(a_addr<HS>(sA, warp * 16, kk, lane), a);
#pragma unroll
    for (int np = 0; np < BM / 16; ++np) {
      uint32_t bb[4];
      ldsm_x4(bn_addr<HS>(sB, np * 16, kk, lane), bb);
      mma16816<T>(acc[2 * np], a, bb[0], bb[1]);
      mma16816<T>(acc[2 * np + 1], a, bb[2], bb[3]);
    }
  }
}

constexpr int kBwdWarps = 8;  // 128 keys per CTA
constexpr int kBwdBM = 64;    // query rows per step

template <int HS, int NW>
constexpr int bwd_smem_bytes() {
  // K, V (BN x HS); Q, dO double-buffered (BM x HS); dS^T (BN x BM); lse, D' double-buffered
  return (2 * 16 * NW * HS + 4 * kBwdBM * HS + 16 * NW * kBwdBM) * 2 + 4 * kBwdBM * 4;
}

// Where row (b, h, t) of a (B, NH, T, HS) tensor with a contiguous last dim starts: b * b + h * h
// + t * t elements.
struct RowStrides {
  int64_t b, h, t;
  // The offset of row r of the (B, NH, T) rows.
  __device__ __forceinline__ int64_t row(int64_t r, int NH, int T_) const {
    const int64_t bh = r / T_;
    return (bh / NH) * b + (bh % NH) * h + (r % T_) * t;
  }
};

RowStrides row_strides(const Tensor& x) { return {x.strides()[0], x.strides()[1], x.strides()[2]}; }

// D'[row] = sum_d dO[row, d] O[row, d] - dlse[row], one warp per row of (B * NH * T) rows; dlse
// and D' contiguous (B, NH, T), o and dout any rows.
template <typename T>
__global__ void bwd_preprocess_kernel(const T* __restrict__ o, RowStrides so,
                                      const T* __restrict__ dout, RowStrides sdo,
                                      const float* __restrict__ dlse, float* __restrict__ dd,
                                      int64_t rows, int NH, int T_, int HS) {
  const int64_t r = int64_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  if (r >= rows) return;
  const T* orow = o + so.row(r, NH, T_);
  const T* drow = dout + sdo.row(r, NH, T_);
  const int lane = threadIdx.x % 32;
  float acc = 0.f;
  for (int d = lane; d < HS; d += 32) acc += float(orow[d]) * float(drow[d]);
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
  if (lane == 0) dd[r] = acc - (dlse ? dlse[r] : 0.f);
}

// The same with 16-byte loads: R = HS / 8 threads per row (8 at HS 64, 16 at HS 128), so a warp
// covers 32 / R rows; for rows whose starts are 16-byte aligned. One warp per row issued 2-byte
// loads, 64 bytes of each tensor per warp and load: 31% of the copy bandwidth at GPT-2's shape.
template <typename T, int R>
__global__ void bwd_preprocess_packed_kernel(const T* __restrict__ o, RowStrides so,
                                             const T* __restrict__ dout, RowStrides sdo,
                                             const float* __restrict__ dlse, float* __restrict__ dd,
                                             int64_t rows, int NH, int T_) {
  static_assert(R >= 1 && R <= 32 && (R & (R - 1)) == 0, "R threads of a row within one warp");
  static_assert(sizeof(T) == 2, "8 elements to a 16-byte load");
  const int64_t r = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / R;
  const int j = threadIdx.x % R;
  float acc = 0.f;
  if (r < rows) {  // no early return: the shuffles below need every lane
    const uint4 ob = reinterpret_cast<const uint4*>(o + so.row(r, NH, T_))[j];
    const uint4 db = reinterpret_cast<const uint4*>(dout + sdo.row(r, NH, T_))[j];
    const T* ov = reinterpret_cast<const T*>(&ob);
    const T* dv = reinterpret_cast<const T*>(&db);
#pragma unroll
    for (int i = 0; i < 8; ++i) acc += float(ov[i]) * float(dv[i]);
  }
#pragma unroll
  for (int off = R / 2; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
  if (r < rows && j == 0) dd[r] = acc - (dlse ? dlse[r] : 0.f);
}

// dq[i] = acc[i] * scale, cast.
template <typename T>
__global__ void scale_cast_kernel(T* __restrict__ dq, const float* __restrict__ acc, int64_t n,
                                  float scale) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    dq[i] = convert<T>(acc[i] * scale);
}

// grid (ceil(S / BN), NKV, B), block NW * 32. Warp w owns keys n0 + 16w .. +15 of dK and dV; a
// thread holds keys g, g + 8 of them. Per step (query head h of the group, query block of BM
// rows): S^T = K Q^T, P^T = exp2(S^T scale log2e - lse log2e), dV += P^T dO, dP^T = V dO^T,
// dS^T = P^T (dP^T - D'), dK += dS^T Q, and dQ += dS K (dS^T through shared memory).
template <typename T, int HS, int NW>
__global__ void __launch_bounds__(NW * 32, 1)
    flash_bwd_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                     const T* __restrict__ dout, const float* __restrict__ lse,
                     const float* __restrict__ dd, float* __restrict__ dq_acc, T* __restrict__ dk,
                     T* __restrict__ dv, int NH, int NKV, int T_, int S, float scale, bool causal) {
  constexpr int BN = 16 * NW, BM = kBwdBM, NT = NW * 32;
  extern __shared__ __align__(128) unsigned char smem[];
  const uint32_t sK = smem_addr(smem);
  const uint32_t sV = sK + BN * HS * 2;
  const uint32_t sQ = sV + BN * HS * 2;     // 2 buffers of BM x HS
  const uint32_t sdO = sQ + 2 * BM * HS * 2;
  const uint32_t sdS = sdO + 2 * BM * HS * 2;  // BN x BM, dS^T [key][t]
  unsigned char* sdS_ptr = smem + (sdS - sK);
  float* sL = reinterpret_cast<float*>(smem + (sdS - sK) + BN * BM * 2);  // 2 x BM, lse log2e
  float* sD = sL + 2 * BM;                                                // 2 x BM, D'
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int kb = blockIdx.x, kvh = blockIdx.y, b = blockIdx.z;
  const int group = NH / NKV;
  const int n0 = kb * BN;
  const int shift = S - T_;
  // causal: rows t < n0 - shift see none of this block's keys
  const int first_row = causal ? max(0, n0 - shift) : 0;
  const int qb0 = first_row / BM, nq = first_row < T_ ? (T_ + BM - 1) / BM - qb0 : 0;
  const int nit = group * nq;
  const T* kp = k + int64_t(b * NKV + kvh) * S * HS;
  const T* vp = v + int64_t(b * NKV + kvh) * S * HS;

  // The query block of step `it` into buffer `buf`: Q and dO by cp.async, lse and D' by plain
  // loads (visible after the next barrier). Padding rows get lse +inf (P = 0) and D' 0.
  auto load_step = [&](int it, int buf) {
    const int h = kvh * group + it / nq, t0 = (qb0 + it % nq) * BM;
    const int64_t bh = int64_t(b) * NH + h;
    load_tile<BM, HS, NT>(sQ + buf * BM * HS * 2, q + bh * T_ * HS, t0, T_);
    load_tile<BM, HS, NT>(sdO + buf * BM * HS * 2, dout + bh * T_ * HS, t0, T_);
    for (int i = threadIdx.x; i < BM; i += NT) {
      const int t = t0 + i;
      const float lv = t < T_ ? lse[bh * T_ + t] : INFINITY;
      sL[buf * BM + i] = lv == -INFINITY ? INFINITY : lv * kLog2e;  // fully masked row: P = 0
      sD[buf * BM + i] = t < T_ ? dd[bh * T_ + t] : 0.f;
    }
  };

  if (nit > 0) {
    load_tile<BN, HS, NT>(sK, kp, n0, S);
    load_tile<BN, HS, NT>(sV, vp, n0, S);
    load_step(0, 0);
  }
  cp_async_commit();

  const float sl2 = scale * kLog2e;
  const int g = lane / 4, c2 = 2 * (lane % 4);
  const int key[2] = {n0 + warp * 16 + g, n0 + warp * 16 + g + 8};
  float dkacc[HS / 8][4], dvacc[HS / 8][4];
#pragma unroll
  for (int i = 0; i < HS / 8; ++i)
#pragma unroll
    for (int e = 0; e < 4; ++e) dkacc[i][e] = dvacc[i][e] = 0.f;

  for (int it = 0; it < nit; ++it) {
    cp_async_wait<0>();
    __syncthreads();  // step it visible; all warps done with the other buffer and with dS^T
    if (it + 1 < nit) {
      load_step(it + 1, (it + 1) & 1);
      cp_async_commit();
    }
    const int buf = it & 1;
    const int h = kvh * group + it / nq, t0 = (qb0 + it % nq) * BM;
    const uint32_t qt = sQ + buf * BM * HS * 2, dot = sdO + buf * BM * HS * 2;
    const float* L = sL + buf * BM;
    const float* Dp = sD + buf * BM;

    // S^T = K Q^T (16 keys x BM rows per warp) -> P^T
    float p[BM / 8][4];
    warp_rows_times_cols<T, HS, BM>(p, sK, qt, warp, lane);
    const bool edge = n0 + BN > S || (causal && n0 + BN - 1 > t0 + shift);
#pragma unroll
    for (int i = 0; i < BM / 8; ++i)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int tl = i * 8 + c2 + (e & 1);
        float x = p[i][e] * sl2;
        if (edge) {
          const int kk = key[e >> 1];
          if (kk >= S || (causal && kk > t0 + tl + shift)) x = -INFINITY;
        }
        p[i][e] = exp2f(x - L[tl]);
      }

    // dV += P^T dO
#pragma unroll
    for (int kt2 = 0; kt2 < BM / 16; ++kt2) {
      uint32_t a[4];
      a[0] = pack2<T>(p[2 * kt2][0], p[2 * kt2][1]);
      a[1] = pack2<T>(p[2 * kt2][2], p[2 * kt2][3]);
      a[2] = pack2<T>(p[2 * kt2 + 1][0], p[2 * kt2 + 1][1]);
      a[3] = pack2<T>(p[2 * kt2 + 1][2], p[2 * kt2 + 1][3]);
#pragma unroll
      for (int np = 0; np < HS / 16; ++np) {
        uint32_t bb[4];
        ldsm_x4_t(bk_addr<HS>(dot, kt2 * 16, np, lane), bb);
        mma16816<T>(dvacc[2 * np], a, bb[0], bb[1]);
        mma16816<T>(dvacc[2 * np + 1], a, bb[2], bb[3]);
      }
    }

    // dP^T = V dO^T, then dS^T = P^T (dP^T - D') in place of P^T
    {
      float dp[BM / 8][4];
      warp_rows_times_cols<T, HS, BM>(dp, sV, dot, warp, lane);
#pragma unroll
      for (int i = 0; i < BM / 8; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) p[i][e] *= dp[i][e] - Dp[i * 8 + c2 + (e & 1)];
    }

    // dK += dS^T Q, and dS^T into shared memory for the dQ product
#pragma unroll
    for (int kt2 = 0; kt2 < BM / 16; ++kt2) {
      uint32_t a[4];
      a[0] = pack2<T>(p[2 * kt2][0], p[2 * kt2][1]);
      a[1] = pack2<T>(p[2 * kt2][2], p[2 * kt2][3]);
      a[2] = pack2<T>(p[2 * kt2 + 1][0], p[2 * kt2 + 1][1]);
      a[3] = pack2<T>(p[2 * kt2 + 1][2], p[2 * kt2 + 1][3]);
      const int r = warp * 16 + g;  // key row of dS^T in the tile
      *reinterpret_cast<uint32_t*>(sdS_ptr + tile_off<BM>(r, 2 * kt2) + c2 * 2) = a[0];
      *reinterpret_cast<uint32_t*>(sdS_ptr + tile_off<BM>(r + 8, 2 * kt2) + c2 * 2) = a[1];
      *reinterpret_cast<uint32_t*>(sdS_ptr + tile_off<BM>(r, 2 * kt2 + 1) + c2 * 2) = a[2];
      *reinterpret_cast<uint32_t*>(sdS_ptr + tile_off<BM>(r + 8, 2 * kt2 + 1) + c2 * 2) = a[3];
#pragma unroll
      for (int np = 0; np < HS / 16; ++np) {
        uint32_t bb[4];
        ldsm_x4_t(bk_addr<HS>(qt, kt2 * 16, np, lane), bb);
        mma16816<T>(dkacc[2 * np], a, bb[0], bb[1]);
        mma16816<T>(dkacc[2 * np + 1], a, bb[2], bb[3]);
      }
    }
    __syncthreads();  // dS^T complete

    // dQ[t0 + rows, :] += dS K over this block's BN keys. The BM x HS product is split over the
    // warps as (BM / 16 row tiles) x (NW / 4 column groups), in chunks of 32 columns.
    {
      constexpr int CG = NW / 4, W = HS / CG;
      const int rt = warp % 4, cg = warp / 4;
      float* dqrow = dq_acc + (int64_t(b) * NH + h) * T_ * HS;
#pragma unroll
      for (int c0 = cg * W; c0 < (cg + 1) * W; c0 += 32) {
        float acc[4][4];
#pragma unroll
        for (int i = 0; i < 4; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < BN / 16; ++kk) {
          // A = dS rows t (16) x keys (16), read transposed from dS^T [key][t]
          uint32_t a[4];
          ldsm_x4_t(sdS + tile_off<BM>(kk * 16 + (lane & 7) + ((lane >> 4) << 3),
                                       2 * rt + ((lane >> 3) & 1)),
                    a);
#pragma unroll
          for (int np = 0; np < 2; ++np) {
            uint32_t bb[4];
            ldsm_x4_t(bk_addr<HS>(sK, kk * 16, c0 / 16 + np, lane), bb);
            mma16816<T>(acc[2 * np], a, bb[0], bb[1]);
            mma16816<T>(acc[2 * np + 1], a, bb[2], bb[3]);
          }
        }
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int t = t0 + rt * 16 + g + (e >> 1) * 8;
            if (t < T_) atomicAdd(dqrow + int64_t(t) * HS + c0 + i * 8 + c2 + (e & 1), acc[i][e]);
          }
      }
    }
  }

  cp_async_wait<0>();  // nothing in flight at exit

  // store dK (scaled) and dV; keys past S are padding
  const int64_t kvbase = int64_t(b * NKV + kvh) * S * HS;
#pragma unroll
  for (int rh = 0; rh < 2; ++rh) {
    if (key[rh] >= S) continue;
    T* dkrow = dk + kvbase + int64_t(key[rh]) * HS;  // dk[b, kvh, key, :]
    T* dvrow = dv + kvbase + int64_t(key[rh]) * HS;
#pragma unroll
    for (int i = 0; i < HS / 8; ++i) {
      *reinterpret_cast<uint32_t*>(dkrow + i * 8 + c2) =
          pack2<T>(dkacc[i][2 * rh] * scale, dkacc[i][2 * rh + 1] * scale);
      *reinterpret_cast<uint32_t*>(dvrow + i * 8 + c2) =
          pack2<T>(dvacc[i][2 * rh], dvacc[i][2 * rh + 1]);
    }
  }
}

// ============================ simple kernels (every dtype) ============================

constexpr int kSimpleWarps = 4;
constexpr int kMaxChunks = 8;  // HS <= 32 * kMaxChunks = 256

// A user mask seen as (B, NH, T, S) through broadcast strides. kind: 0 none, 1 bool (false hides
// the key), 2 float in the accumulation type (added to the score).
struct MaskRef {
  const void* p = nullptr;
  int kind = 0;
  int64_t sb = 0, sh = 0, st = 0, ss = 0;
};

template <typename A>
__device__ __forceinline__ A mask_term(const MaskRef& m, int64_t b, int64_t h, int64_t t,
                                       int64_t s) {
  if (m.kind == 0) return A(0);
  const int64_t off = b * m.sb + h * m.sh + t * m.st + s * m.ss;
  if (m.kind == 1) return static_cast<const bool*>(m.p)[off] ? A(0) : -A(INFINITY);
  return static_cast<const A*>(m.p)[off];
}

template <typename A>
__device__ __forceinline__ A warp_sum(A x) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) x += __shfl_xor_sync(0xffffffffu, x, off);
  return x;
}

__device__ __forceinline__ float exp_(float x) { return expf(x); }
__device__ __forceinline__ double exp_(double x) { return exp(x); }
__device__ __forceinline__ float log_(float x) { return logf(x); }
__device__ __forceinline__ double log_(double x) { return log(x); }

// Lane-strided rows: element d = lane + 32 j lives in x[j].
template <typename T, typename A>
__device__ __forceinline__ void load_row(A (&x)[kMaxChunks], const T* p, int HS, int lane) {
#pragma unroll
  for (int j = 0; j < kMaxChunks; ++j) {
    const int d = lane + 32 * j;
    x[j] = d < HS ? convert<A>(p[d]) : A(0);
  }
}
template <typename T, typename A>
__device__ __forceinline__ A dot_row(const A (&x)[kMaxChunks], const T* p, int HS, int lane) {
  A acc = A(0);
#pragma unroll
  for (int j = 0; j < kMaxChunks; ++j) {
    const int d = lane + 32 * j;
    if (d < HS) acc += x[j] * convert<A>(p[d]);
  }
  return warp_sum(acc);
}

struct Dims {
  int64_t B, NH, NKV, T, S, HS;
};

// One warp per query row (b, h, t); lse has the accumulation type A.
template <typename T, typename A>
__global__ void attn_fwd_simple_kernel(const T* __restrict__ q, const T* __restrict__ k,
                                       const T* __restrict__ v, T* __restrict__ out,
                                       A* __restrict__ lse, MaskRef mask, Dims n, A scale,
                                       bool causal) {
  const int64_t r = int64_t(blockIdx.x) * kSimpleWarps + threadIdx.x / 32;
  if (r >= n.B * n.NH * n.T) return;
  const int lane = threadIdx.x % 32, HS = int(n.HS);
  const int64_t bh = r / n.T, t = r % n.T, b = bh / n.NH, h = bh % n.NH;
  const int64_t kvrow = (b * n.NKV + h / (n.NH / n.NKV)) * n.S;  // first row of k[b, kvh]
  A qr[kMaxChunks], acc[kMaxChunks];
  load_row(qr, q + r * HS, HS, lane);
#pragma unroll
  for (int j = 0; j < kMaxChunks; ++j) acc[j] = A(0);
  A mx = -A(INFINITY), l = A(0);
  const int64_t s_end = causal ? min(n.S, max(int64_t(0), t + n.S - n.T + 1)) : n.S;
  for (int64_t s = 0; s < s_end; ++s) {
    const A x = dot_row(qr, k + (kvrow + s) * HS, HS, lane) * scale + mask_term<A>(mask, b, h, t, s);
    if (x == -A(INFINITY)) continue;  // the same on every lane (after the all-reduce)
    const A m_new = x > mx ? x : mx;
    const A corr = exp_(mx - m_new), pr = exp_(x - m_new);
    l = l * corr + pr;
    const T* vr = v + (kvrow + s) * HS;
#pragma unroll
    for (int j = 0; j < kMaxChunks; ++j) {
      const int d = lane + 32 * j;
      if (d < HS) acc[j] = acc[j] * corr + pr * convert<A>(vr[d]);
    }
    mx = m_new;
  }
  const A inv = l > A(0) ? A(1) / l : A(0);
#pragma unroll
  for (int j = 0; j < kMaxChunks; ++j) {
    const int d = lane + 32 * j;
    if (d < HS) out[r * HS + d] = convert<T>(acc[j] * inv);
  }
  if (lane == 0) lse[r] = l > A(0) ? mx + log_(l) : -A(INFINITY);
}

// dQ and D' per query row (one warp each): D' = dO . O - dlse; dQ = scale sum_s dX[s] k_s.
template <typename T, typename A>
__global__ void attn_bwd_dq_simple_kernel(const T* __restrict__ q, const T* __restrict__ k,
                                          const T* __restrict__ v, const T* __restrict__ o,
                                          const A* __restrict__ lse, const T* __restrict__ dout,
                                          const A* __restrict__ dlse, T* __restrict__ dq,
                                          A* __restrict__ dd, MaskRef mask, Dims n, A scale,
                                          bool causal) {
  const int64_t r = int64_t(blockIdx.x) * kSimpleWarps + threadIdx.x / 32;
  if (r >= n.B * n.NH * n.T) return;
  const int lane = threadIdx.x % 32, HS = int(n.HS);
  const int64_t bh = r / n.T, t = r % n.T, b = bh / n.NH, h = bh % n.NH;
  const int64_t kvrow = (b * n.NKV + h / (n.NH / n.NKV)) * n.S;
  A qr[kMaxChunks], dor[kMaxChunks], acc[kMaxChunks];
  load_row(qr, q + r * HS, HS, lane);
  load_row(dor, dout + r * HS, HS, lane);
#pragma unroll
  for (int j = 0; j < kMaxChunks; ++j) acc[j] = A(0);
  const A D = dot_row(dor, o + r * HS, HS, lane) - (dlse ? dlse[r] : A(0));
  const A L = lse[r];
  const int64_t s_end =
      L == -A(INFINITY) ? 0 : causal ? min(n.S, max(int64_t(0), t + n.S - n.T + 1)) : n.S;
  for (int64_t s = 0; s < s_end; ++s) {
    const A x = dot_row(qr, k + (kvrow + s) * HS, HS, lane) * scale + mask_term<A>(mask, b, h, t, s);
    if (x == -A(INFINITY)) continue;
    const A pr = exp_(x - L);
    const A ds = pr * (dot_row(dor, v + (kvrow + s) * HS, HS, lane) - D);
    const T* kr = k + (kvrow + s) * HS;
#pragma unroll
    for (int j = 0; j < kMaxChunks; ++j) {
      const int d = lane + 32 * j;
      if (d < HS) acc[j] += ds * convert<A>(kr[d]);
    }
  }
#pragma unroll
  for (int j = 0; j < kMaxChunks; ++j) {
    const int d = lane + 32 * j;
    if (d < HS) dq[r * HS + d] = convert<T>(acc[j] * scale);
  }
  if (lane == 0) dd[r] = D;
}

// dK and dV per key row (b, kvh, s), one warp each, summing over the group's query heads and the
// rows that see the key: dV = sum P dO_t;  dK = scale sum dX q_t. Needs D' from the dQ kernel.
template <typename T, typename A>
__global__ void attn_bwd_dkv_simple_kernel(const T* __restrict__ q, const T* __restrict__ k,
                                           const T* __restrict__ v, const A* __restrict__ lse,
                                           const T* __restrict__ dout, const A* __restrict__ dd,
                                           T* __restrict__ dk, T* __restrict__ dv, MaskRef mask,
                                           Dims n, A scale, bool causal) {
  const int64_t r = int64_t(blockIdx.x) * kSimpleWarps + threadIdx.x / 32;
  if (r >= n.B * n.NKV * n.S) return;
  const int lane = threadIdx.x % 32, HS = int(n.HS);
  const int64_t bk = r / n.S, s = r % n.S, b = bk / n.NKV, kvh = bk % n.NKV;
  const int64_t group = n.NH / n.NKV;
  A kr[kMaxChunks], vr[kMaxChunks], dka[kMaxChunks], dva[kMaxChunks];
  load_row(kr, k + r * HS, HS, lane);
  load_row(vr, v + r * HS, HS, lane);
#pragma unroll
  for (int j = 0; j < kMaxChunks; ++j) dka[j] = dva[j] = A(0);
  const int64_t t_begin = causal ? max(int64_t(0), s - (n.S - n.T)) : 0;
  for (int64_t h = kvh * group; h < (kvh + 1) * group; ++h) {
    const int64_t bh = b * n.NH + h;
    for (int64_t t = t_begin; t < n.T; ++t) {
      const int64_t qr = bh * n.T + t;  // row index into q, dout, lse, dd
      const A L = lse[qr];
      if (L == -A(INFINITY)) continue;
      const A x = dot_row(kr, q + qr * HS, HS, lane) * scale + mask_term<A>(mask, b, h, t, s);
      if (x == -A(INFINITY)) continue;
      const A pr = exp_(x - L);
      const T* dor = dout + qr * HS;
      const A ds = pr * (dot_row(vr, dor, HS, lane) - dd[qr]);
      const T* qrow = q + qr * HS;
#pragma unroll
      for (int j = 0; j < kMaxChunks; ++j) {
        const int d = lane + 32 * j;
        if (d < HS) {
          dva[j] += pr * convert<A>(dor[d]);
          dka[j] += ds * convert<A>(qrow[d]);
        }
      }
    }
  }
#pragma unroll
  for (int j = 0; j < kMaxChunks; ++j) {
    const int d = lane + 32 * j;
    if (d < HS) {
      dk[r * HS + d] = convert<T>(dka[j] * scale);
      dv[r * HS + d] = convert<T>(dva[j]);
    }
  }
}

// ===================================== launchers =====================================

template <typename T, int HS>
void launch_flash_fwd(const T* q, const T* k, const T* v, T* out, float* lse, const Dims& n,
                      float scale, bool causal) {
  constexpr int BM = FwdCfg<HS>::BM, smem = fwd_smem_bytes<HS>();
  auto kern = flash_fwd_kernel<T, HS>;
  check(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, smem),
        "attention");
  const dim3 grid(unsigned((n.T + BM - 1) / BM), unsigned(n.NH), unsigned(n.B));
  kern<<<grid, FwdCfg<HS>::NW * 32, smem, current_stream()>>>(q, k, v, out, lse, int(n.NH), int(n.NKV), int(n.T),
                                            int(n.S), scale, causal);
  check_launch("attention");
}

template <typename T, int HS>
void launch_flash_bwd(const T* q, const T* k, const T* v, const T* dout, const float* lse,
                      const float* dd, float* dq_acc, T* dk, T* dv, const Dims& n, float scale,
                      bool causal) {
  constexpr int NW = kBwdWarps, BN = 16 * NW, smem = bwd_smem_bytes<HS, NW>();
  auto kern = flash_bwd_kernel<T, HS, NW>;
  check(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, smem),
        "attention_backward");
  const dim3 grid(unsigned((n.S + BN - 1) / BN), unsigned(n.NKV), unsigned(n.B));
  kern<<<grid, NW * 32, smem, current_stream()>>>(q, k, v, dout, lse, dd, dq_acc, dk, dv, int(n.NH), int(n.NKV),
                                int(n.T), int(n.S), scale, causal);
  check_launch("attention_backward");
}

unsigned simple_blocks(int64_t rows) { return unsigned((rows + kSimpleWarps - 1) / kSimpleWarps); }

// ===================================== entries =====================================

DType lse_dtype(DType dt) { return dt == DType::Float64 ? DType::Float64 : DType::Float32; }

Dims check_inputs(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask,
                  const char* op) {
  LS_CHECK(q.defined() && k.defined() && v.defined(), ValueError, op, ": q, k and v are required");
  LS_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, ValueError, op,
           ": q must be (B, NH, T, HS) and k, v (B, NKV, S, HS); got shapes ", shape_str(q.shape()),
           ", ", shape_str(k.shape()), ", ", shape_str(v.shape()));
  LS_CHECK(is_floating(q.dtype()), TypeError, op, ": q must be a float dtype, got ",
           dtype_name(q.dtype()));
  LS_CHECK(k.dtype() == q.dtype() && v.dtype() == q.dtype(), TypeError, op,
           ": q, k, v dtypes differ: ", dtype_name(q.dtype()), ", ", dtype_name(k.dtype()), ", ",
           dtype_name(v.dtype()));
  LS_CHECK(k.shape() == v.shape(), ValueError, op, ": k and v shapes differ: ",
           shape_str(k.shape()), " and ", shape_str(v.shape()));
  Dims n{q.size(0), q.size(1), k.size(1), q.size(2), k.size(2), q.size(3)};
  LS_CHECK(k.size(0) == n.B && k.size(3) == n.HS, ValueError, op,
           ": k and v must be (B, NKV, S, HS) with q's B and HS; q ", shape_str(q.shape()), ", k ",
           shape_str(k.shape()));
  LS_CHECK(n.NKV > 0 ? n.NH % n.NKV == 0 : n.NH == 0, ValueError, op,
           ": the number of query heads (", n.NH, ") must be a multiple of the number of kv heads (",
           n.NKV, ")");
  LS_CHECK(k.device() == q.device() && v.device() == q.device(), ValueError, op,
           ": q, k, v must be on one device");
  if (mask.defined()) {
    LS_CHECK(mask.dtype() == DType::Bool || is_floating(mask.dtype()), TypeError, op,
             ": mask must be bool or float, got ", dtype_name(mask.dtype()));
    LS_CHECK(mask.device() == q.device(), ValueError, op, ": mask is on ", mask.device().str(),
             " but q is on ", q.device().str());
    const Shape full{n.B, n.NH, n.T, n.S};
    bool ok = mask.dim() <= 4;
    for (int64_t i = 0; ok && i < mask.dim(); ++i) {
      const int64_t m = mask.size(mask.dim() - 1 - i), f = full[3 - i];
      ok = m == f || m == 1;
    }
    LS_CHECK(ok, ValueError, op, ": mask of shape ", shape_str(mask.shape()),
             " does not broadcast to (B, NH, T, S) = ", shape_str(full));
  }
  return n;
}

// The mask as the simple kernels read it: contiguous; float masks in the accumulation dtype.
MaskRef prepare_mask(const Tensor& mask_in, DType acc, const Dims& n, Tensor& keep) {
  MaskRef m;
  if (!mask_in.defined()) return m;
  keep = ops::contiguous(mask_in.dtype() == DType::Bool ? mask_in : ops::to_dtype(mask_in, acc));
  m.p = keep.raw_data();
  m.kind = keep.dtype() == DType::Bool ? 1 : 2;
  int64_t st[4] = {0, 0, 0, 0}, full[4] = {n.B, n.NH, n.T, n.S};
  int64_t stride = 1;
  for (int64_t i = 0; i < keep.dim(); ++i) {  // from the last dim; size-1 dims broadcast
    const int64_t size = keep.size(keep.dim() - 1 - i);
    st[3 - i] = size == 1 && full[3 - i] != 1 ? 0 : stride;
    stride *= size;
  }
  m.sb = st[0], m.sh = st[1], m.st = st[2], m.ss = st[3];
  return m;
}

// The tensor-core path serves bf16/fp16, HS 64 or 128, no mask, a positive scale (the online
// max is taken before scaling) and 16-byte aligned rows.
bool use_flash(const Dims& n, DType dt, bool masked, double scale,
               std::initializer_list<const Tensor*> ts) {
  if (!(dt == DType::BFloat16 || dt == DType::Float16) || masked || !(scale > 0)) return false;
  if (n.HS != 64 && n.HS != 128) return false;
  if (n.T > INT32_MAX / 2 || n.S > INT32_MAX / 2) return false;
  for (const Tensor* t : ts)
    if (!aligned16(*t)) return false;
  return true;
}

void check_simple_hs(const Dims& n, const char* op) {
  if (n.HS > 32 * kMaxChunks)
    throw NotImplementedError(cat(op, ": CUDA supports head sizes up to ", 32 * kMaxChunks,
                                  " (64 and 128 on the fast bf16/fp16 path), got HS = ", n.HS));
}

double scale_of(const Attrs& a, int64_t HS) {
  return a.f("scale", HS > 0 ? 1.0 / std::sqrt(double(HS)) : 1.0);
}

// D' = rowsum(dO * O) - dlse into dd (B, NH, T).
template <typename T>
void preprocess(const Tensor& o, const Tensor& dout, const float* dlse, Tensor& dd, const Dims& n) {
  constexpr int kPreWarps = 8;
  const int64_t rows = n.B * n.NH * n.T;
  const RowStrides so = row_strides(o), sdo = row_strides(dout);
  const bool packed = (n.HS == 64 || n.HS == 128) && aligned16(o) && aligned16(dout) &&
                      (so.b | so.h | so.t | sdo.b | sdo.h | sdo.t) % 8 == 0;
  if (packed) {
    const int64_t threads = rows * (n.HS / 8);  // HS / 8 threads a row
    auto go = [&](auto kernel) {
      kernel<<<blocks_for(threads, 256), 256, 0, current_stream()>>>(
          o.data<T>(), so, dout.data<T>(), sdo, dlse, dd.data<float>(), rows, int(n.NH), int(n.T));
    };
    if (n.HS == 64) go(bwd_preprocess_packed_kernel<T, 8>);
    else go(bwd_preprocess_packed_kernel<T, 16>);
    check_launch("attention_backward");
    return;
  }
  bwd_preprocess_kernel<T><<<blocks_for(rows, kPreWarps), kPreWarps * 32, 0, current_stream()>>>(
      o.data<T>(), so, dout.data<T>(), sdo, dlse, dd.data<float>(), rows,
      int(n.NH), int(n.T), int(n.HS));
  check_launch("attention_backward");
}

template <typename T>
void forward_impl(const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out, Tensor& lse,
                  const MaskRef& mask, const Dims& n, double scale, bool causal, bool flash) {
  using A = acc_t<T>;
  const T *pq = q.data<T>(), *pk = k.data<T>(), *pv = v.data<T>();
  T* po = out.data<T>();
  if constexpr (std::is_same_v<T, __nv_bfloat16> || std::is_same_v<T, __half>) {
    if (flash) {
      if (n.HS == 64) launch_flash_fwd<T, 64>(pq, pk, pv, po, lse.data<float>(), n, float(scale), causal);
      else launch_flash_fwd<T, 128>(pq, pk, pv, po, lse.data<float>(), n, float(scale), causal);
      return;
    }
  }
  attn_fwd_simple_kernel<T, A><<<simple_blocks(n.B * n.NH * n.T), kSimpleWarps * 32, 0, current_stream()>>>(
      pq, pk, pv, po, lse.data<A>(), mask, n, A(scale), causal);
  check_launch("attention");
}

template <typename T>
void backward_impl(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o,
                   const Tensor& dout, const Tensor& lse, const Tensor& dlse, Tensor& dd,
                   Tensor& dq, Tensor& dk, Tensor& dv, const MaskRef& mask, const Dims& n,
                   double scale, bool causal, bool flash) {
  using A = acc_t<T>;
  const int64_t rows = n.B * n.NH * n.T;
  const T *pq = q.data<T>(), *pk = k.data<T>(), *pv = v.data<T>();
  const T *po = o.data<T>(), *pdo = dout.data<T>();
  const A* pdl = dlse.defined() ? dlse.data<A>() : nullptr;
  if constexpr (std::is_same_v<T, __nv_bfloat16> || std::is_same_v<T, __half>) {
    if (flash) {
      preprocess<T>(o, dout, pdl, dd, n);
      Tensor dq_acc = Tensor::empty(q.shape(), DType::Float32, q.device());
      check(cudaMemsetAsync(dq_acc.raw_data(), 0, size_t(dq_acc.numel()) * 4, current_stream()),
            "attention_backward");
      if (n.S > 0) {
        if (n.HS == 64)
          launch_flash_bwd<T, 64>(pq, pk, pv, pdo, lse.data<float>(), dd.data<float>(),
                                  dq_acc.data<float>(), dk.data<T>(), dv.data<T>(), n,
                                  float(scale), causal);
        else
          launch_flash_bwd<T, 128>(pq, pk, pv, pdo, lse.data<float>(), dd.data<float>(),
                                   dq_acc.data<float>(), dk.data<T>(), dv.data<T>(), n,
                                   float(scale), causal);
      }
      scale_cast_kernel<T><<<grid_for(dq.numel()), kThreads, 0, current_stream()>>>(dq.data<T>(), dq_acc.data<float>(),
                                                               dq.numel(), float(scale));
      check_launch("attention_backward");
      return;
    }
  }
  attn_bwd_dq_simple_kernel<T, A><<<simple_blocks(rows), kSimpleWarps * 32, 0, current_stream()>>>(
      pq, pk, pv, po, lse.data<A>(), pdo, pdl, dq.data<T>(), dd.data<A>(), mask, n, A(scale),
      causal);
  check_launch("attention_backward");
  if (n.S > 0) {
    attn_bwd_dkv_simple_kernel<T, A><<<simple_blocks(n.B * n.NKV * n.S), kSimpleWarps * 32, 0, current_stream()>>>(
        pq, pk, pv, lse.data<A>(), pdo, dd.data<A>(), dk.data<T>(), dv.data<T>(), mask, n,
        A(scale), causal);
    check_launch("attention_backward");
  }
}

#ifdef LLMSCRATCH_SM90A
// The strides of a (B, heads, rows, HS) tensor as the copy engine takes them; a size-1 dim gets
// the stride a contiguous tensor would have there (it is never stepped, and the engine wants
// every stride a positive multiple of 16 bytes).
sm90a::HeadStrides head_strides(const Tensor& t) {
  const int64_t row = t.size(2) == 1 ? t.size(3) : t.strides()[2];
  const int64_t h = t.size(1) == 1 ? t.size(2) * row : t.strides()[1];
  return {t.size(0) == 1 ? t.size(1) * h : t.strides()[0], h, row};
}

// t itself where the copy engine can read it in place (a contiguous last dim, the other strides
// multiples of 16 bytes, a 16-byte aligned base), else a contiguous copy.
Tensor for_copy_engine(const Tensor& t) {
  if (t.strides()[3] == 1 && aligned16(t) && sm90a::head_strides_ok(head_strides(t))) return t;
  return ops::contiguous(t);
}

// An uninitialised (B, heads, rows, HS) result, stored (B, rows, heads, HS).
Tensor heads_within_rows(const Tensor& like, int64_t heads, int64_t rows) {
  const int64_t B = like.size(0), HS = like.size(3);
  const Tensor t = Tensor::empty({B, rows, heads, HS}, like.dtype(), like.device());
  return t.as_strided({B, heads, rows, HS}, {rows * heads * HS, HS, heads * HS, 1}, 0);
}

// {dq, dk, dv} for q, k, v that are adjacent head slices of one (B, T, NH + 2 NKV, HS) tensor (a
// fused qkv projection split along its heads): views of one buffer in that tensor's layout, so
// that the split's backward takes the buffer as the projection's gradient instead of
// concatenating three (concat.cpp); {} for any other q, k, v.
Tensors fused_qkv_grads(const Tensor& q, const Tensor& k, const Tensor& v, const Dims& n) {
  const int64_t HS = n.HS, R = (n.NH + 2 * n.NKV) * HS;  // R: the fused tensor's row stride
  const Shape strides = {n.T * R, HS, R, 1};
  if (n.T != n.S || q.strides() != strides ||
      !ops::tiled_view({q, k, v}, {n.B, n.NH + 2 * n.NKV, n.T, HS}, 1).defined())
    return {};
  const Tensor buf = Tensor::empty({n.B, n.T, n.NH + 2 * n.NKV, HS}, q.dtype(), q.device());
  return {buf.as_strided({n.B, n.NH, n.T, HS}, strides, 0),
          buf.as_strided({n.B, n.NKV, n.T, HS}, strides, n.NH * HS),
          buf.as_strided({n.B, n.NKV, n.T, HS}, strides, (n.NH + n.NKV) * HS)};
}

// The tensor-core case (use_flash's rules before alignment, which for_copy_engine takes care of)
// with queries and keys, on a device that runs the sm_90a kernels.
bool sm90a_case(const Dims& n, DType dt, bool masked, double scale) {
  return use_flash(n, dt, masked, scale, {}) && n.B * n.NH * n.T > 0 && n.S > 0 &&
         sm90a::chosen("LLMSCRATCH_ATTENTION");
}

// The forward on the sm_90a kernels: {out, lse}, or {} when they do not cover the case.
Tensors forward_sm90a(const Tensors& in, const Dims& n, double scale, bool causal) {
  const Tensor q = for_copy_engine(in[0]), k = for_copy_engine(in[1]), v = for_copy_engine(in[2]);
  Tensor out = heads_within_rows(q, n.NH, n.T);
  Tensor lse = Tensor::empty({n.B, n.NH, n.T}, DType::Float32, q.device());
  const sm90a::AttentionProblem a{q.dtype() == DType::BFloat16, int(n.HS), q.raw_data(),
                                  k.raw_data(), v.raw_data(), out.raw_data(), lse.data<float>(),
                                  int(n.B), int(n.NH), int(n.NKV), int(n.T), int(n.S),
                                  float(scale), causal, head_strides(q), head_strides(k),
                                  head_strides(v), head_strides(out)};
  if (!sm90a::attention_forward(a, current_stream())) return {};
  check_launch("attention");
  return {out, lse};
}

// The backward on the sm_90a kernels (inputs as attention_backward_cuda's, lse and dlse float32
// contiguous): {dq, dk, dv}, or {} when they do not cover the case.
Tensors backward_sm90a(const Tensors& in, const Tensor& lse, const Tensor& dlse, const Dims& n,
                       double scale, bool causal) {
  const Tensor q = for_copy_engine(in[0]), k = for_copy_engine(in[1]), v = for_copy_engine(in[2]);
  const Tensor dout = for_copy_engine(in[6]);
  const Tensor o = in[4].strides()[3] == 1 ? in[4] : ops::contiguous(in[4]);  // read by pointers
  Tensor dd = Tensor::empty({n.B, n.NH, n.T}, DType::Float32, q.device());
  Tensors grads = fused_qkv_grads(in[0], in[1], in[2], n);
  if (grads.empty())
    grads = {heads_within_rows(q, n.NH, n.T), heads_within_rows(q, n.NKV, n.S), heads_within_rows(q, n.NKV, n.S)};
  const Tensor &dq = grads[0], &dk = grads[1], &dv = grads[2];
  const float* pdl = dlse.defined() ? dlse.data<float>() : nullptr;
  const bool bf16 = q.dtype() == DType::BFloat16;
  if (bf16) preprocess<__nv_bfloat16>(o, dout, pdl, dd, n);
  else preprocess<__half>(o, dout, pdl, dd, n);
  const sm90a::AttentionBackwardProblem a{
      bf16, int(n.HS), q.raw_data(), k.raw_data(), v.raw_data(), dout.raw_data(), lse.data<float>(),
      dd.data<float>(), dq.raw_data(), dk.raw_data(), dv.raw_data(), int(n.B), int(n.NH),
      int(n.NKV), int(n.T), int(n.S), float(scale), causal, head_strides(q), head_strides(k),
      head_strides(v), head_strides(dout), head_strides(dq), head_strides(dk), head_strides(dv)};
  if (!sm90a::attention_backward(a, current_stream())) return {};
  check_launch("attention_backward");
  return {dq, dk, dv};
}
#endif

Tensors attention_cuda(const Tensors& in, const Attrs& a) {
  LS_CHECK(in.size() == 3 || in.size() == 4, ValueError,
           "attention: expected the inputs (q, k, v) or (q, k, v, mask)");
  const Tensor mask_in = in.size() > 3 ? in[3] : Tensor();
  const Dims n = check_inputs(in[0], in[1], in[2], mask_in, "attention");
  const bool causal = a.b("causal", false);
  const double scale = scale_of(a, n.HS);
#ifdef LLMSCRATCH_SM90A
  set_device(in[0], "attention");  // sm90a_case asks whether the current device is a Hopper
  if (sm90a_case(n, in[0].dtype(), mask_in.defined(), scale)) {
    Tensors r = forward_sm90a(in, n, scale, causal);
    if (!r.empty()) return r;
  }
#endif
  const Tensor q = ops::contiguous(in[0]), k = ops::contiguous(in[1]), v = ops::contiguous(in[2]);
  const DType dt = q.dtype(), acc = lse_dtype(dt);
  Tensor out = Tensor::empty(q.shape(), dt, q.device());
  Tensor lse = Tensor::empty({n.B, n.NH, n.T}, acc, q.device());
  if (n.B * n.NH * n.T == 0) return {out, lse};
  set_device(q, "attention");
  const bool flash = use_flash(n, dt, mask_in.defined(), scale, {&q, &k, &v, &out});
  if (!flash) check_simple_hs(n, "attention");
  Tensor mask_keep;
  const MaskRef mask = prepare_mask(mask_in, acc, n, mask_keep);
  CUDA_DISPATCH_FLOAT(dt, "attention",
                      forward_impl<scalar_t>(q, k, v, out, lse, mask, n, scale, causal, flash));
  return {out, lse};
}

// Inputs {q, k, v, mask, out, lse, dout[, dlse]}: mask and dlse may be undefined.
Tensors attention_backward_cuda(const Tensors& in, const Attrs& a) {
  LS_CHECK((in.size() == 7 || in.size() == 8) && in[4].defined() && in[5].defined() &&
               in[6].defined(),
           ValueError,
           "attention_backward: expected the inputs (q, k, v, mask, out, lse, dout[, dlse])");
  const Dims n = check_inputs(in[0], in[1], in[2], in[3], "attention_backward");
  const DType dt = in[0].dtype(), acc = lse_dtype(dt);
  LS_CHECK(in[4].shape() == in[0].shape() && in[6].shape() == in[0].shape() &&
               in[5].shape() == (Shape{n.B, n.NH, n.T}),
           ValueError, "attention_backward: out and dout must be ", shape_str(in[0].shape()),
           " and lse (B, NH, T); got ", shape_str(in[4].shape()), ", ", shape_str(in[6].shape()),
           ", ", shape_str(in[5].shape()));
  LS_CHECK(in[4].dtype() == dt && in[6].dtype() == dt, TypeError,
           "attention_backward: out and dout must have q's dtype ", dtype_name(dt));
  const bool has_dlse = in.size() > 7 && in[7].defined();
  LS_CHECK(!has_dlse || in[7].shape() == in[5].shape(), ValueError,
           "attention_backward: dlse must have lse's shape ", shape_str(in[5].shape()));
  LS_CHECK(is_floating(in[5].dtype()) && (!has_dlse || is_floating(in[7].dtype())), TypeError,
           "attention_backward: lse and dlse must be float tensors");
  // lse and dlse are read in the accumulation dtype (float32 for 16-bit q)
  const Tensor lse = ops::contiguous(ops::to_dtype(in[5], acc));
  const Tensor dlse = has_dlse ? ops::contiguous(ops::to_dtype(in[7], acc)) : Tensor();
  const bool causal = a.b("causal", false);
  const double scale = scale_of(a, n.HS);
#ifdef LLMSCRATCH_SM90A
  set_device(in[0], "attention_backward");  // sm90a_case asks about the current device
  if (sm90a_case(n, dt, in[3].defined(), scale)) {
    Tensors r = backward_sm90a(in, lse, dlse, n, scale, causal);
    if (!r.empty()) return r;
  }
#endif
  const Tensor q = ops::contiguous(in[0]), k = ops::contiguous(in[1]), v = ops::contiguous(in[2]);
  const Tensor o = ops::contiguous(in[4]), dout = ops::contiguous(in[6]);
  Tensor dq = Tensor::empty(q.shape(), dt, q.device());
  Tensor dk = Tensor::empty(k.shape(), dt, q.device());
  Tensor dv = Tensor::empty(v.shape(), dt, q.device());
  if (dq.numel() + dk.numel() == 0) return {dq, dk, dv};
  set_device(q, "attention_backward");
  const int64_t rows = n.B * n.NH * n.T;
  if (rows == 0) {  // no queries: dK = dV = 0
    ops::fill_(dk, 0.0);
    ops::fill_(dv, 0.0);
    return {dq, dk, dv};
  }
  const bool flash = use_flash(n, dt, in[3].defined(), scale, {&q, &k, &v, &o, &dout, &dk, &dv});
  if (!flash) check_simple_hs(n, "attention_backward");
  Tensor mask_keep;
  const MaskRef mask = prepare_mask(in[3], acc, n, mask_keep);
  Tensor dd = Tensor::empty({n.B, n.NH, n.T}, acc, q.device());  // D' = rowsum(dO O) - dlse
  CUDA_DISPATCH_FLOAT(dt, "attention_backward",
                      backward_impl<scalar_t>(q, k, v, o, dout, lse, dlse, dd, dq, dk, dv, mask,
                                              n, scale, causal, flash));
  return {dq, dk, dv};
}

}  // namespace

LS_REGISTER(attention_cuda) {
  const std::vector<DType> dts{DType::Float32, DType::Float64, DType::BFloat16, DType::Float16};
  register_kernel("attention", "cuda", attention_cuda, dts);
  register_kernel("attention_backward", "cuda", attention_backward_cuda, dts);
}

}  // namespace ls::cuda
