// Attention forward for Hopper (sm_90a), bf16/fp16, HS 64 or 128, no user mask: the op
// "attention" of cuda/attention.cu (same math, shapes and outputs) with TMA and wgmma, in the
// manner of FlashAttention-3.
//   q (B, NH, T, HS), k and v (B, NKV, S, HS), contiguous; query head h reads kv head
//   h / (NH / NKV); X = scale * Q K^T, causal hides key s > t + (S - T); out = softmax(X) V;
//   lse (B, NH, T) fp32 = log sum_s exp(X[t, s]) (-inf, with out 0, for a row that sees no key).
//
// One block per (128 query rows, h, b), heaviest causal blocks first; three warpgroups:
//   - warpgroup 0 is the producer: one thread loads the Q tile once, then the 128-key K and V
//     tiles into a 2-stage ring, each tile on its own "full" mbarrier, so the scores of a tile
//     can start before its V has landed.
//   - warpgroups 1 and 2 each own 64 query rows. Per key tile: S = Q K^T as m64n128k16 wgmmas
//     from shared memory (fp32, 64 registers a thread); the online softmax on those registers in
//     the log2 domain (scale * log2(e) folded into one multiply, exp2); P rounded to the input
//     type straight into the register layout of a wgmma A operand (the accumulator layout of
//     S is that layout, k-step by k-step); O += P V with V read transposed from shared memory
//     (imm-trans-b = 1). Each warpgroup releases a K or V stage as soon as its wgmmas on it
//     have completed. The two consumers interleave: one runs its softmax while the other's
//     wgmmas use the tensor cores.
//   Masks (causal, and the keys past S in the last tile) are applied only to the tiles that
//   cross them; the copy engine zero-fills rows past T and S, so no tail path exists.
// Tensor maps view q as (HS, T, B * NH) and k, v as (HS, S, B * NKV): a tile never reads
// another head's rows. Each tile is stored as HS / 64 boxes of 64 columns x 128 rows with the
// 128-byte swizzle (hopper.cuh).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <atomic>
#include <cmath>
#include <type_traits>

#include "../pack.cuh"
#include "hopper.cuh"
#include "sm90a.h"

namespace ls::cuda::sm90a {

namespace {

constexpr int kBM = 128, kBN = 128, kStages = 2, kThreads = 384;
constexpr int kBoxBytes = 128 * 64 * 2;  // 64 columns x 128 rows
constexpr float kLog2e = 1.4426950408889634f;

template <int HS>
struct Layout {
  static constexpr int kBoxes = HS / 64;
  static constexpr int kTileBytes = kBoxes * kBoxBytes;  // a Q, K or V tile
  // Q, then K stages, then V stages; 8-byte mbarriers after them; 1024 bytes of alignment slack.
  static constexpr int kSmemBytes = (1 + 2 * kStages) * kTileBytes + 1024 + 8 * (1 + 4 * kStages);
};

struct Params {
  void* out;
  float* lse;
  int NH, NKV, T, S;
  float scale_log2;  // scale * log2(e)
  bool causal;
  HeadStrides so;  // out's
};

// The KEYS-key tiles that the ROWS-row query tile at m0 needs: all of them, or under the causal
// mask those up to its last visible key m0 + ROWS - 1 + S - T.
template <int ROWS, int KEYS>
__host__ __device__ inline int key_tiles(int m0, int T, int S, bool causal) {
  const int end = causal ? min(S, m0 + ROWS + S - T) : S;
  return end <= 0 ? 0 : (end + KEYS - 1) / KEYS;
}

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)

// S (64 x 128) (+)= A (64 x 16, shared, K-major) B (16 x 128, shared, K-major).
template <typename T>
__device__ __forceinline__ void wgmma_ss_n128(float (&d)[64], uint64_t da, uint64_t db,
                                            int accumulate) {
#define LS_ASM(TY)                                                                          \
  asm volatile(                                                                           \
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"                                          \
      "wgmma.mma_async.sync.aligned.m64n128k16.f32." TY "." TY " {"                         \
      "%0, %1, %2, %3, %4, %5, %6, %7,"                                                     \
      "%8, %9, %10, %11, %12, %13, %14, %15,"                                               \
      "%16, %17, %18, %19, %20, %21, %22, %23,"                                             \
      "%24, %25, %26, %27, %28, %29, %30, %31,"                                             \
      "%32, %33, %34, %35, %36, %37, %38, %39,"                                             \
      "%40, %41, %42, %43, %44, %45, %46, %47,"                                             \
      "%48, %49, %50, %51, %52, %53, %54, %55,"                                             \
      "%56, %57, %58, %59, %60, %61, %62, %63"                                              \
      "}, %64, %65, p, 1, 1, 0, 0;\n}\n"                                                    \
      : LS_ACC8(0), LS_ACC8(8), LS_ACC8(16), LS_ACC8(24), LS_ACC8(32), LS_ACC8(40),         \
        LS_ACC8(48), LS_ACC8(56)                                                            \
      : "l"(da), "l"(db), "r"(accumulate))
  if constexpr (std::is_same_v<T, __nv_bfloat16>)
    LS_ASM("bf16");
  else
    LS_ASM("f16");
#undef LS_ASM
}

// S (64 x 64) (+)= A (64 x 16, shared, K-major) B (16 x 64, shared, K-major).
template <typename T>
__device__ __forceinline__ void wgmma_ss_n64(float (&d)[32], uint64_t da, uint64_t db,
                                            int accumulate) {
#define LS_ASM(TY)                                                                          \
  asm volatile(                                                                           \
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"                                          \
      "wgmma.mma_async.sync.aligned.m64n64k16.f32." TY "." TY " {"                          \
      "%0, %1, %2, %3, %4, %5, %6, %7,"                                                     \
      "%8, %9, %10, %11, %12, %13, %14, %15,"                                               \
      "%16, %17, %18, %19, %20, %21, %22, %23,"                                             \
      "%24, %25, %26, %27, %28, %29, %30, %31"                                              \
      "}, %32, %33, p, 1, 1, 0, 0;\n}\n"                                                    \
      : LS_ACC8(0), LS_ACC8(8), LS_ACC8(16), LS_ACC8(24)                                    \
      : "l"(da), "l"(db), "r"(accumulate))
  if constexpr (std::is_same_v<T, __nv_bfloat16>)
    LS_ASM("bf16");
  else
    LS_ASM("f16");
#undef LS_ASM
}

// O (64 x 128) (+)= A (64 x 16, registers) B (16 x 128, shared, N-major).
template <typename T>
__device__ __forceinline__ void wgmma_rs_n128(float (&d)[64], const uint32_t (&a)[4], uint64_t db,
                                            int accumulate) {
#define LS_ASM(TY)                                                                          \
  asm volatile(                                                                           \
      "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"                                          \
      "wgmma.mma_async.sync.aligned.m64n128k16.f32." TY "." TY " {"                         \
      "%0, %1, %2, %3, %4, %5, %6, %7,"                                                     \
      "%8, %9, %10, %11, %12, %13, %14, %15,"                                               \
      "%16, %17, %18, %19, %20, %21, %22, %23,"                                             \
      "%24, %25, %26, %27, %28, %29, %30, %31,"                                             \
      "%32, %33, %34, %35, %36, %37, %38, %39,"                                             \
      "%40, %41, %42, %43, %44, %45, %46, %47,"                                             \
      "%48, %49, %50, %51, %52, %53, %54, %55,"                                             \
      "%56, %57, %58, %59, %60, %61, %62, %63"                                              \
      "}, {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"                                      \
      : LS_ACC8(0), LS_ACC8(8), LS_ACC8(16), LS_ACC8(24), LS_ACC8(32), LS_ACC8(40),         \
        LS_ACC8(48), LS_ACC8(56)                                                            \
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(accumulate))
  if constexpr (std::is_same_v<T, __nv_bfloat16>)
    LS_ASM("bf16");
  else
    LS_ASM("f16");
#undef LS_ASM
}

// O (64 x 64) (+)= A (64 x 16, registers) B (16 x 64, shared, N-major).
template <typename T>
__device__ __forceinline__ void wgmma_rs_n64(float (&d)[32], const uint32_t (&a)[4], uint64_t db,
                                            int accumulate) {
#define LS_ASM(TY)                                                                          \
  asm volatile(                                                                           \
      "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"                                          \
      "wgmma.mma_async.sync.aligned.m64n64k16.f32." TY "." TY " {"                          \
      "%0, %1, %2, %3, %4, %5, %6, %7,"                                                     \
      "%8, %9, %10, %11, %12, %13, %14, %15,"                                               \
      "%16, %17, %18, %19, %20, %21, %22, %23,"                                             \
      "%24, %25, %26, %27, %28, %29, %30, %31"                                              \
      "}, {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"                                      \
      : LS_ACC8(0), LS_ACC8(8), LS_ACC8(16), LS_ACC8(24)                                    \
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(accumulate))
  if constexpr (std::is_same_v<T, __nv_bfloat16>)
    LS_ASM("bf16");
  else
    LS_ASM("f16");
#undef LS_ASM
}
__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffff, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffff, x, 2));
}
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffff, x, 1);
  return x + __shfl_xor_sync(0xffffffff, x, 2);
}

