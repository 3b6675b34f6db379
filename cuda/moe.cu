// Mixture-of-Experts dispatch on the GPU, with the registry signatures of cpp/ops/moe.cpp (read
// its header for the exact inputs, attrs and outputs). N tokens, C channels, E experts, each token
// routed to k experts; assignment a = n * k + s; M = R rows of the sorted (expert-grouped) layout.
//
//   moe_permute      expert_ids (N, k) -> token (N*k,), row (N, k), offsets (E+1,), counts (E,)
//   grouped_matmul   y[r] = x[r] @ w[e] (or w[e]^T) for offsets[e] <= r < offsets[e+1]; 0 after
//   grouped_matmul_weight_grad   dw[e] = a[seg e]^T @ b[seg e]
//   moe_combine      out[n] = sum_s gates[n, s] * y[row[n, s]]
//   moe_combine_backward   dy[row[n, s]] = gates[n, s] * g[n],  dgates[n, s] = <g[n], y[row[n, s]]>
//
// Nothing here waits for the GPU: every output has a size known on the host, and the offsets
// are read only by the kernels.
//
// moe_permute: one block of 1024 threads, a stable counting sort in three passes. Thread t owns
//   a contiguous range of the walk; pass 1 counts each bucket (the E experts, then "dropped") in
//   its range into column t of a (E+1) x 1024 int32 scratch; pass 2 is one exclusive scan of that
//   scratch in (bucket, thread) order, so entry (b, t) becomes where thread t's first item of
//   bucket b goes; pass 3 walks the range again and places each item at its entry, incrementing
//   it. Items of one bucket thus keep walk order: the same rows as the CPU op. Capacity mode
//   first runs the same passes over the slot-major walk (s, n) to rank each assignment within
//   its expert, keeping those of rank < capacity (the CPU's priority), then places kept
//   assignments under their expert and dropped ones in the last bucket, both in assignment order.
//   O(N k + E * 1024) work on one SM: cheap beside the expert GEMMs up to N*k ~ 1M. Limits:
//   E <= 4096, N*k < 2^31. Expert ids cannot be checked without a host sync: an id outside
//   [0, E) is counted nowhere and its assignment is dropped (row -1), so memory stays safe.
//
// grouped_matmul (bf16/fp16): the tensor-core block tile of cuda/gemm_tile.cuh (128 x 256 or
//   128 x 128 tiles, cp.async ring, ldmatrix, mma.sync, fp32 accumulation). The rows are split
//   into E + 1 segments (the experts, then the dropped rows past offsets[E]); the grid covers the
//   worst case of (ceil(M / BM) + E) tile rows x ceil(N / BN) tile columns, and each block walks
//   the offsets (first staged in shared memory) to find which segment and which tile of it it owns (blocks past the last tile
//   return). The dropped segment runs with K = 0, which stores zeros. An operand whose row length
//   is not a multiple of 8 elements is copied to a padded buffer first (cp.async needs 16-byte
//   aligned rows); the weights of the backward are read transposed in place (ldmatrix.trans).
// grouped_matmul_weight_grad (bf16/fp16): grid (tiles of P x Q, E); block (tile, e) reduces over
//   the rows of segment e with both operands row-contiguous (ldmatrix.trans). Each dw element is
//   written once by one block: deterministic. The work per expert follows its load.
// fp32/fp64: the same grids with the SIMT block tile (64 x 64, accumulation in the input type).
//
// moe_combine: one block per token, threads across H, fp32 accumulation for 16-bit inputs.
// moe_combine_backward: dy through the inverse of row (inv[row[a]] = a, -1 where no assignment
//   reads the row), so each dy row is written exactly once, zeros included, without atomics;
//   dgates by one warp per assignment (a dot product over H, shuffle reduction).
// The offsets and rows are trusted to be what moe_permute makes (validated on the CPU backend);
// the kernels clamp them so that bad values cannot reach outside the tensors.
#include <algorithm>
#include <atomic>

#include "core/registry.h"
#include "elementwise.cuh"
#include "gemm_tile.cuh"
#include "ops/kernel_checks.h"
#include "ops/op_args.h"
#include "ops/ops.h"