#endif  // sm_90a device code

template <typename T, int HS>
__global__ void __launch_bounds__(kThreads, 1)
    attention_fwd_kernel(const __grid_constant__ CUtensorMap map_q,
                         const __grid_constant__ CUtensorMap map_k,
                         const __grid_constant__ CUtensorMap map_v, Params p) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using L = Layout<HS>;
  extern __shared__ __align__(1024) unsigned char smem[];
  const uint32_t q_tile = (smem_addr(smem) + 1023) & ~uint32_t(1023);
  const uint32_t k_tiles = q_tile + L::kTileBytes, v_tiles = k_tiles + kStages * L::kTileBytes;
  const uint32_t bars = v_tiles + kStages * L::kTileBytes;
  const uint32_t q_full = bars;
  auto k_full = [&](int s) { return bars + 8 * (1 + s); };
  auto v_full = [&](int s) { return bars + 8 * (1 + kStages + s); };
  auto k_empty = [&](int s) { return bars + 8 * (1 + 2 * kStages + s); };
  auto v_empty = [&](int s) { return bars + 8 * (1 + 3 * kStages + s); };

  const int m0 = (gridDim.x - 1 - blockIdx.x) * kBM;  // the longest causal rows first
  const int h = blockIdx.y, b = blockIdx.z;
  const int bh = b * p.NH + h, hkv = h / (p.NH / p.NKV);
  const int n_tiles = key_tiles<kBM, kBN>(m0, p.T, p.S, p.causal);

  if (threadIdx.x == 0) {
    mbar_init(q_full, 1);
    for (int s = 0; s < kStages; ++s) {
      mbar_init(k_full(s), 1);
      mbar_init(v_full(s), 1);
      mbar_init(k_empty(s), 2);
      mbar_init(v_empty(s), 2);
    }
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();

  const int wg = threadIdx.x / 128, tid = threadIdx.x % 128;
  if (wg == 0) {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 24;");
    if (tid == 0) {
      mbar_expect_tx(q_full, L::kTileBytes);
      for (int i = 0; i < L::kBoxes; ++i) tma_load(q_tile + i * kBoxBytes, &map_q, 64 * i, m0, h, b, q_full);
      for (int j = 0; j < n_tiles; ++j) {
        const int s = j % kStages, round = j / kStages;
        if (round > 0) mbar_wait(k_empty(s), (round - 1) & 1);
        mbar_expect_tx(k_full(s), L::kTileBytes);
        for (int i = 0; i < L::kBoxes; ++i)
          tma_load(k_tiles + s * L::kTileBytes + i * kBoxBytes, &map_k, 64 * i, j * kBN, hkv, b, k_full(s));
        if (round > 0) mbar_wait(v_empty(s), (round - 1) & 1);
        mbar_expect_tx(v_full(s), L::kTileBytes);
        for (int i = 0; i < L::kBoxes; ++i)
          tma_load(v_tiles + s * L::kTileBytes + i * kBoxBytes, &map_v, 64 * i, j * kBN, hkv, b, v_full(s));
      }
    }
    return;
  }

  asm volatile("setmaxnreg.inc.sync.aligned.u32 240;");
  const int c = wg - 1, warp = tid / 32, lane = tid % 32;
  // This thread's rows of the 64 owned by its warpgroup, and its column pair in each 8 columns.
  const int row_a = m0 + c * 64 + warp * 16 + lane / 4, row_b = row_a + 8;
  const int col = 2 * (lane % 4);

  float o[HS / 2];  // O: 64 x HS fp32 over the warpgroup
#pragma unroll
  for (int i = 0; i < HS / 2; ++i) o[i] = 0.f;
  float m_a = -INFINITY, m_b = -INFINITY, l_a = 0.f, l_b = 0.f;  // l: this thread's partial sums

  mbar_wait(q_full, 0);
  for (int j = 0; j < n_tiles; ++j) {
    const int s = j % kStages;
    const uint32_t phase = (j / kStages) & 1;
    const uint32_t k_tile = k_tiles + s * L::kTileBytes, v_tile = v_tiles + s * L::kTileBytes;

    // S = Q K^T over HS in k-steps of 16: box kk / 4, 32 bytes per k-step inside a box.
    float x[64];
    mbar_wait(k_full(s), phase);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < HS / 16; ++kk) {
      const uint32_t off = (kk / 4) * kBoxBytes + (kk % 4) * 32;
      wgmma_ss_n128<T>(x, descriptor(q_tile + off + c * 64 * 128, 16, 1024),
                       descriptor(k_tile + off, 16, 1024), kk > 0);
    }
    wgmma_commit();
    wgmma_wait_all();
    if (tid == 0) mbar_arrive(k_empty(s));

    // Masks: keys past S, and under the causal mask keys past each row's last visible one.
    const int key0 = j * kBN;
    if (key0 + kBN > p.S || (p.causal && key0 + kBN - 1 > m0 + p.S - p.T)) {
      const int last_a = p.causal ? row_a + p.S - p.T : p.S - 1;
      const int last_b = p.causal ? row_b + p.S - p.T : p.S - 1;
#pragma unroll
      for (int n = 0; n < 16; ++n) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int key = key0 + 8 * n + col + e;
          const bool in_s = key < p.S;
          if (!in_s || key > last_a) x[4 * n + e] = -INFINITY;
          if (!in_s || key > last_b) x[4 * n + 2 + e] = -INFINITY;
        }
      }
    }

    // Online softmax, log2 domain. A row that has seen only masked keys keeps max -inf and
    // subtracts 0 instead, so exp2 gives 0, never NaN.
    float mx_a = -INFINITY, mx_b = -INFINITY;