namespace ls::cuda {

namespace {

using namespace gemm;

void expect_on_gpu(const Tensor& t, const Tensor& ref, const char* op, const char* what) {
  LS_CHECK(t.defined(), TypeError, op, ": ", what, " is None");
  LS_CHECK(t.device() == ref.device(), ValueError, op, ": ", what, " is on ", t.device().str(),
           ", expected ", ref.device().str());
}

using cpu::expect_same_dtype;
using ops::expect_int64_index;

// ---- moe_permute ------------------------------------------------------------------------------

constexpr int kPermThreads = 1024;
constexpr int kMaxExperts = 4096;

// Exclusive scan of one int per thread over the kPermThreads threads of the block; total gets
// the sum. Ends with a barrier, so warp_sums can be reused at once.
__device__ __forceinline__ int block_exclusive_scan(int v, int* warp_sums, int& total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  int x = v;
#pragma unroll
  for (int d = 1; d < 32; d <<= 1) {
    int y = __shfl_up_sync(0xffffffffu, x, d);
    if (lane >= d) x += y;
  }
  if (lane == 31) warp_sums[warp] = x;
  __syncthreads();
  if (warp == 0) {  // kPermThreads / 32 == 32 warp totals, scanned by warp 0
    int w = warp_sums[lane];
#pragma unroll
    for (int d = 1; d < 32; d <<= 1) {
      int y = __shfl_up_sync(0xffffffffu, w, d);
      if (lane >= d) w += y;
    }
    warp_sums[lane] = w;
  }
  __syncthreads();
  const int prefix = (warp ? warp_sums[warp - 1] : 0) + x - v;
  total = warp_sums[31];
  __syncthreads();
  return prefix;
}

// buf[0..L) := its exclusive prefix sums; thread t scans a contiguous piece. Returns the total.
__device__ __forceinline__ int scan_scratch(int* buf, int64_t L, int* warp_sums) {
  const int64_t per = (L + kPermThreads - 1) / kPermThreads;
  const int64_t lo = min(L, threadIdx.x * per), hi = min(L, lo + per);
  int s = 0;
  for (int64_t i = lo; i < hi; ++i) s += buf[i];
  int total;
  int pre = block_exclusive_scan(s, warp_sums, total);
  for (int64_t i = lo; i < hi; ++i) {
    int v = buf[i];
    buf[i] = pre;
    pre += v;
  }
  __syncthreads();
  return total;
}

template <typename I>
__global__ void __launch_bounds__(kPermThreads)
moe_permute_kernel(const I* __restrict__ ids, int64_t N, int64_t k, int E, int64_t cap,
                   int* __restrict__ scratch, int64_t* __restrict__ token,
                   int64_t* __restrict__ row, int64_t* __restrict__ offsets,
                   int64_t* __restrict__ counts) {
  __shared__ int warp_sums[32];
  __shared__ int seg[kMaxExperts + 1];  // bucket starts after a scan
  const int t = threadIdx.x, nb = E + 1;  // buckets: experts 0..E-1, then E = dropped
  const int64_t A = N * k, chunk = (A + kPermThreads - 1) / kPermThreads;
  const int64_t lo = min(A, t * chunk), hi = min(A, lo + chunk);  // this thread's walk range
  int* col = scratch + t;  // col[b * kPermThreads]: this thread's entry for bucket b
  auto expert = [&](int64_t i) -> int {
    I e = ids[i];
    return (e >= 0 && e < I(E)) ? int(e) : -1;
  };

  if (cap >= 0) {
    // Capacity: rank each assignment within its expert in slot-major order j = s * N + n.
    for (int b = 0; b < nb; ++b) col[b * kPermThreads] = 0;
    for (int64_t j = lo; j < hi; ++j) {
      int e = expert((j % N) * k + j / N);
      if (e >= 0) ++col[e * kPermThreads];
    }
    __syncthreads();
    scan_scratch(scratch, int64_t(nb) * kPermThreads, warp_sums);
    for (int b = t; b < nb; b += kPermThreads) seg[b] = scratch[b * kPermThreads];
    __syncthreads();
    for (int b = t; b < E; b += kPermThreads) counts[b] = seg[b + 1] - seg[b];
    for (int64_t j = lo; j < hi; ++j) {
      const int64_t i = (j % N) * k + j / N;
      const int e = expert(i);
      bool keep = false;
      if (e >= 0) keep = col[e * kPermThreads]++ - seg[e] < cap;
      row[i] = keep;  // 1 / 0 until the placement below overwrites it
    }
    __syncthreads();  // row[] flags and the scratch are read by other threads next
  }

  // Placement, in assignment order: kept assignments under their expert, the rest in bucket E.
  auto bucket = [&](int64_t i) -> int {
    int e = expert(i);
    return (e >= 0 && (cap < 0 || row[i] != 0)) ? e : E;
  };
  for (int b = 0; b < nb; ++b) col[b * kPermThreads] = 0;
  for (int64_t i = lo; i < hi; ++i) ++col[bucket(i) * kPermThreads];
  __syncthreads();
  scan_scratch(scratch, int64_t(nb) * kPermThreads, warp_sums);
  for (int b = t; b < nb; b += kPermThreads) seg[b] = scratch[b * kPermThreads];
  __syncthreads();
  for (int b = t; b < nb; b += kPermThreads) offsets[b] = seg[b];
  if (cap < 0)
    for (int b = t; b < E; b += kPermThreads) counts[b] = seg[b + 1] - seg[b];
  // Each thread's own column entries were scanned by whichever thread owned that piece; the
  // barrier in scan_scratch made them visible here.
  for (int64_t i = lo; i < hi; ++i) {
    const int b = bucket(i);
    const int64_t r = col[b * kPermThreads]++;
    row[i] = b < E ? r : -1;
    token[r] = i / k;
  }
}

Tensors moe_permute_cuda(const Tensors& in, const Attrs& a) {
  const int64_t E = ops::check_moe_permute_args(in, a);
  const Tensor& ids0 = in[0];
  const int64_t cap = a.i("capacity", -1);
  LS_CHECK(E <= kMaxExperts, ValueError, "moe_permute: the CUDA kernel takes up to ", kMaxExperts,
           " experts, got ", E);
  const int64_t N = ids0.shape()[0], k = ids0.shape()[1], A = N * k;
  LS_CHECK(A < (int64_t(1) << 31) - kPermThreads, ValueError, "moe_permute: the CUDA kernel takes "
           "N*k below 2^31, got ", A);
  Tensor ids = ops::contiguous(ids0);
  const Device dev = ids.device();
  Tensor token = Tensor::empty({A}, DType::Int64, dev);
  Tensor row = Tensor::empty({N, k}, DType::Int64, dev);
  Tensor offsets = Tensor::empty({E + 1}, DType::Int64, dev);
  Tensor counts = Tensor::empty({E}, DType::Int64, dev);
  Tensor scratch = Tensor::empty({(E + 1) * kPermThreads}, DType::Int32, dev);
  set_device(ids, "moe_permute");
  auto launch = [&](auto* p) {
    moe_permute_kernel<<<1, kPermThreads, 0, current_stream()>>>(
        p, N, k, int(E), cap, static_cast<int*>(scratch.raw_data()),
        static_cast<int64_t*>(token.raw_data()), static_cast<int64_t*>(row.raw_data()),
        static_cast<int64_t*>(offsets.raw_data()), static_cast<int64_t*>(counts.raw_data()));
  };
  if (ids.dtype() == DType::Int32)
    launch(static_cast<const int32_t*>(ids.raw_data()));
  else
    launch(static_cast<const int64_t*>(ids.raw_data()));
  check_launch("moe_permute");
  return {token, row, offsets, counts};
}

// ---- grouped GEMM -----------------------------------------------------------------------------

// One segment of the sorted rows: segment e (E = the dropped rows) owns rows [r0, r0 + rows),
// and the tile asked for is the one at local row m0.
struct Segment {
  int e;  // -1: the tile is past the last segment's tiles
  int64_t r0;
  int rows, m0;
};

// The segment owning tile row `tile` when each of the E + 1 segments is cut into BM-row tiles
// in order. Offsets are clamped into [previous end, M], so bad values stay inside the rows.
template <int BM>
__device__ __forceinline__ Segment find_segment(const int64_t* off, int E, int64_t M, int tile) {
  int first = 0;  // first tile of segment e
  int64_t start = 0;
  for (int e = 0; e <= E; ++e) {
    const int64_t end = e < E ? min(max(off[e + 1], start), M) : M;
    const int rows = int(end - start), nt = (rows + BM - 1) / BM;
    if (tile < first + nt) return {e, start, rows, (tile - first) * BM};
    first += nt;
    start = end;
  }
  return {-1, 0, 0, 0};
}

// The worst-case number of BM-row tiles over E + 1 segments of M rows in all.
int64_t max_tile_rows(int64_t M, int64_t E, int BM) { return (M + BM - 1) / BM + E; }

// Block tile (tm, tn) from a flat block index, tile rows in groups of kGroupM (L2 reuse).
__device__ __forceinline__ void grouped_tile_order(int pid, int tiles_m, int tiles_n, int& tm, int& tn) {
  const int per_group = kGroupM * tiles_n;
  const int first_m = (pid / per_group) * kGroupM, group_rows = min(tiles_m - first_m, kGroupM);
  tm = first_m + (pid % per_group) % group_rows;
  tn = (pid % per_group) / group_rows;
}

// y (M, N) = per-segment x (M, K) @ B_e; x row stride ldx; B_e(k, n) at w + e * w_e +
// (B_KMAJOR ? n * ldw + k : k * ldw + n).
template <typename T, typename C, bool B_KMAJOR>
__global__ void __launch_bounds__(C::kThreads, C::kMinBlocks)
grouped_mma_kernel(const T* x, int64_t ldx, const T* w, int64_t w_e, int64_t ldw,
                   const int64_t* __restrict__ offsets, int E, int M, int N, int K, int tiles_m,
                   T* y) {
  extern __shared__ __align__(128) unsigned char smem[];
  const int tiles_n = (N + C::kBN - 1) / C::kBN;
  int tm, tn;
  grouped_tile_order(blockIdx.x, tiles_m, tiles_n, tm, tn);
  // The offsets go to shared memory in one parallel load first: the search would otherwise wait
  // for E dependent global loads before the first tile load is issued.
  int64_t* s_off = reinterpret_cast<int64_t*>(smem);
  const bool staged = E + 1 <= C::kSmemBytes / 8;  // the same for the whole block
  if (staged) {
    for (int i = threadIdx.x; i <= E; i += C::kThreads) s_off[i] = offsets[i];
    __syncthreads();
  }
  const Segment s = find_segment<C::kBM>(staged ? s_off : offsets, E, M, tm);
  __syncthreads();  // everyone has searched before the tile loads overwrite the shared memory
  if (s.e < 0) return;
  const bool dropped = s.e == E;  // K = 0: the tile stores zeros
  // x + r0 * ldx points at x[r0, :], y + r0 * N at y[r0, :], w + e * w_e at w[e]
  mma_block_tile<T, C, true, B_KMAJOR>(x + s.r0 * ldx, ldx, w + (dropped ? 0 : s.e) * w_e, ldw,
                                       s.rows, N, dropped ? 0 : K, s.m0, tn * C::kBN,
                                       y + s.r0 * N, N, N % 2 == 0, smem);
}

// dw[e] (P, Q) = a[seg e]^T @ b[seg e]; a (M, P) row stride lda, b (M, Q) row stride ldb.
template <typename T, typename C>
__global__ void __launch_bounds__(C::kThreads, C::kMinBlocks)
grouped_wgrad_mma_kernel(const T* a, int64_t lda, const T* b, int64_t ldb,
                         const int64_t* __restrict__ offsets, int M, int P, int Q, T* dw) {
  extern __shared__ __align__(128) unsigned char smem[];
  const int tiles_m = (P + C::kBM - 1) / C::kBM, tiles_n = (Q + C::kBN - 1) / C::kBN;
  int tm, tn;
  grouped_tile_order(blockIdx.x, tiles_m, tiles_n, tm, tn);
  const int e = blockIdx.y;
  const int64_t r0 = min(max(offsets[e], int64_t(0)), int64_t(M));
  const int64_t r1 = min(max(offsets[e + 1], r0), int64_t(M));
  // A(p, m) = a[(r0 + m) * lda + p]: P contiguous; B(m, q) = b[(r0 + m) * ldb + q]: Q contiguous
  mma_block_tile<T, C, false, false>(a + r0 * lda, lda, b + r0 * ldb, ldb, P, Q, int(r1 - r0),
                                     tm * C::kBM, tn * C::kBN, dw + int64_t(e) * P * Q, Q,
                                     Q % 2 == 0, smem);
}

template <typename T>
__global__ void __launch_bounds__(kSThreads)
grouped_simt_kernel(const T* x, const T* w, int64_t w_e, int64_t w_ks, int64_t w_ns,
                    const int64_t* __restrict__ offsets, int E, int M, int N, int K, T* y) {
  const Segment s = find_segment<kSM>(offsets, E, M, blockIdx.x);
  if (s.e < 0) return;
  const bool dropped = s.e == E;
  simt_block_tile<T>(x + s.r0 * K, K, 1, w + (dropped ? 0 : s.e) * w_e, w_ks, w_ns, s.rows, N,
                     dropped ? 0 : K, s.m0, blockIdx.y * kSN, y + s.r0 * N, N);
}

template <typename T>
__global__ void __launch_bounds__(kSThreads)
grouped_wgrad_simt_kernel(const T* a, const T* b, const int64_t* __restrict__ offsets, int M,
                          int P, int Q, T* dw) {
  const int e = blockIdx.z;
  const int64_t r0 = min(max(offsets[e], int64_t(0)), int64_t(M));
  const int64_t r1 = min(max(offsets[e + 1], r0), int64_t(M));
  // A(p, m) = a[(r0 + m) * P + p], B(m, q) = b[(r0 + m) * Q + q]
  simt_block_tile<T>(a + r0 * P, 1, P, b + r0 * Q, Q, 1, P, Q, int(r1 - r0), blockIdx.x * kSM,
                     blockIdx.y * kSN, dw + int64_t(e) * P * Q, Q);
}

template <typename T, typename C, bool B_KMAJOR>
void launch_grouped_mma(const T* x, int64_t ldx, const T* w, int64_t w_e, int64_t ldw,
                        const int64_t* off, int E, int M, int N, int K, T* y, int dev) {
  auto kernel = grouped_mma_kernel<T, C, B_KMAJOR>;
  static std::atomic<uint64_t> configured{0};
  allow_smem(kernel, C::kSmemBytes, configured, dev, "grouped_matmul");
  const int64_t tiles_m = max_tile_rows(M, E, C::kBM), tiles_n = (N + C::kBN - 1) / C::kBN;
  LS_CHECK(tiles_m * tiles_n < (int64_t(1) << 31), ValueError, "grouped_matmul: ", M, " x ", N,
           " is too large for the CUDA kernel's grid");
  kernel<<<unsigned(tiles_m * tiles_n), C::kThreads, C::kSmemBytes, current_stream()>>>(x, ldx, w, w_e, ldw, off, E,
                                                                      M, N, K, int(tiles_m), y);
  check_launch("grouped_matmul");
}

template <typename T, typename C>
void launch_wgrad_mma(const T* a, int64_t lda, const T* b, int64_t ldb, const int64_t* off, int E,
                      int M, int P, int Q, T* dw, int dev) {
  auto kernel = grouped_wgrad_mma_kernel<T, C>;
  static std::atomic<uint64_t> configured{0};
  allow_smem(kernel, C::kSmemBytes, configured, dev, "grouped_matmul_weight_grad");
  const int64_t tiles = int64_t((P + C::kBM - 1) / C::kBM) * ((Q + C::kBN - 1) / C::kBN);
  LS_CHECK(tiles < (int64_t(1) << 31), ValueError, "grouped_matmul_weight_grad: ", P, " x ", Q,
           " is too large for the CUDA kernel's grid");
  kernel<<<dim3(unsigned(tiles), unsigned(E)), C::kThreads, C::kSmemBytes, current_stream()>>>(a, lda, b, ldb, off,
                                                                            M, P, Q, dw);
  check_launch("grouped_matmul_weight_grad");
}

// x (..., L) contiguous with L padded to a multiple of 8 elements and a 16-byte aligned base, as
// cp.async needs: x itself when it already is, else a view of the first L columns of a padded
// copy (the padding is never read: the tile loaders stop at L).
Tensor padded_rows(const Tensor& x0) {
  Tensor x = ops::contiguous(x0);
  const int64_t L = x.shape().back();
  if (L % 8 == 0 && aligned16(x)) return x;
  Shape shape = x.shape();
  shape.back() = (L + 7) / 8 * 8;
  Tensor buf = Tensor::empty(shape, x.dtype(), x.device());
  Tensor view = ops::slice(buf, -1, 0, L);
  ops::copy_(view, x);
  return view;
}

constexpr int64_t kMaxDim = (int64_t(1) << 31) - 256;

// The launches of grouped_matmul for one dtype (a template, so that `if constexpr` keeps the
// tensor-core kernels to 16-bit types and the SIMT ones to fp32/fp64).
template <typename T>
void run_grouped(const Tensor& x0, const Tensor& w0, bool tw, const int64_t* po, int64_t M,
                 int64_t N, int64_t K, int64_t E, const Tensor& y) {
  T* py = static_cast<T*>(y.raw_data());
  if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
    Tensor x = ops::contiguous(x0);
    const Tensor& w = w0;  // read through its strides
    // B_e(k, n) = w[e, k, n], or w[e, n, k] when transposed
    const int64_t w_ks = tw ? w.strides()[2] : w.strides()[1];
    const int64_t w_ns = tw ? w.strides()[1] : w.strides()[2];
    const int64_t tiles_n = (N + kSN - 1) / kSN;
    LS_CHECK(tiles_n <= 65535, ValueError, "grouped_matmul: the float32/float64 CUDA kernel "
             "takes N up to ", 65535 * kSN, ", got ", N);
    dim3 grid(unsigned(max_tile_rows(M, E, kSM)), unsigned(tiles_n));
    grouped_simt_kernel<T><<<grid, kSThreads, 0, current_stream()>>>(static_cast<const T*>(x.raw_data()),
                                                static_cast<const T*>(w.raw_data()),
                                                w.strides()[0], w_ks, w_ns, po, int(E), int(M),
                                                int(N), int(K), py);
    check_launch("grouped_matmul");
  } else {
    Tensor x = padded_rows(x0);
    Tensor w = padded_rows(w0);
    const T* px = static_cast<const T*>(x.raw_data());
    const T* pw = static_cast<const T*>(w.raw_data());
    const int64_t ldx = x.strides()[0], w_e = w.strides()[0], ldw = w.strides()[1];
    int dev = 0;
    check(cudaGetDevice(&dev), "grouped_matmul");
    // The big tile unless it would leave SMs idle (a rough count: tiles of a dense M x N).
    const bool big = ((M + BigTile::kBM - 1) / BigTile::kBM) *
                         ((N + BigTile::kBN - 1) / BigTile::kBN) >= sm_count(dev, "grouped_matmul");
    // Not transposed: B_e(k, n) = w[e, k, n], N contiguous. Transposed: w[e, n, k], K contiguous.
    if (big && tw)
      launch_grouped_mma<T, BigTile, true>(px, ldx, pw, w_e, ldw, po, int(E), int(M), int(N), int(K), py, dev);
    else if (big)
      launch_grouped_mma<T, BigTile, false>(px, ldx, pw, w_e, ldw, po, int(E), int(M), int(N), int(K), py, dev);
    else if (tw)
      launch_grouped_mma<T, SmallTile, true>(px, ldx, pw, w_e, ldw, po, int(E), int(M), int(N), int(K), py, dev);
    else
      launch_grouped_mma<T, SmallTile, false>(px, ldx, pw, w_e, ldw, po, int(E), int(M), int(N), int(K), py, dev);
  }
}

Tensors grouped_matmul_cuda(const Tensors& in, const Attrs& a) {
  LS_CHECK(in.size() == 3 && in[0].defined() && in[1].defined() && in[2].defined(), TypeError,
           "grouped_matmul: expected inputs x, w, offsets");
  const Tensor& x0 = in[0];
  const Tensor& w0 = in[1];
  const bool tw = a.b("transpose_w", false);
  LS_CHECK(x0.dim() == 2 && w0.dim() == 3, ValueError, "grouped_matmul: expected x (M, K) and w "
           "(E, K, N), got ", shape_str(x0.shape()), " and ", shape_str(w0.shape()));
  expect_same_dtype(x0, w0, "grouped_matmul", "weight");
  expect_on_gpu(w0, x0, "grouped_matmul", "w");
  expect_on_gpu(in[2], x0, "grouped_matmul", "offsets");
  const int64_t M = x0.shape()[0], K = x0.shape()[1], E = w0.shape()[0];
  const int64_t wk = tw ? w0.shape()[2] : w0.shape()[1], N = tw ? w0.shape()[1] : w0.shape()[2];
  LS_CHECK(wk == K, ValueError, "grouped_matmul: x has ", K, " columns but w",
           tw ? " (transposed)" : "", " of shape ", shape_str(w0.shape()), " expects ", wk);
  expect_int64_index(in[2], "grouped_matmul", "offsets");
  LS_CHECK(in[2].dim() == 1 && in[2].shape()[0] == E + 1, ValueError, "grouped_matmul: offsets "
           "must have shape (", E + 1, ",) for ", E, " experts, got ", shape_str(in[2].shape()));
  LS_CHECK(M < kMaxDim && N < kMaxDim && K < kMaxDim && E < kMaxDim, ValueError,
           "grouped_matmul: the CUDA kernel takes sizes below 2^31, got M ", M, ", N ", N, ", K ",
           K, ", E ", E);
  Tensor y = Tensor::empty({M, N}, x0.dtype(), x0.device());
  if (y.numel() == 0) return {y};
  set_device(y, "grouped_matmul");
  if (K == 0) {
    ops::fill_(y, 0.0);
    return {y};
  }
  Tensor off = ops::contiguous(in[2]);
  const int64_t* po = static_cast<const int64_t*>(off.raw_data());
  CUDA_DISPATCH_FLOAT(x0.dtype(), "grouped_matmul",
                      run_grouped<scalar_t>(x0, w0, tw, po, M, N, K, E, y));
  return {y};
}

template <typename T>
void run_wgrad(const Tensor& a0, const Tensor& b0, const int64_t* po, int64_t M, int64_t P,
               int64_t Q, int64_t E, const Tensor& dw) {
  const char* op = "grouped_matmul_weight_grad";
  T* pd = static_cast<T*>(dw.raw_data());
  if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
    Tensor A = ops::contiguous(a0), B = ops::contiguous(b0);
    const int64_t tp = (P + kSM - 1) / kSM, tq = (Q + kSN - 1) / kSN;
    LS_CHECK(tq <= 65535, ValueError, op, ": the float32/float64 CUDA kernel takes Q up to ",
             65535 * kSN, ", got ", Q);
    grouped_wgrad_simt_kernel<T><<<dim3(unsigned(tp), unsigned(tq), unsigned(E)), kSThreads, 0, current_stream()>>>(
        static_cast<const T*>(A.raw_data()), static_cast<const T*>(B.raw_data()), po, int(M),
        int(P), int(Q), pd);
    check_launch(op);
  } else {
    Tensor A = padded_rows(a0), B = padded_rows(b0);
    const T* pa = static_cast<const T*>(A.raw_data());
    const T* pb = static_cast<const T*>(B.raw_data());
    int dev = 0;
    check(cudaGetDevice(&dev), op);
    const bool big = E * ((P + BigTile::kBM - 1) / BigTile::kBM) *
                         ((Q + BigTile::kBN - 1) / BigTile::kBN) >= sm_count(dev, op);
    if (big)
      launch_wgrad_mma<T, BigTile>(pa, A.strides()[0], pb, B.strides()[0], po, int(E), int(M),
                                   int(P), int(Q), pd, dev);
    else
      launch_wgrad_mma<T, SmallTile>(pa, A.strides()[0], pb, B.strides()[0], po, int(E),
                                     int(M), int(P), int(Q), pd, dev);
  }
}

Tensors grouped_matmul_weight_grad_cuda(const Tensors& in, const Attrs&) {
  const char* op = "grouped_matmul_weight_grad";
  LS_CHECK(in.size() == 3 && in[0].defined() && in[1].defined() && in[2].defined(), TypeError, op,
           ": expected inputs a, b, offsets");
  LS_CHECK(in[0].dim() == 2 && in[1].dim() == 2 && in[0].shape()[0] == in[1].shape()[0],
           ValueError, op, ": expected a (M, P) and b (M, Q), got ", shape_str(in[0].shape()),
           " and ", shape_str(in[1].shape()));
  expect_same_dtype(in[0], in[1], op, "second operand");
  expect_on_gpu(in[1], in[0], op, "b");
  expect_on_gpu(in[2], in[0], op, "offsets");
  expect_int64_index(in[2], op, "offsets");
  const int64_t E = in[2].dim() == 1 ? in[2].shape()[0] - 1 : -1;
  LS_CHECK(E > 0, ValueError, op, ": offsets must have shape (E+1,), got ",
           shape_str(in[2].shape()));
  const int64_t M = in[0].shape()[0], P = in[0].shape()[1], Q = in[1].shape()[1];
  LS_CHECK(M < kMaxDim && P < kMaxDim && Q < kMaxDim && E <= 65535, ValueError, op,
           ": the CUDA kernel takes M, P, Q below 2^31 and up to 65535 experts, got M ", M, ", P ",
           P, ", Q ", Q, ", E ", E);
  Tensor dw = Tensor::empty({E, P, Q}, in[0].dtype(), in[0].device());
  if (dw.numel() == 0) return {dw};
  set_device(dw, op);
  if (M == 0) {
    ops::fill_(dw, 0.0);
    return {dw};
  }
  Tensor off = ops::contiguous(in[2]);
  const int64_t* po = static_cast<const int64_t*>(off.raw_data());
  CUDA_DISPATCH_FLOAT(in[0].dtype(), op, run_wgrad<scalar_t>(in[0], in[1], po, M, P, Q, E, dw));
  return {dw};
}