#pragma unroll
    for (int n = 0; n < 16; ++n) {
      mx_a = fmaxf(mx_a, fmaxf(x[4 * n], x[4 * n + 1]));
      mx_b = fmaxf(mx_b, fmaxf(x[4 * n + 2], x[4 * n + 3]));
    }
    const float new_a = fmaxf(m_a, quad_max(mx_a) * p.scale_log2);
    const float new_b = fmaxf(m_b, quad_max(mx_b) * p.scale_log2);
    const float base_a = new_a == -INFINITY ? 0.f : new_a;
    const float base_b = new_b == -INFINITY ? 0.f : new_b;
    const float alpha_a = exp2f(m_a - base_a), alpha_b = exp2f(m_b - base_b);
    m_a = new_a;
    m_b = new_b;
    float sum_a = 0.f, sum_b = 0.f;
    uint32_t pf[8][4];  // P as the A operand of 8 k-steps of 16 keys
#pragma unroll
    for (int n = 0; n < 16; ++n) {
      const float p0 = exp2f(fmaf(x[4 * n], p.scale_log2, -base_a));
      const float p1 = exp2f(fmaf(x[4 * n + 1], p.scale_log2, -base_a));
      const float p2 = exp2f(fmaf(x[4 * n + 2], p.scale_log2, -base_b));
      const float p3 = exp2f(fmaf(x[4 * n + 3], p.scale_log2, -base_b));
      sum_a += p0 + p1;
      sum_b += p2 + p3;
      // columns 8n.. of k-step n / 2: registers {0, 1} for the first 8 keys, {2, 3} the next
      pf[n / 2][(n % 2) * 2] = pack2<T>(p0, p1);
      pf[n / 2][(n % 2) * 2 + 1] = pack2<T>(p2, p3);
    }
    l_a = l_a * alpha_a + sum_a;
    l_b = l_b * alpha_b + sum_b;
#pragma unroll
    for (int n = 0; n < HS / 8; ++n) {
      o[4 * n] *= alpha_a;
      o[4 * n + 1] *= alpha_a;
      o[4 * n + 2] *= alpha_b;
      o[4 * n + 3] *= alpha_b;
    }

    // O += P V: k-steps over 16 keys (16 rows of 128 bytes: 2048 bytes); the HS / 64 column
    // boxes of V are kBoxBytes apart (the descriptor's leading byte offset).
    mbar_wait(v_full(s), phase);
    wgmma_fence();
#pragma unroll
    for (int t = 0; t < kBN / 16; ++t) {
      const uint64_t dv = descriptor(v_tile + t * 2048, kBoxBytes, 1024);
      if constexpr (HS == 128)
        wgmma_rs_n128<T>(o, pf[t], dv, 1);
      else
        wgmma_rs_n64<T>(o, pf[t], dv, 1);
    }
    wgmma_commit();
    wgmma_wait_all();
    if (tid == 0) mbar_arrive(v_empty(s));
  }

  // Epilogue: O / l and lse = (m + log2 l) / log2(e).
  l_a = quad_sum(l_a);
  l_b = quad_sum(l_b);
  T* out = static_cast<T*>(p.out) + b * p.so.b + h * p.so.h;
  const float inv_a = l_a > 0.f ? 1.f / l_a : 0.f, inv_b = l_b > 0.f ? 1.f / l_b : 0.f;