// ---- moe_combine ------------------------------------------------------------------------------

constexpr int kRowThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kRowThreads)
moe_combine_kernel(const T* __restrict__ y, const T* __restrict__ gates,
                   const int64_t* __restrict__ row, int64_t R, int k, int64_t H, T* __restrict__ out) {
  const int64_t n = blockIdx.x;
  const T* gn = gates + n * k;       // gn points at gates[n, :]
  const int64_t* rn = row + n * k;   // rn points at row[n, :]
  T* on = out + n * H;               // on points at out[n, :]
  for (int64_t h = threadIdx.x; h < H; h += blockDim.x) {
    acc_t<T> acc = 0;
    for (int s = 0; s < k; ++s) {
      const int64_t r = rn[s];
      if (r < 0 || r >= R) continue;  // dropped
      acc += acc_t<T>(gn[s]) * acc_t<T>(y[r * H + h]);
    }
    on[h] = convert<T>(acc);
  }
}

// The checks of the forward (g undefined) and backward, as on the CPU without reading the rows.
void check_combine(const Tensor& y, const Tensor& gates, const Tensor& row, const Tensor& g, const char* op) {
  ops::check_moe_combine_args(y, gates, row, g, op);
  expect_on_gpu(gates, y, op, "gates");
  expect_on_gpu(row, y, op, "row");
  if (g.defined()) expect_on_gpu(g, y, op, "g");
}