#pragma unroll
  for (int n = 0; n < HS / 8; ++n) {
    if (row_a < p.T)
      *reinterpret_cast<uint32_t*>(out + row_a * p.so.row + 8 * n + col) =
          pack2<T>(o[4 * n] * inv_a, o[4 * n + 1] * inv_a);
    if (row_b < p.T)
      *reinterpret_cast<uint32_t*>(out + row_b * p.so.row + 8 * n + col) =
          pack2<T>(o[4 * n + 2] * inv_b, o[4 * n + 3] * inv_b);
  }
  if (lane % 4 == 0) {
    float* lse = p.lse + int64_t(bh) * p.T;
    if (row_a < p.T) lse[row_a] = l_a > 0.f ? (m_a + log2f(l_a)) / kLog2e : -INFINITY;
    if (row_b < p.T) lse[row_b] = l_b > 0.f ? (m_b + log2f(l_b)) / kLog2e : -INFINITY;
  }
#endif
}

// ---- backward ----
// Two kernels, each recomputing P from q, k and lse, so that every gradient is written once by one
// block (deterministic, no atomics):
//   dK, dV: one block per (128 keys, kv head, b), each consumer warpgroup owns 64 keys; the block
//     walks the query tiles (64 rows, a ring of Q and dO) of every query head of the kv
//     head's group: S^T = K Q^T, P^T = exp2(S^T * scale * log2(e) - lse * log2(e)),
//     dP^T = V dO^T, dV += P^T dO, dS^T = P^T (dP^T - D'), dK += dS^T Q (scaled at the end).
//   dQ: one block per (128 query rows, h, b), each consumer 64 rows; the block walks the key
//     tiles (64 keys, 2-stage ring of K and V): S = Q K^T, P, dP = dO V^T, dS = P (dP - D'),
//     dQ += dS K (scaled at the end).
//   D' = rowsum(dO * O) - dlse comes from cuda/attention.cu's preprocess kernel (fp32).
// The S and dP products read both operands K-major from shared memory; the products with P^T,
// dS^T or dS take them from registers (the accumulator layout) and read dO, Q or K transposed.
// A step's last product (dK or dQ) is left running into the next step, whose S and dP products
// queue behind it (the step's ring stage is released after the next step's S is waited for),
// where the registers allow: in the dQ kernel, and in the dK/dV kernel at HS 64 with a 3-stage
// ring (at HS 128 its accumulators leave no room: ptxas would serialize every wgmma).

constexpr int kBwdKeys = 128, kBwdRows = 64;     // dK/dV block: keys; its query tiles: rows
// The dK/dV kernel's ring stages and whether its dK product runs into the next step (see above);
// at HS 64, B4 NH32 T4096 bf16 on an H100: 2.24-2.27 ms with 2 stages and a wait at each step's
// end, 2.19 overlapped, 2.11-2.12 overlapped with 3 stages (the dQ kernel: 1.24-1.26 -> 1.23 ms
// overlapped, 1.28-1.29 with 3 stages).
template <int HS>
constexpr bool kDkdvOverlap = HS == 64;
template <int HS>
constexpr int kDkdvStages = kDkdvOverlap<HS> ? 3 : 2;
constexpr int kDqStages = 2;  // the dQ kernel's ring (3 stages measured slower, see above)
constexpr int kDqRows = 128, kDqKeys = 64;       // dQ block: query rows; its key tiles: keys
constexpr int kHalfBoxBytes = 64 * 64 * 2;       // a box of 64 columns x 64 rows

template <int HS, int STAGES>
struct BwdLayout {
  static constexpr int kBoxes = HS / 64;
  static constexpr int kBig = kBoxes * kBoxBytes;       // 128 rows x HS
  static constexpr int kSmall = kBoxes * kHalfBoxBytes;  // 64 rows x HS
  static constexpr int kStats = 2 * kBwdRows * 4;  // a ring stage's lse and D' of 64 query rows
  // two resident 128-row tiles, a ring of STAGES stages of two 64-row tiles, the ring's row
  // statistics (dK/dV kernel); mbarriers after
  static constexpr int kSmemBytes = 2 * kBig + 2 * STAGES * kSmall + STAGES * kStats + 1024 + 8 * (1 + 2 * STAGES);
};

struct BwdParams {
  const float* lse;  // (B, NH, T)
  const float* dd;   // D' (B, NH, T)
  void* dq;          // (B, NH, T, HS)
  void* dk;          // (B, NKV, S, HS)
  void* dv;
  int NH, NKV, T, S;
  float scale, scale_log2;
  bool causal;
  HeadStrides sdq, sdk, sdv;
};

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)

template <typename T, int HS>
__device__ __forceinline__ void wgmma_rs(float (&d)[HS / 2], const uint32_t (&a)[4], uint64_t db) {
  if constexpr (HS == 128)
    wgmma_rs_n128<T>(d, a, db, 1);
  else
    wgmma_rs_n64<T>(d, a, db, 1);
}

// Rows of a 64 x HS fp32 accumulator (this thread's rows r and r + 8 of each 8 columns), scaled
// and rounded, to rows [row0 .. row0 + 63] of a (rows, HS) matrix whose rows are ld elements
// apart; rows >= limit are skipped.
template <typename T, int HS>
__device__ __forceinline__ void store_rows(T* dst, int64_t ld, const float (&acc)[HS / 2], int row,
                                           int limit, int col, float scale) {
#pragma unroll
  for (int n = 0; n < HS / 8; ++n) {
    if (row < limit)
      *reinterpret_cast<uint32_t*>(dst + row * ld + 8 * n + col) =
          pack2<T>(acc[4 * n] * scale, acc[4 * n + 1] * scale);
    if (row + 8 < limit)
      *reinterpret_cast<uint32_t*>(dst + (row + 8) * ld + 8 * n + col) =
          pack2<T>(acc[4 * n + 2] * scale, acc[4 * n + 3] * scale);
  }
}

// The shared memory of both backward kernels: two resident 128-row tiles a and b, a ring of
// STAGES stages of two 64-row tiles, per ring stage the lse (log2 domain) and D' of its 64 query
// rows (used by the dK/dV kernel), then the mbarriers: the resident tiles' one, and per ring
// stage a "full" (the copies' bytes, and in the dK/dV kernel the arrivals of the warp writing the
// statistics) and an "empty" (released by both consumers; in the dK/dV kernel by each of their
// threads, as each reads the statistics).
template <int HS, int STAGES>
struct BwdSmem {
  using L = BwdLayout<HS, STAGES>;
  uint32_t a, b, ring, stats, bars;
  float* stats_ptr;  // the same as stats, as a generic pointer

  __device__ explicit BwdSmem(unsigned char* smem)
      : a((smem_addr(smem) + 1023) & ~uint32_t(1023)),  // swizzle atoms need 1024-byte alignment
        b(a + L::kBig),
        ring(b + L::kBig),
        stats(ring + STAGES * 2 * L::kSmall),
        bars(stats + STAGES * L::kStats),
        stats_ptr(reinterpret_cast<float*>(smem + (stats - smem_addr(smem)))) {}
  __device__ float* lse2(int s) const { return stats_ptr + s * 2 * kBwdRows; }
  __device__ float* dd(int s) const { return lse2(s) + kBwdRows; }
  __device__ uint32_t ring_a(int s) const { return ring + s * 2 * L::kSmall; }
  __device__ uint32_t ring_b(int s) const { return ring_a(s) + L::kSmall; }
  __device__ uint32_t resident() const { return bars; }
  __device__ uint32_t full(int s) const { return bars + 8 * (1 + s); }
  __device__ uint32_t empty(int s) const { return bars + 8 * (1 + STAGES + s); }

  // By one thread, before a __syncthreads; extra: arrivals besides the copies' on each "full";
  // releases: arrivals that free a stage.
  __device__ void init_barriers(uint32_t extra = 0, uint32_t releases = 2) const {
    mbar_init(resident(), 1);
    for (int s = 0; s < STAGES; ++s) {
      mbar_init(full(s), 1 + extra);
      mbar_init(empty(s), releases);
    }
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }

  // The producer thread: the resident tiles (rows row0.. of head z of batch bz of maps ma, mb;
  // 128 rows as two boxes of 64, the same layout as one), then `steps` ring stages of two 64-row
  // tiles from maps ra, rb at at(it) = {row, head} of batch bz, each stage refilled once both
  // consumers released it.
  template <typename At>
  __device__ void produce(const CUtensorMap* ma, const CUtensorMap* mb, int row0, int z, int bz,
                          const CUtensorMap* ra, const CUtensorMap* rb, int steps, At at) const {
    mbar_expect_tx(resident(), 2 * L::kBig);
    for (int i = 0; i < L::kBoxes; ++i) {
      for (int h = 0; h < 2; ++h) {
        const uint32_t off = i * kBoxBytes + h * kHalfBoxBytes;
        tma_load(a + off, ma, 64 * i, row0 + 64 * h, z, bz, resident());
        tma_load(b + off, mb, 64 * i, row0 + 64 * h, z, bz, resident());
      }
    }
    for (int it = 0; it < steps; ++it) {
      const int s = it % STAGES, round = it / STAGES;
      const int2 rz = at(it);
      if (round > 0) mbar_wait(empty(s), (round - 1) & 1);
      mbar_expect_tx(full(s), 2 * L::kSmall);
      for (int i = 0; i < L::kBoxes; ++i) {
        tma_load(ring_a(s) + i * kHalfBoxBytes, ra, 64 * i, rz.x, rz.y, bz, full(s));
        tma_load(ring_b(s) + i * kHalfBoxBytes, rb, 64 * i, rz.x, rz.y, bz, full(s));
      }
    }
  }
};

// lse[t] in the log2 domain, as the backward's P = exp2(S scale_log2 - lse2) takes it. A row past
// T or that sees no key (lse -inf) gets +inf: its P is 0, it takes no part.
__device__ __forceinline__ float lse2_of(const float* lse, int t, int T) {
  const float l = t < T ? lse[t] : -INFINITY;
  return l == -INFINITY ? INFINITY : l * kLog2e;
}

// x = A1 B1^T and y = A2 B2^T, 64 x 64 each: rows 64c.. of the resident 128-row tiles a1, a2
// against the 64-row ring tiles b1, b2, over HS in k-steps of 16, committed as two wgmma groups
// so that waiting for x leaves y running.
template <typename T, int HS>
__device__ __forceinline__ void two_products(float (&x)[32], float (&y)[32], uint32_t a1,
                                             uint32_t b1, uint32_t a2, uint32_t b2, int c) {
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < HS / 16; ++kk) {
    const uint32_t a_off = (kk / 4) * kBoxBytes + c * 64 * 128 + (kk % 4) * 32;
    const uint32_t b_off = (kk / 4) * kHalfBoxBytes + (kk % 4) * 32;
    wgmma_ss_n64<T>(x, descriptor(a1 + a_off, 16, 1024), descriptor(b1 + b_off, 16, 1024), kk > 0);
  }
  wgmma_commit();
#pragma unroll
  for (int kk = 0; kk < HS / 16; ++kk) {
    const uint32_t a_off = (kk / 4) * kBoxBytes + c * 64 * 128 + (kk % 4) * 32;
    const uint32_t b_off = (kk / 4) * kHalfBoxBytes + (kk % 4) * 32;
    wgmma_ss_n64<T>(y, descriptor(a2 + a_off, 16, 1024), descriptor(b2 + b_off, 16, 1024), kk > 0);
  }
  wgmma_commit();
}

#endif  // sm_90a device code

// The first query tile (of `rows` rows) that sees any key of the tile starting at n0.
__host__ __device__ inline int first_query_tile(int n0, int T, int S, bool causal, int rows) {
  if (!causal) return 0;
  const int t = n0 - (S - T);  // the first query row that sees key n0
  return t <= 0 ? 0 : t / rows;
}