unsigned row_threads(int64_t H) {
  return unsigned(std::min<int64_t>(kRowThreads, std::max<int64_t>(32, (H + 31) / 32 * 32)));
}

Tensors moe_combine_cuda(const Tensors& in, const Attrs&) {
  cpu::expect_inputs(in, 3, 3, "moe_combine");  // y, gates, row
  check_combine(in[0], in[1], in[2], Tensor(), "moe_combine");
  Tensor y = ops::contiguous(in[0]), gates = ops::contiguous(in[1]), row = ops::contiguous(in[2]);
  const int64_t N = gates.shape()[0], k = gates.shape()[1], R = y.shape()[0], H = y.shape()[1];
  Tensor out = Tensor::empty({N, H}, y.dtype(), y.device());
  if (out.numel() == 0) return {out};
  LS_CHECK(N < (int64_t(1) << 31) && k < (int64_t(1) << 31), ValueError,
           "moe_combine: the CUDA kernel takes N below 2^31, got ", N);
  set_device(out, "moe_combine");
  CUDA_DISPATCH_FLOAT(y.dtype(), "moe_combine", {
    using T = scalar_t;
    moe_combine_kernel<T><<<unsigned(N), row_threads(H), 0, current_stream()>>>(
        static_cast<const T*>(y.raw_data()), static_cast<const T*>(gates.raw_data()),
        static_cast<const int64_t*>(row.raw_data()), R, int(k), H, static_cast<T*>(out.raw_data()));
    check_launch("moe_combine");
  });
  return {out};
}