template <typename T, int HS>
__global__ void __launch_bounds__(kThreads, 1)
    attention_bwd_dkdv_kernel(const __grid_constant__ CUtensorMap map_q,
                              const __grid_constant__ CUtensorMap map_k,
                              const __grid_constant__ CUtensorMap map_v,
                              const __grid_constant__ CUtensorMap map_do, BwdParams p) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ __align__(1024) unsigned char smem[];
  constexpr int kRing = kDkdvStages<HS>;
  const BwdSmem<HS, kRing> sm(smem);  // resident: K (a) and V (b); ring: Q and dO tiles

  const int n0 = blockIdx.x * kBwdKeys, hkv = blockIdx.y, b = blockIdx.z;
  const int group = p.NH / p.NKV;
  const int first = first_query_tile(n0, p.T, p.S, p.causal, kBwdRows);
  const int per_head = max((p.T + kBwdRows - 1) / kBwdRows - first, 0);
  const int steps = group * per_head;
  // step it: query tile q0 of query head h (the group's heads in turn)
  auto head_of = [&](int it) { return hkv * group + it / per_head; };
  auto row_of = [&](int it) { return (first + it % per_head) * kBwdRows; };

  if (threadIdx.x == 0) sm.init_barriers(32, 256);
  __syncthreads();

  const int wg = threadIdx.x / 128, tid = threadIdx.x % 128;
  if (wg == 0) {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 24;");
    if (tid == 0)
      sm.produce(&map_k, &map_v, n0, hkv, b, &map_q, &map_do, steps,
                 [&](int it) { return make_int2(row_of(it), head_of(it)); });
    if (tid / 32 == 1) {
      // The second producer warp: each stage's lse (log2 domain) and D' into shared memory, so the
      // consumers do not wait on these global loads in every step.
      const int lane = tid % 32;
      for (int it = 0; it < steps; ++it) {
        const int s = it % kRing, round = it / kRing;
        if (round > 0) mbar_wait(sm.empty(s), (round - 1) & 1);
        const int64_t row0 = int64_t(b * p.NH + head_of(it)) * p.T;
        for (int i = lane; i < kBwdRows; i += 32) {
          const int t = row_of(it) + i;
          sm.lse2(s)[i] = lse2_of(p.lse + row0, t, p.T);
          sm.dd(s)[i] = t < p.T ? p.dd[row0 + t] : 0.f;
        }
        mbar_arrive(sm.full(s));  // each lane: release of its own stores
      }
    }
    return;
  }

  asm volatile("setmaxnreg.inc.sync.aligned.u32 240;");
  const int c = wg - 1, warp = tid / 32, lane = tid % 32;
  const int key_a = n0 + c * 64 + warp * 16 + lane / 4, key_b = key_a + 8;  // this thread's keys
  const int col = 2 * (lane % 4);
  float dk[HS / 2], dv[HS / 2];
#pragma unroll
  for (int i = 0; i < HS / 2; ++i) dk[i] = dv[i] = 0.f;

  mbar_wait(sm.resident(), 0);
  for (int it = 0; it < steps; ++it) {
    const int s = it % kRing;
    const int q0 = row_of(it);
    mbar_wait(sm.full(s), (it / kRing) & 1);
    const uint32_t qt = sm.ring_a(s), dot = sm.ring_b(s);

    // S^T (64 keys x 64 queries) = K Q^T and dP^T = V dO^T.
    float x[32], dp[32];
    two_products<T, HS>(x, dp, sm.a, qt, sm.b, dot, c);

    // While dP^T is being computed: P^T, column by column (a column is a query), kept in x.
    const float* l2s = sm.lse2(s) + col;  // this thread's columns: 8 n + col + {0, 1}
    const float* dds = sm.dd(s) + col;
    const bool masked = q0 + kBwdRows > p.T || n0 + kBwdKeys > p.S ||
                        (p.causal && n0 + kBwdKeys - 1 > q0 + p.S - p.T);
    wgmma_wait<1>();  // S^T is ready (and the last step's products)
    // every thread: it read the stage's statistics itself
    if constexpr (kDkdvOverlap<HS>) {
      if (it > 0) mbar_arrive(sm.empty((it - 1) % kRing));
    }
    float l2[16];
#pragma unroll
    for (int i = 0; i < 16; ++i) l2[i] = l2s[8 * (i / 2) + i % 2];
    uint32_t pf[4][4];  // P^T as the A operand of 4 k-steps of 16 queries
#pragma unroll
    for (int n = 0; n < 8; ++n) {
#pragma unroll
      for (int i = 4 * n; i < 4 * n + 4; ++i) {  // i % 4 < 2: key_a, else key_b; column i % 2
        const int t = q0 + 8 * n + col + i % 2, key = i % 4 < 2 ? key_a : key_b;
        float pv = exp2f(fmaf(x[i], p.scale_log2, -l2[2 * n + i % 2]));
        if (masked && (key >= p.S || (p.causal && key > t + p.S - p.T))) pv = 0.f;
        x[i] = pv;
      }
      pf[n / 2][(n % 2) * 2] = pack2<T>(x[4 * n], x[4 * n + 1]);
      pf[n / 2][(n % 2) * 2 + 1] = pack2<T>(x[4 * n + 2], x[4 * n + 3]);
    }
    // dV += P^T dO (k-steps over 16 queries, 2048 bytes; dO transposed), running while dS^T is
    // formed.
    wgmma_fence();
#pragma unroll
    for (int t = 0; t < kBwdRows / 16; ++t) wgmma_rs<T, HS>(dv, pf[t], descriptor(dot + t * 2048, kHalfBoxBytes, 1024));
    wgmma_commit();
    float dcol[16];
#pragma unroll
    for (int i = 0; i < 16; ++i) dcol[i] = dds[8 * (i / 2) + i % 2];
    wgmma_wait<1>();  // dP^T is ready
    uint32_t sf[4][4];  // dS^T = P^T (dP^T - D') as the A operand of the dK product
#pragma unroll
    for (int n = 0; n < 8; ++n) {
      const float d0 = dcol[2 * n], d1 = dcol[2 * n + 1];
      sf[n / 2][(n % 2) * 2] = pack2<T>(x[4 * n] * (dp[4 * n] - d0), x[4 * n + 1] * (dp[4 * n + 1] - d1));
      sf[n / 2][(n % 2) * 2 + 1] =
          pack2<T>(x[4 * n + 2] * (dp[4 * n + 2] - d0), x[4 * n + 3] * (dp[4 * n + 3] - d1));
    }
    // dK += dS^T Q (Q transposed).
    wgmma_fence();
#pragma unroll
    for (int t = 0; t < kBwdRows / 16; ++t) wgmma_rs<T, HS>(dk, sf[t], descriptor(qt + t * 2048, kHalfBoxBytes, 1024));
    wgmma_commit();
    if constexpr (!kDkdvOverlap<HS>) {
      wgmma_wait<0>();
      mbar_arrive(sm.empty(s));
    }
  }
  wgmma_wait<0>();

  T* dk_out = static_cast<T*>(p.dk) + b * p.sdk.b + hkv * p.sdk.h;
  T* dv_out = static_cast<T*>(p.dv) + b * p.sdv.b + hkv * p.sdv.h;
  store_rows<T, HS>(dk_out, p.sdk.row, dk, key_a, p.S, col, p.scale);
  store_rows<T, HS>(dv_out, p.sdv.row, dv, key_a, p.S, col, 1.f);
#endif
}

template <typename T, int HS>
__global__ void __launch_bounds__(kThreads, 1)
    attention_bwd_dq_kernel(const __grid_constant__ CUtensorMap map_q,
                            const __grid_constant__ CUtensorMap map_k,
                            const __grid_constant__ CUtensorMap map_v,
                            const __grid_constant__ CUtensorMap map_do, BwdParams p) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ __align__(1024) unsigned char smem[];
  const BwdSmem<HS, kDqStages> sm(smem);  // resident: Q (a) and dO (b); ring: K and V tiles

  const int m0 = (gridDim.x - 1 - blockIdx.x) * kDqRows;  // the longest causal rows first
  const int h = blockIdx.y, b = blockIdx.z;
  const int bh = b * p.NH + h, hkv = h / (p.NH / p.NKV);
  const int n_tiles = key_tiles<kDqRows, kDqKeys>(m0, p.T, p.S, p.causal);

  if (threadIdx.x == 0) sm.init_barriers();
  __syncthreads();

  const int wg = threadIdx.x / 128, tid = threadIdx.x % 128;
  if (wg == 0) {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 24;");
    if (tid == 0)
      sm.produce(&map_q, &map_do, m0, h, b, &map_k, &map_v, n_tiles,
                 [&](int j) { return make_int2(j * kDqKeys, hkv); });
    return;
  }

  asm volatile("setmaxnreg.inc.sync.aligned.u32 240;");
  const int c = wg - 1, warp = tid / 32, lane = tid % 32;
  const int row_a = m0 + c * 64 + warp * 16 + lane / 4, row_b = row_a + 8;
  const int col = 2 * (lane % 4);
  const float* lse = p.lse + int64_t(bh) * p.T;
  const float* dd = p.dd + int64_t(bh) * p.T;
  const float l2_a = lse2_of(lse, row_a, p.T), l2_b = lse2_of(lse, row_b, p.T);
  const float d_a = row_a < p.T ? dd[row_a] : 0.f, d_b = row_b < p.T ? dd[row_b] : 0.f;
  float dq[HS / 2];
#pragma unroll
  for (int i = 0; i < HS / 2; ++i) dq[i] = 0.f;

  mbar_wait(sm.resident(), 0);
  for (int j = 0; j < n_tiles; ++j) {
    const int s = j % kDqStages;
    mbar_wait(sm.full(s), (j / kDqStages) & 1);
    const uint32_t kt = sm.ring_a(s), vt = sm.ring_b(s);

    // S (64 rows x 64 keys) = Q K^T and dP = dO V^T.
    float x[32], dp[32];
    two_products<T, HS>(x, dp, sm.a, kt, sm.b, vt, c);

    // P into x while dP is being computed, then dS = P (dP - D').
    const int key0 = j * kDqKeys;
    const bool masked = key0 + kDqKeys > p.S || (p.causal && key0 + kDqKeys - 1 > m0 + p.S - p.T);
    wgmma_wait<1>();  // S is ready (and the last step's dQ product)
    if (j > 0 && tid == 0) mbar_arrive(sm.empty((j - 1) % kDqStages));
#pragma unroll
    for (int i = 0; i < 32; ++i) {  // i % 4 < 2: row_a, else row_b; key 8 (i / 4) + col + i % 2
      const int key = key0 + 8 * (i / 4) + col + i % 2, row = i % 4 < 2 ? row_a : row_b;
      float pv = exp2f(fmaf(x[i], p.scale_log2, i % 4 < 2 ? -l2_a : -l2_b));
      if (masked && (key >= p.S || (p.causal && key > row + p.S - p.T))) pv = 0.f;
      x[i] = pv;
    }
    wgmma_wait<0>();  // dP is ready
    uint32_t sf[4][4];  // dS as the A operand of 4 k-steps of 16 keys
#pragma unroll
    for (int n = 0; n < 8; ++n) {
      sf[n / 2][(n % 2) * 2] = pack2<T>(x[4 * n] * (dp[4 * n] - d_a), x[4 * n + 1] * (dp[4 * n + 1] - d_a));
      sf[n / 2][(n % 2) * 2 + 1] =
          pack2<T>(x[4 * n + 2] * (dp[4 * n + 2] - d_b), x[4 * n + 3] * (dp[4 * n + 3] - d_b));
    }

    // dQ += dS K: k-steps over 16 keys (2048 bytes), K transposed.
    wgmma_fence();
#pragma unroll
    for (int t = 0; t < kDqKeys / 16; ++t) wgmma_rs<T, HS>(dq, sf[t], descriptor(kt + t * 2048, kHalfBoxBytes, 1024));
    wgmma_commit();  // left running into the next step
  }
  wgmma_wait_all();

  store_rows<T, HS>(static_cast<T*>(p.dq) + b * p.sdq.b + h * p.sdq.h, p.sdq.row, dq, row_a, p.T,
                    col, p.scale);
#endif
}