// inv[row[a]] = a for every kept assignment a (row is one-to-one onto the kept rows).
__global__ void invert_rows_kernel(const int64_t* __restrict__ row, int64_t A, int64_t R,
                                   int64_t* __restrict__ inv) {
  for (int64_t a = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; a < A;
       a += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = row[a];
    if (r >= 0 && r < R) inv[r] = a;
  }
}

// dy[r] = gates[a] * g[a / k] for a = inv[r], zeros where inv[r] = -1. One block per row.
template <typename T>
__global__ void __launch_bounds__(kRowThreads)
combine_dy_kernel(const T* __restrict__ g, const T* __restrict__ gates,
                  const int64_t* __restrict__ inv, int k, int64_t H, T* __restrict__ dy) {
  const int64_t r = blockIdx.x, a = inv[r];
  T* d = dy + r * H;  // d points at dy[r, :]
  if (a < 0) {
    for (int64_t h = threadIdx.x; h < H; h += blockDim.x) d[h] = convert<T>(0.f);
    return;
  }
  const acc_t<T> gt = acc_t<T>(gates[a]);
  const T* gn = g + (a / k) * H;  // gn points at g[n, :]
  for (int64_t h = threadIdx.x; h < H; h += blockDim.x) d[h] = convert<T>(gt * acc_t<T>(gn[h]));
}