template <typename T, int HS>
bool launch(const AttentionProblem& a, const CUtensorMap& mq, const CUtensorMap& mk,
            const CUtensorMap& mv, cudaStream_t stream) {
  auto kernel = attention_fwd_kernel<T, HS>;
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return false;
  static std::atomic<uint64_t> configured{0};  // per device: the shared-memory limit is raised
  const uint64_t bit = uint64_t(1) << (dev & 63);
  if (!(configured.load() & bit)) {
    if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             Layout<HS>::kSmemBytes) != cudaSuccess) {
      cudaGetLastError();
      return false;
    }
    configured.fetch_or(bit);
  }
  Params p{a.out, a.lse, a.NH, a.NKV, a.T, a.S, a.scale * kLog2e, a.causal, a.so};
  const dim3 grid(unsigned((a.T + kBM - 1) / kBM), unsigned(a.NH), unsigned(a.B));
  kernel<<<grid, kThreads, Layout<HS>::kSmemBytes, stream>>>(mq, mk, mv, p);
  return true;
}

template <typename T, int HS>
bool launch_backward(const AttentionBackwardProblem& a, const CUtensorMap& mq, const CUtensorMap& mk,
                     const CUtensorMap& mv, const CUtensorMap& mdo, cudaStream_t stream) {
  auto dkdv = attention_bwd_dkdv_kernel<T, HS>;
  auto dq = attention_bwd_dq_kernel<T, HS>;
  constexpr int smem_dkdv = BwdLayout<HS, kDkdvStages<HS>>::kSmemBytes;
  constexpr int smem_dq = BwdLayout<HS, kDqStages>::kSmemBytes;
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return false;
  static std::atomic<uint64_t> configured{0};  // per device: the shared-memory limits are raised
  const uint64_t bit = uint64_t(1) << (dev & 63);
  if (!(configured.load() & bit)) {
    if (cudaFuncSetAttribute(dkdv, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_dkdv) != cudaSuccess ||
        cudaFuncSetAttribute(dq, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_dq) != cudaSuccess) {
      cudaGetLastError();
      return false;
    }
    configured.fetch_or(bit);
  }
  BwdParams p{a.lse, a.dd, a.dq, a.dk, a.dv, a.NH, a.NKV, a.T, a.S, a.scale, a.scale * kLog2e,
              a.causal, a.sdq, a.sdk, a.sdv};
  const dim3 grid_kv(unsigned((a.S + kBwdKeys - 1) / kBwdKeys), unsigned(a.NKV), unsigned(a.B));
  dkdv<<<grid_kv, kThreads, smem_dkdv, stream>>>(mq, mk, mv, mdo, p);
  const dim3 grid_q(unsigned((a.T + kDqRows - 1) / kDqRows), unsigned(a.NH), unsigned(a.B));
  dq<<<grid_q, kThreads, smem_dq, stream>>>(mq, mk, mv, mdo, p);
  return true;
}

}  // namespace

bool attention_forward(const AttentionProblem& a, cudaStream_t stream) {
  if (a.HS != 64 && a.HS != 128) return false;
  if (a.B <= 0 || a.NH <= 0 || a.NKV <= 0 || a.NH % a.NKV != 0 || a.T <= 0 || a.S <= 0) return false;
  if (a.B > 65535 || a.NH > 65535 || !(a.scale > 0.f)) return false;
  for (const void* ptr : {a.q, a.k, a.v, static_cast<const void*>(a.out)})
    if (reinterpret_cast<uintptr_t>(ptr) % 16 != 0) return false;
  if (!head_strides_ok(a.so)) return false;  // out's rows are stored 4 bytes at a time
  CUtensorMap mq, mk, mv;
  if (!make_head_map(&mq, a.bf16, a.q, a.HS, a.T, a.NH, a.B, a.sq, kBM) ||
      !make_head_map(&mk, a.bf16, a.k, a.HS, a.S, a.NKV, a.B, a.sk, kBN) ||
      !make_head_map(&mv, a.bf16, a.v, a.HS, a.S, a.NKV, a.B, a.sv, kBN))
    return false;
  if (a.bf16)
    return a.HS == 128 ? launch<__nv_bfloat16, 128>(a, mq, mk, mv, stream)
                       : launch<__nv_bfloat16, 64>(a, mq, mk, mv, stream);
  return a.HS == 128 ? launch<__half, 128>(a, mq, mk, mv, stream)
                     : launch<__half, 64>(a, mq, mk, mv, stream);
}

bool attention_backward(const AttentionBackwardProblem& a, cudaStream_t stream) {
  if (a.HS != 64 && a.HS != 128) return false;
  if (a.B <= 0 || a.NH <= 0 || a.NKV <= 0 || a.NH % a.NKV != 0 || a.T <= 0 || a.S <= 0) return false;
  if (a.B > 65535 || a.NH > 65535 || !(a.scale > 0.f)) return false;
  for (const void* ptr : {a.q, a.k, a.v, a.dout, static_cast<const void*>(a.dq),
                          static_cast<const void*>(a.dk), static_cast<const void*>(a.dv)})
    if (reinterpret_cast<uintptr_t>(ptr) % 16 != 0) return false;
  // Boxes of 64 rows: the 128-row resident tiles (k, v of the dK/dV kernel; q, dO of the dQ
  // kernel) are loaded as two.
  if (!head_strides_ok(a.sdq) || !head_strides_ok(a.sdk) || !head_strides_ok(a.sdv)) return false;
  CUtensorMap mq, mk, mv, mdo;
  if (!make_head_map(&mq, a.bf16, a.q, a.HS, a.T, a.NH, a.B, a.sq, 64) ||
      !make_head_map(&mdo, a.bf16, a.dout, a.HS, a.T, a.NH, a.B, a.sdo, 64) ||
      !make_head_map(&mk, a.bf16, a.k, a.HS, a.S, a.NKV, a.B, a.sk, 64) ||
      !make_head_map(&mv, a.bf16, a.v, a.HS, a.S, a.NKV, a.B, a.sv, 64))
    return false;
  if (a.bf16)
    return a.HS == 128 ? launch_backward<__nv_bfloat16, 128>(a, mq, mk, mv, mdo, stream)
                       : launch_backward<__nv_bfloat16, 64>(a, mq, mk, mv, mdo, stream);
  return a.HS == 128 ? launch_backward<__half, 128>(a, mq, mk, mv, mdo, stream)
                     : launch_backward<__half, 64>(a, mq, mk, mv, mdo, stream);
}

}  // namespace ls::cuda::sm90a