// dgates[a] = <g[a / k], y[row[a]]>, one warp per assignment; 0 for a dropped one.
template <typename T>
__global__ void __launch_bounds__(kRowThreads)
combine_dgates_kernel(const T* __restrict__ g, const T* __restrict__ y,
                      const int64_t* __restrict__ row, int64_t A, int64_t R, int k, int64_t H,
                      T* __restrict__ dgates) {
  const int lane = threadIdx.x & 31;
  const int64_t a = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  if (a >= A) return;  // whole warps leave together
  const int64_t r = row[a];
  acc_t<T> acc = 0;
  if (r >= 0 && r < R) {
    const T* gn = g + (a / k) * H;  // g[n, :]
    const T* yr = y + r * H;        // y[row[n, s], :]
    for (int64_t h = lane; h < H; h += 32) acc += acc_t<T>(gn[h]) * acc_t<T>(yr[h]);
  }
#pragma unroll
  for (int d = 16; d > 0; d >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, d);
  if (lane == 0) dgates[a] = convert<T>(acc);
}

Tensors moe_combine_backward_cuda(const Tensors& in, const Attrs& at) {
  const char* op = "moe_combine_backward";
  cpu::expect_inputs(in, 4, 4, op);  // g, y, gates, row
  check_combine(in[1], in[2], in[3], in[0], op);
  Tensor g = ops::contiguous(in[0]), y = ops::contiguous(in[1]), gates = ops::contiguous(in[2]);
  Tensor row = ops::contiguous(in[3]);
  const int64_t N = gates.shape()[0], k = gates.shape()[1], R = y.shape()[0], H = y.shape()[1];
  LS_CHECK(R < (int64_t(1) << 31) && N * k < (int64_t(1) << 31), ValueError, op,
           ": the CUDA kernel takes R and N*k below 2^31, got ", R, " and ", N * k);
  const bool want_dy = at.b("dy", true), want_dg = at.b("dgates", true);
  Tensor dy = Tensor::empty(want_dy ? Shape{R, H} : Shape{0}, y.dtype(), y.device());
  Tensor dg = Tensor::empty(want_dg ? Shape{N, k} : Shape{0}, y.dtype(), y.device());
  set_device(y, op);
  const int64_t A = N * k;
  CUDA_DISPATCH_FLOAT(y.dtype(), op, {
    using T = scalar_t;
    const T* pg = static_cast<const T*>(g.raw_data());
    const int64_t* pr = static_cast<const int64_t*>(row.raw_data());
    if (want_dy && dy.numel() > 0) {
      Tensor inv = ops::full({R}, -1.0, DType::Int64, y.device());
      int64_t* pinv = static_cast<int64_t*>(inv.raw_data());
      if (A > 0) {
        invert_rows_kernel<<<unsigned(std::min<int64_t>(blocks_for(A, 256), 4096)), 256, 0, current_stream()>>>(
            pr, A, R, pinv);
        check_launch(op);
      }
      combine_dy_kernel<T><<<unsigned(R), row_threads(H), 0, current_stream()>>>(
          pg, static_cast<const T*>(gates.raw_data()), pinv, int(k), H,
          static_cast<T*>(dy.raw_data()));
      check_launch(op);
    }
    if (want_dg && A > 0) {
      combine_dgates_kernel<T><<<unsigned((A * 32 + kRowThreads - 1) / kRowThreads), kRowThreads, 0, current_stream()>>>(
          pg, static_cast<const T*>(y.raw_data()), pr, A, R, int(k), H,
          static_cast<T*>(dg.raw_data()));
      check_launch(op);
    }
  });
  return {dy, dg};
}

}  // namespace

LS_REGISTER(moe_cuda) {
  const std::vector<DType> kFloat = {DType::Float32, DType::Float64, DType::BFloat16,
                                     DType::Float16};
  register_kernel("moe_permute", "cuda", moe_permute_cuda, {DType::Int32, DType::Int64});
  register_kernel("grouped_matmul", "cuda", grouped_matmul_cuda, kFloat);
  register_kernel("grouped_matmul_weight_grad", "cuda", grouped_matmul_weight_grad_cuda, kFloat);
  register_kernel("moe_combine", "cuda", moe_combine_cuda, kFloat);
  register_kernel("moe_combine_backward", "cuda", moe_combine_backward_cuda, kFloat);
}

}  // namespace ls::cuda
