// cross_entropy on the GPU: fused log-softmax + negative log-likelihood, forward and backward;
// logits float32, float64, bfloat16 or float16 (16-bit logits compute in float32), targets int32
// or int64.
//
//   lse[n]  = m + log sum_v exp(logits[n, v] - m),  m = max_v logits[n, v]
//   loss[n] = (1 - eps) (lse[n] - logits[n, t[n]]) + eps (lse[n] - mean_v logits[n, v])
//   loss[n] = 0 where t[n] == ignore_index; reduction "none" -> (N,), "sum", "mean" (over the
//             rows not ignored; 0/0 = NaN when all are)
//   dlogits[n, v] = (k[n] + h[n]) p[n, v] - k[n] eps / V - k[n] (1 - eps) [v == t[n]]
//             p = exp(logits - lse), k[n] the gradient reaching loss[n], h[n] that of lse[n]
// The forwards subtract in the order of cpp/ops/cross_entropy.cpp, never a rounded lse:
// lse - x = log s - (x - m) and p = exp((x - m) - log s) (s = sum_v exp(logits[n, v] - m)), as
// m + log s rounded loses the low bits of log s next to a large m. The backward has only lse.
//
// Shapes: logits (N, V) (N = B*T rows, V vocab), targets (N,), lse (N,).
// Registry ops as cpp/ops/cross_entropy.cpp: "cross_entropy" {logits, targets} attrs
// ignore_index, reduction, label_smoothing -> {loss, lse}; "cross_entropy_backward" {g_loss,
// logits, targets, lse, g_lse} same attrs -> {dlogits}. One difference: lse is float32 for 16-bit
// logits (float64 for float64), since the backward recomputes p from it and a bf16 lse would put
// an error of |lse| 2^-9 into every probability; the backward accepts lse and g_lse in either
// dtype. loss has the same accumulation dtype (float32 for 16-bit logits), as torch's autocast
// computes cross-entropy in float32: a bf16 loss near 10 would be rounded to 0.06.
//
// Kernels. A target check first: one block reads every target, finds the first one that is
// neither a class nor ignore_index, and counts the rows not ignored (the count stays on the GPU
// for the mean). A bad target is recorded as an index fault (index_fault.cuh): the IndexError,
// worded as on the CPU, is raised at the host's next synchronisation, so these ops never wait
// for the GPU. The kernels stay in bounds for it: the forward's loss of that row is NaN, and the
// gradient rows hold p (no target subtracted). (Forward and backward each check, since either
// can be called directly.)
// Forward: one row lane per row (rows.cuh; kStreamThreads = 256 threads for a long vocabulary
// row, each striding over it with kStream loads in flight), one read of the row with a running
// (max, sum) (online softmax, exps through ex_for: ex2.approx for 16-bit logits), plus the row sum
// for label smoothing; per-row losses stay in float32/64 and one block adds them in a fixed order
// and divides by the device-side count: no host sync for the mean. log_softmax is never
// materialised. Backward: one read of the logits and one write of dlogits, from the saved lse.
// Rows: logits whose rows are each contiguous are read at their row stride (the output layer's
// 16-bit logits come from the matmul with rows padded to 64 elements), others copied first;
// dlogits gets the rows a matmul output of its shape has, so the backward's GEMMs read it in
// place. Where every row starts 16-byte aligned the kernels move 16-byte vectors and the last
// V % 8 (16-bit) elements of a row one by one: GPT-2's 50257-wide rows would otherwise go
// element by element.
//
// The in-place pair (see cpp/ops/cross_entropy.cpp for the contract): "cross_entropy_inplace"
// {logits, targets} -> {loss} overwrites the logits with d(loss)/d(logits) at an
// upstream gradient of 1 (k = 1/count for the mean, read from the device-side count; ignored
// rows zeroed without being read); "cross_entropy_inplace_backward" {g_loss, dlogits} -> {dlogits}
// scales that buffer in place. The forward kernel is the forward's row lane with two passes: the
// statistics pass (online max and sum, the row sum for smoothing, and the target logit, which the
// thread owning it keeps, since the row is about to be overwritten), which also copies the row
// into shared memory, then the gradient pass from there, each thread writing back exactly the
// vectors it read, so no thread reads an element another has overwritten. Traffic: one read and
// one write of the row (split over a cluster of up to 8 blocks on Hopper, so that each block's
// slice fits a quarter of an SM's shared memory: V = 128k in 16 bits fits; a longer row is partly
// read a second time), against the forward's read plus the backward's
// read and write, and no (N, V) allocation. 16-bit logits get a 16-bit gradient computed in float32, as the
// backward writes. The backward kernel reads the factor on the device and skips every row whose
// factor is exactly 1 (loss.backward() on the mean loss itself): no host synchronisation.
#include "core/registry.h"
#include "ops/kernel_checks.h"
#include "ops/op_args.h"
#include "ops/ops.h"
#include "rows.cuh"

#include <cooperative_groups.h>

namespace ls::cuda {

namespace {

using namespace rows;

using ops::parse_reduction;
using ops::Reduction;

// ---- target check ----

constexpr int kCheckThreads = 1024;

// *count = number of targets that are not ignore_index; the first position whose target is
// neither in [0, V) nor ignore_index is recorded as an index fault. One block.
template <typename I>
__global__ void check_targets_kernel(int64_t* __restrict__ count_out, const I* __restrict__ t, int64_t N,
                                     int64_t V, int64_t ignore, FaultSite site) {
  __shared__ int64_t s_first[32], s_count[32];
  int64_t first = N, count = 0;
  for (int64_t n = threadIdx.x; n < N; n += blockDim.x) {
    const int64_t v = int64_t(t[n]);
    if (v == ignore) continue;
    ++count;
    if ((v < 0 || v >= V) && n < first) first = n;
  }
  for (int o = 16; o > 0; o >>= 1) {
    const int64_t f = __shfl_xor_sync(0xffffffffu, first, o);
    first = f < first ? f : first;
    count += __shfl_xor_sync(0xffffffffu, count, o);
  }
  if (threadIdx.x % 32 == 0) {
    s_first[threadIdx.x / 32] = first;
    s_count[threadIdx.x / 32] = count;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < int(blockDim.x / 32); ++w) {
      first = s_first[w] < first ? s_first[w] : first;
      count += s_count[w];
    }
    *count_out = count;
    if (first < N) record_index_fault(site, first, int64_t(t[first]));
  }
}

// Checks targets on the device; returns the count of rows not ignored (int64 (1,)), on the device.
// op must be a string literal (the fault record keeps its pointer).
Tensor check_targets(const Tensor& targets, int64_t V, int64_t ignore, const char* op) {
  const int64_t N = targets.numel();
  Tensor live_rows = Tensor::empty({1}, DType::Int64, targets.device());
  int64_t* pi = live_rows.data<int64_t>();
  const FaultSite site = fault_site(op, FaultKind::Target, V, ignore);
  if (targets.dtype() == DType::Int64)
    check_targets_kernel<<<1, kCheckThreads, 0, current_stream()>>>(pi, targets.data<int64_t>(), N, V, ignore, site);
  else
    check_targets_kernel<<<1, kCheckThreads, 0, current_stream()>>>(pi, targets.data<int32_t>(), N, V, ignore, site);
  check_launch(op);
  return live_rows;
}

// Vectors per thread loaded together on the one-pass row loops (rows.cuh row_pass); float64
// keeps 1, its exp needs the registers.
template <typename T> constexpr int kStream = sizeof(T) == 8 ? 1 : 4;
// The in-place kernel: kInplaceBlocks blocks per SM (its shared memory and registers), each with
// kInplaceStream vectors of its row slice in flight per thread.
constexpr int kInplaceBlocks = 4;
template <typename T> constexpr int kInplaceStream = sizeof(T) == 8 ? 1 : 4;
// Its static shared arrays for accumulation type A: red (row_reduce's scratch) and part (the
// partials the cluster's blocks exchange).
template <typename A> constexpr size_t kInplaceStatic = (kMaxLanes * 32 + 2 * kMaxLanes * 4) * sizeof(A);

// Threads per row of the one-pass kernels (forward, backward). A vocabulary row is long: at
// 1024 threads (one block per SM at the kernels' 64 registers) each SM streamed one row and
// then sat idle through its reductions; at 256, four rows per SM overlap.
constexpr int kStreamThreads = 256;
template <typename T>
Launch stream_launch(int64_t N, int64_t nvec) {
  return row_launch<T>(N, nvec, int64_t(1) << 30, kCache, kStreamThreads);
}

// ---- forward ----

// One row lane per row: lse[n], and the row's loss into row_loss (A, for the reductions) or
// loss_out (T, reduction "none"); the other pointer is null.
template <typename T, int W, typename I>
__global__ void __launch_bounds__(kMaxThreads<T>) cross_entropy_kernel(acc_t<T>* __restrict__ row_loss, acc_t<T>* __restrict__ loss_out,
                                     acc_t<T>* __restrict__ lse, const T* __restrict__ logits,
                                     const I* __restrict__ targets, int64_t N, int64_t V, int64_t ld,
                                     int64_t ignore, acc_t<T> eps) {
  using A = acc_t<T>;
  __shared__ A red[kMaxLanes * 32];
  const int64_t nvec = V / W;
  for (int64_t base = int64_t(blockIdx.x) * blockDim.y; base < N; base += int64_t(gridDim.x) * blockDim.y) {
    const int64_t r = base + threadIdx.y;
    const int64_t n = r < N ? nvec : 0;  // a lane past the last row joins the reductions only
    const T* xr = logits + (r < N ? r : 0) * ld;  // xr points at logits[r, :]
    const Pack<T, W>* src[1] = {as_vec<T, W>(xr)};
    Pack<T, W> c[1][1];  // one pass: nothing to keep
    Online<T> st;
    A sx = 0;  // sum x
    row_pass<true, kStream<T>>(src, n, c, [&](int64_t, const Pack<T, W> (&v)[1]) {
      A a[W];
      to_acc(v[0], a);
#pragma unroll
      for (int i = 0; i < W; ++i) sx += a[i];
      st.add(a);
    });
    if (W > 1 && threadIdx.x == 0 && r < N)  // the row's last V % W elements, one by one
      for (int64_t i = nvec * W; i < V; ++i) {
        const A a[1] = {convert<A>(xr[i])};
        sx += a[0];
        st.add(a);
      }
    A M, S;
    st.reduce(red, M, S);
    const A SX = eps > A(0) ? row_reduce(sx, Sum{}, red) : A(0);
    if (r < N && threadIdx.x == 0) {
      const A log_s = lg(S);
      lse[r] = M + log_s;
      const int64_t t = int64_t(targets[r]);
      A loss = A(0);
      if (t != ignore) {  // lse - x in the order log s - (x - M): no rounded lse (see the header)
        const A xt = t >= 0 && t < V ? convert<A>(xr[t]) : A(NAN);  // a bad target: NaN, recorded by the check
        loss = (A(1) - eps) * (log_s - (xt - M));
        if (eps > A(0)) loss += eps * (log_s + (M - SX / A(V)));
      }
      if (row_loss) row_loss[r] = loss;
      else loss_out[r] = loss;
    }
  }
}

// loss[0] = sum_n row_loss[n] (sum) or that over the count of rows not ignored (mean). One block;
// each thread adds a fixed stride of rows, then a fixed tree: the same order every run.
template <typename T>
__global__ void reduce_loss_kernel(acc_t<T>* __restrict__ loss, const acc_t<T>* __restrict__ row_loss,
                                   const int64_t* __restrict__ live_rows, int64_t N, bool mean) {
  using A = acc_t<T>;
  __shared__ A part[kCheckThreads / 32];
  A s = 0;
  for (int64_t n = threadIdx.x; n < N; n += blockDim.x) s += row_loss[n];
  s = warp_reduce(s, Sum{});
  if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = s;
  __syncthreads();
  if (threadIdx.x == 0) {
    A total = part[0];
    for (int w = 1; w < int(blockDim.x / 32); ++w) total += part[w];
    // 0/0 gives NaN when every target is ignored (or N == 0), as torch does.
    loss[0] = mean ? total / A(live_rows[0]) : total;
  }
}

// One row lane per row: the row's loss (into row_loss or loss_out, as cross_entropy_kernel), then
// logits[r, :] overwritten by d(loss)/d(logits[r, :]) at an upstream gradient of 1:
//   k p - k eps / V - k (1 - eps) [v == t],  k = 1 / live_rows[0] (mean) or 1; zeros for ignored rows.
// x is read and written through the same (unrestricted) pointer.
//
// A row is split over the Kc blocks of a thread block cluster (Kc = 1: no cluster): block q of
// the cluster owns the q-th of Kc contiguous slices of every row. The statistics pass streams the
// slice in batches of kInplaceStream vectors per thread and keeps its first `cached` vectors in
// this lane's part of dynamic shared memory; the blocks' partial statistics (max, sum of exps
// relative to it, row sum, target logit) meet through distributed shared memory at one cluster
// barrier per row; the gradient pass takes the cached vectors from shared memory and re-reads
// only the rest. Why a cluster: a 50k-vocabulary bf16 row (100 KB) cached by one block allowed two
// blocks per SM, and with both in a barrier or a write phase the SM's reads stopped (the kernel
// took 1.50 ms at 16384 x 50304, against the backward's 1.15 ms for the same traffic); split over
// a cluster, each slice is small enough for kInplaceBlocks blocks per SM.
// The grid has a cluster per row group up to 2^27 of them, which then walk the rows grid-stride;
// a cluster's blocks walk the same rows and so meet at the same barriers, and the partials are
// double-buffered by row parity, so the barrier of one row also tells a block that every reader
// of its partials of two rows back is done.
template <typename T, int W, typename I>
__global__ void __launch_bounds__(kStreamThreads, kInplaceBlocks) cross_entropy_inplace_kernel(
    acc_t<T>* __restrict__ row_loss, acc_t<T>* __restrict__ loss_out, T* x, const I* __restrict__ targets,
    const int64_t* __restrict__ live_rows, int64_t N, int64_t V, int64_t ld, int64_t ignore, acc_t<T> eps,
    bool mean, int64_t cached) {
  using A = acc_t<T>;
  __shared__ A red[kMaxLanes * 32];
  __shared__ A part[2][kMaxLanes][4];  // this block's (max, sum, row sum, x[t]) per row parity, lane
  static_assert(sizeof(red) + sizeof(part) == kInplaceStatic<A>, "kInplaceStatic must match the arrays");
  extern __shared__ __align__(16) unsigned char smem_raw[];
  Pack<T, W>* cache = reinterpret_cast<Pack<T, W>*>(smem_raw) + threadIdx.y * cached;  // this lane's
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  namespace cg = cooperative_groups;
  const cg::cluster_group cluster = cg::this_cluster();
  const int kc = int(cluster.num_blocks()), rank = int(cluster.block_rank());
#else
  const int kc = 1, rank = 0;  // launched without a cluster below sm_90
#endif
  const int64_t nvec = V / W, tx = blockDim.x;
  const int64_t per = (nvec + kc - 1) / kc, lo = rank * per < nvec ? rank * per : nvec,
                hi = lo + per < nvec ? lo + per : nvec;
  // With every row ignored the count is 0 and k infinite, but then no row uses it.
  const A k = mean ? A(1) / A(live_rows[0]) : A(1);
  const A shift = k * eps / A(V), hit = k * (A(1) - eps);
  const int64_t clusters = gridDim.x / kc, lanes = blockDim.y;
  int parity = 0;
  for (int64_t base = int64_t(blockIdx.x / kc) * lanes; base < N; base += clusters * lanes, parity ^= 1) {
    const int64_t r = base + threadIdx.y;
    const int64_t t = r < N ? int64_t(targets[r]) : ignore;
    const bool live = r < N && t != ignore;
    const int64_t n = live ? hi - lo : 0;  // ignored rows and lanes past the last row join the reductions only
    T* row = x + (r < N ? r : 0) * ld;  // logits[r, :]
    T* xr = row + lo * W;               // this block's slice of it
    // the row's last V % W elements: one by one, by thread 0 of the cluster's last block
    const bool tail = W > 1 && r < N && rank == kc - 1 && threadIdx.x == 0;
    const Pack<T, W>* src[1] = {as_vec<T, W>(static_cast<const T*>(xr))};
    Pack<T, W>* dst = as_vec<T, W>(xr);
    Pack<T, W> c[1][1];  // no register cache: the slice goes to shared memory
    const int64_t tw = t - lo * W;  // the target's position in the slice
    Online<T> st;
    A sx = 0, xt = 0;  // sum x, x[t]
    row_pass<true, kInplaceStream<T>>(src, n, c, [&](int64_t j, const Pack<T, W> (&v)[1]) {
      if (j < cached) cache[j] = v[0];  // read back by this same thread in the gradient pass
      A a[W];
      to_acc(v[0], a);
#pragma unroll
      for (int i = 0; i < W; ++i) {
        sx += a[i];
        if (j * W + i == tw) xt = a[i];
      }
      st.add(a);
    });
    if (tail && live)
      for (int64_t i = nvec * W; i < V; ++i) {
        const A a[1] = {convert<A>(row[i])};
        sx += a[0];
        if (i == t) xt = a[0];
        st.add(a);
      }
    A M, S;
    st.reduce(red, M, S);
    A SX = eps > A(0) ? row_reduce(sx, Sum{}, red) : A(0);
    A XT = row_reduce(xt, Sum{}, red);  // one thread of the cluster holds x[t], the others 0
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    if (kc > 1) {
      A* mine = part[parity][threadIdx.y];
      if (threadIdx.x == 0) {
        mine[0] = M;
        mine[1] = S;
        mine[2] = SX;
        mine[3] = XT;
      }
      cluster.sync();
      M = neg_inf<A>();
      for (int q = 0; q < kc; ++q) M = Max{}(M, cluster.map_shared_rank(mine, q)[0]);
      S = SX = XT = A(0);
      for (int q = 0; q < kc; ++q) {  // in rank order, so every block sums alike
        const A* theirs = cluster.map_shared_rank(mine, q);
        S += Online<T>::rescaled(theirs[0], theirs[1], M);
        SX += theirs[2];
        XT += theirs[3];
      }
    }
#endif
    if (r >= N) continue;  // no reductions past this point: an idle lane can stop here
    const A log_s = lg(S);
    if (threadIdx.x == 0 && rank == 0) {
      A loss = A(0);
      if (live) {  // as cross_entropy_kernel: log s - (x[t] - M), never a rounded lse
        loss = (A(1) - eps) * (log_s - ((t >= 0 && t < V ? XT : A(NAN)) - M));  // a bad target: NaN, as the forward
        if (eps > A(0)) loss += eps * (log_s + (M - SX / A(V)));
      }
      if (row_loss) row_loss[r] = loss;
      else loss_out[r] = loss;
    }
    if (!live) {
      Pack<T, W> zero;
#pragma unroll
      for (int i = 0; i < W; ++i) zero.v[i] = convert<T>(A(0));
      for (int64_t j = threadIdx.x; j < hi - lo; j += tx) dst[j] = zero;
      if (tail)
        for (int64_t i = nvec * W; i < V; ++i) row[i] = zero.v[0];
      continue;
    }
    // d loss / d x for a logit x of this row, the target's or another
    auto grad_of = [&](A xv, bool target) {
      const A d = k * ex_for<T>((xv - M) - log_s) - shift;
      return convert<T>(target ? d - hit : d);
    };
    auto write = [&](int64_t j, const Pack<T, W>& v) {
      Pack<T, W> out;
#pragma unroll
      for (int i = 0; i < W; ++i) out.v[i] = grad_of(convert<A>(v.v[i]), j * W + i == tw);
      store_streaming(dst + j, out);  // so that the gradient does not push the unread rest out of L2
    };
    const int64_t in_cache = cached < n ? cached : n;
    int64_t j = threadIdx.x;
    for (; j < in_cache; j += tx) write(j, cache[j]);
    // The rest from memory, kInplaceStream loads in flight per thread (the cached prefix ends at
    // a multiple of tx, so j continues this thread's own stride).
    stream_vectors<kInplaceStream<T>>(src, j, n, [&](int64_t jj, const Pack<T, W> (&v)[1]) { write(jj, v[0]); });
    if (tail)
      for (int64_t i = nvec * W; i < V; ++i) row[i] = grad_of(convert<A>(row[i]), i == t);
  }
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (kc > 1) cluster.sync();  // no block leaves while another may still read its partials
#endif
}

// The in-place kernel's split of a row: Kc blocks of a cluster (1, 2, 4 or 8; 1 where the device
// has no clusters), each caching `cached` vectors of its slice of every row in its lanes, at
// most what 1 / kInplaceBlocks of an SM's shared memory holds (a prefix of whole tx strides when
// the slice is longer; the rest is read again, mostly from L2, as the row was just read). Kc is
// the smallest that brings the slice within 1.5 times that: each doubling of Kc adds a cluster
// barrier per row and halves the work between barriers, and on the H100 a slice up to 1.5 times
// the cache beat the next Kc (at V = 50k and 128k in bf16, bench/notes_cuda_row_ops.md).
struct InplaceSplit {
  int kc;
  int64_t cached;
};

InplaceSplit inplace_split(int64_t nvec, size_t vec_bytes, const Launch& L, int device) {
  const size_t per_sm = size_t(device_attr(cudaDevAttrMaxSharedMemoryPerMultiprocessor, device));
  // the static arrays at their largest (float64) and the 1 KB the device keeps per block
  const size_t reserved = kInplaceStatic<double> + 1024;
  const size_t per_block = std::min(size_t(device_attr(cudaDevAttrMaxSharedMemoryPerBlockOptin, device)),
                                    per_sm / kInplaceBlocks) - reserved;
  const int64_t fit = int64_t(per_block / (vec_bytes * L.block.y));
  const int max_kc = device_attr(cudaDevAttrClusterLaunch, device) ? 8 : 1;
  int kc = 1;
  while (kc < max_kc && (nvec + kc - 1) / kc > fit + fit / 2) kc *= 2;
  const int64_t per = (nvec + kc - 1) / kc;
  return {kc, fit >= per ? per : fit / L.block.x * L.block.x};
}

template <typename F>
void dispatch_targets(const Tensor& t, F&& f) {
  if (t.dtype() == DType::Int64) f(t.data<int64_t>());
  else f(t.data<int32_t>());
}

// Both forwards; in_place writes the gradient into in[0] and returns {loss} alone.
Tensors forward_entry(const Tensors& in, const Attrs& a, bool in_place) {
  const char* op = in_place ? "cross_entropy_inplace" : "cross_entropy";
  cpu::expect_inputs(in, 2, 2, op);
  ops::check_cross_entropy_args(in[0], in[1], a.s("reduction", "mean"), a.f("label_smoothing", 0.0));
  // Rows are read where they are when each is contiguous (a row-padded matmul output), else from
  // a contiguous copy; in place, in[0] itself.
  const int64_t row_stride = in_place ? ops::check_cross_entropy_inplace_logits(in[0], op)
                                      : ops::cross_entropy_row_stride(in[0]);
  Tensor logits = row_stride >= 0 ? in[0] : ops::contiguous(in[0]), targets = ops::contiguous(in[1]);
  const int64_t N = logits.size(0), V = logits.size(1), ld = row_stride >= 0 ? row_stride : V;
  const int64_t ignore = a.i("ignore_index", -100);
  const Reduction red = parse_reduction(a.s("reduction", "mean"), op);
  const double eps = a.f("label_smoothing", 0.0);
  const DType ad = acc_dtype(logits.dtype());
  Tensor lse = in_place ? Tensor() : Tensor::empty({N}, ad, logits.device());
  Tensor loss = Tensor::empty(red == Reduction::None ? Shape{N} : Shape{}, ad, logits.device());
  set_device(logits, op);
  Tensor live_rows = check_targets(targets, V, ignore, op);
  Tensor row_loss = Tensor::empty({red == Reduction::None ? 0 : N}, ad, logits.device());
  CUDA_DISPATCH_FLOAT(logits.dtype(), op, {
    using T = scalar_t;
    using A = acc_t<T>;
    A* prl = red == Reduction::None ? nullptr : row_loss.data<A>();
    A* pout = red == Reduction::None ? loss.data<A>() : nullptr;
    if (N > 0) {
      dispatch_targets(targets, [&](auto* pt) {
        using I = std::remove_const_t<std::remove_pointer_t<decltype(pt)>>;
        const bool vec = row_starts_aligned<T>(N, ld, {logits.raw_data()});
        if (in_place) {
          auto launch = [&](auto kernel, int64_t nvec, size_t vec_bytes) {
            const Launch L = stream_launch<T>(N, nvec);
            const InplaceSplit sp = inplace_split(nvec, vec_bytes, L, logits.device().index);
            const size_t smem = size_t(sp.cached) * vec_bytes * L.block.y;
            // the limit without the opt-in counts the static arrays too
            if (smem + kInplaceStatic<A> > 48 * 1024)
              check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)), op);
            cudaLaunchConfig_t cfg = {};
            cfg.blockDim = L.block;
            cfg.dynamicSmemBytes = smem;
            cfg.stream = current_stream();
            cudaLaunchAttribute cluster[1];
            cluster[0].id = cudaLaunchAttributeClusterDimension;
            cluster[0].val.clusterDim.x = unsigned(sp.kc);
            cluster[0].val.clusterDim.y = cluster[0].val.clusterDim.z = 1;
            cfg.attrs = cluster;
            cfg.numAttrs = sp.kc > 1 ? 1 : 0;
            // A cluster per row group: measured faster than as many clusters as are resident
            // walking the rows (bench/notes_cuda_row_ops.md).
            cfg.gridDim = dim3(std::min(L.grid, 1u << 27) * unsigned(sp.kc));
            check(cudaLaunchKernelEx(&cfg, kernel, prl, pout, logits.data<T>(), pt, static_cast<const int64_t*>(live_rows.data<int64_t>()),
                                     N, V, ld, ignore, A(eps), red == Reduction::Mean, sp.cached), op);
          };
          if (vec)
            launch(cross_entropy_inplace_kernel<T, kVec<T>, I>, V / kVec<T>, sizeof(T) * kVec<T>);
          else
            launch(cross_entropy_inplace_kernel<T, 1, I>, V, sizeof(T));
        } else if (vec) {
          const Launch L = stream_launch<T>(N, V / kVec<T>);
          cross_entropy_kernel<T, kVec<T>, I><<<L.grid, L.block, 0, current_stream()>>>(prl, pout, lse.data<A>(), logits.data<T>(),
                                                                  pt, N, V, ld, ignore, A(eps));
        } else {
          const Launch L = stream_launch<T>(N, V);
          cross_entropy_kernel<T, 1, I><<<L.grid, L.block, 0, current_stream()>>>(prl, pout, lse.data<A>(), logits.data<T>(), pt,
                                                            N, V, ld, ignore, A(eps));
        }
      });
      check_launch(op);
    }
    if (red != Reduction::None) {
      reduce_loss_kernel<T><<<1, kCheckThreads, 0, current_stream()>>>(loss.data<A>(), prl, live_rows.data<int64_t>(), N,
                                                  red == Reduction::Mean);
      check_launch(op);
    }
  });
  if (in_place) return {loss};
  return {loss, lse};
}

Tensors cross_entropy_forward_cuda(const Tensors& in, const Attrs& a) { return forward_entry(in, a, false); }

Tensors cross_entropy_inplace_forward_cuda(const Tensors& in, const Attrs& a) {
  return forward_entry(in, a, true);
}

// ---- backward ----

// One row lane per row, one pass: dlogits[r, :] from logits[r, :] and the row's scalars.
// g is g_loss: (N,) for "none", else a scalar scaled by 1 (sum) or 1 / count (mean).
template <typename T, int W, typename I>
__global__ void __launch_bounds__(kMaxThreads<T>) cross_entropy_backward_kernel(T* __restrict__ dlogits, const T* __restrict__ logits,
                                              const I* __restrict__ targets, const acc_t<T>* __restrict__ g,
                                              const acc_t<T>* __restrict__ lse,
                                              const acc_t<T>* __restrict__ g_lse,
                                              const int64_t* __restrict__ live_rows, int64_t N, int64_t V,
                                              int64_t ldx, int64_t ldd, int64_t ignore, acc_t<T> eps,
                                              int reduction) {
  using A = acc_t<T>;
  const int64_t nvec = V / W;
  const A scale = reduction == int(Reduction::None) ? A(0)
                  : reduction == int(Reduction::Sum) ? convert<A>(g[0])
                                                     : convert<A>(g[0]) / A(live_rows[0]);
  for (int64_t base = int64_t(blockIdx.x) * blockDim.y; base < N; base += int64_t(gridDim.x) * blockDim.y) {
    const int64_t r = base + threadIdx.y;
    if (r >= N) continue;  // no reductions here: an idle lane can skip the row
    const Pack<T, W>* src[1] = {as_vec<T, W>(logits + r * ldx)};  // logits[r, :]
    Pack<T, W>* dst = as_vec<T, W>(dlogits + r * ldd);             // dlogits[r, :]
    const int64_t t = int64_t(targets[r]);
    const bool ignored = t == ignore;
    const A k = ignored ? A(0) : reduction == int(Reduction::None) ? convert<A>(g[r]) : scale;
    const A kp = k + g_lse[r], l = lse[r], shift = k * eps / A(V), hit = k * (A(1) - eps);
    // d loss / d x for a logit x of the row, the target's or another (never the target in an
    // ignored row: t is not a class then)
    auto grad_of = [&](A xv, bool target) {
      const A d = kp * ex_for<T>(xv - l) - shift;
      return convert<T>(target ? d - hit : d);
    };
    Pack<T, W> c[1][1];  // one pass: nothing to keep
    row_pass<true, kStream<T>>(src, nvec, c, [&](int64_t j, const Pack<T, W> (&v)[1]) {
      Pack<T, W> out;
#pragma unroll
      for (int i = 0; i < W; ++i) out.v[i] = grad_of(convert<A>(v[0].v[i]), j * W + i == t);
      dst[j] = out;
    });
    if (W > 1 && threadIdx.x == 0)  // the row's last V % W elements, one by one
      for (int64_t i = nvec * W; i < V; ++i)
        dlogits[r * ldd + i] = grad_of(convert<A>(logits[r * ldx + i]), i == t);
  }
}

Tensors cross_entropy_backward_cuda(const Tensors& in, const Attrs& a) {
  const char* op = "cross_entropy_backward";
  const Reduction red =
      ops::check_cross_entropy_backward_args(in, a.s("reduction", "mean"), a.f("label_smoothing", 0.0));
  const int64_t row_stride = ops::cross_entropy_row_stride(in[1]);  // as the forward
  Tensor logits = row_stride >= 0 ? in[1] : ops::contiguous(in[1]), targets = ops::contiguous(in[2]);
  const int64_t N = logits.size(0), V = logits.size(1), ldx = row_stride >= 0 ? row_stride : V;
  const DType ad = acc_dtype(logits.dtype());
  Tensor g = ops::contiguous(in[0].dtype() == ad ? in[0] : ops::to_dtype(in[0], ad));
  Tensor lse = ops::contiguous(in[3].dtype() == ad ? in[3] : ops::to_dtype(in[3], ad));
  Tensor g_lse = ops::contiguous(in[4].dtype() == ad ? in[4] : ops::to_dtype(in[4], ad));
  const int64_t ignore = a.i("ignore_index", -100);
  const double eps = a.f("label_smoothing", 0.0);
  // dlogits with the rows a matmul output of its shape has: the output layer's GEMMs read it in
  // place.
  Tensor dlogits = ops::matmul_output({N, V}, logits.dtype(), logits.device());
  const int64_t ldd = dlogits.strides()[0];
  if (N == 0) return {dlogits};
  set_device(logits, op);
  Tensor live_rows = check_targets(targets, V, ignore, op);
  CUDA_DISPATCH_FLOAT(logits.dtype(), op, {
    using T = scalar_t;
    using A = acc_t<T>;
    dispatch_targets(targets, [&](auto* pt) {
      using I = std::remove_const_t<std::remove_pointer_t<decltype(pt)>>;
      auto args = [&](auto kernel, const Launch& L) {
        kernel<<<L.grid, L.block, 0, current_stream()>>>(dlogits.data<T>(), logits.data<T>(), pt, g.data<A>(), lse.data<A>(),
                                    g_lse.data<A>(), live_rows.data<int64_t>(), N, V, ldx, ldd, ignore, A(eps),
                                    int(red));
      };
      if (row_starts_aligned<T>(N, ldx, {logits.raw_data()}) && row_starts_aligned<T>(N, ldd, {dlogits.raw_data()}))
        args(cross_entropy_backward_kernel<T, kVec<T>, I>, stream_launch<T>(N, V / kVec<T>));
      else
        args(cross_entropy_backward_kernel<T, 1, I>, stream_launch<T>(N, V));
    });
  });
  check_launch(op);
  return {dlogits};
}

// ---- in-place backward ----

// Row r of x (R rows of C elements, ld apart) times g[r] (per_row) or g[0], in the accumulation
// type; a factor of exactly 1 leaves the row unread and unwritten. Blocks: x over a row's vectors, y
// over rows (grid-stride both ways), about 16 per SM in all: a grid sized to the tensor was a
// million blocks at 16384 x 50304, and only scheduling them, each reading a factor of 1 and
// leaving, took 0.27 ms.
template <typename T, int W>
__global__ void scale_rows_kernel(T* __restrict__ x, const acc_t<T>* __restrict__ g, int64_t R, int64_t C,
                                  int64_t ld, bool per_row) {
  const int64_t nvec = C / W;
  using A = acc_t<T>;
  for (int64_t r = blockIdx.y; r < R; r += gridDim.y) {
    const A s = g[per_row ? r : 0];
    if (s == A(1)) continue;
    Pack<T, W>* xr = as_vec<T, W>(x + r * ld);  // xr points at row r
    for (int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; j < nvec; j += int64_t(gridDim.x) * blockDim.x) {
      Pack<T, W> v = xr[j];
#pragma unroll
      for (int i = 0; i < W; ++i) v.v[i] = convert<T>(convert<A>(v.v[i]) * s);
      xr[j] = v;
    }
    if (W > 1 && blockIdx.x == 0)  // the row's last C % W elements
      for (int64_t i = nvec * W + threadIdx.x; i < C; i += blockDim.x) x[r * ld + i] = convert<T>(convert<A>(x[r * ld + i]) * s);
  }
}

constexpr int kScaleThreads = 256;

Tensors cross_entropy_inplace_backward_cuda(const Tensors& in, const Attrs& a) {
  const char* op = "cross_entropy_inplace_backward";
  cpu::expect_inputs(in, 2, 2, op);
  const ops::InplaceBackwardArgs args =
      ops::check_cross_entropy_inplace_backward_args(in[0], in[1], a.s("reduction", "mean"));
  const Reduction red = args.reduction;
  const int64_t ld = args.row_stride;
  Tensor dlogits = in[1];
  const DType ad = acc_dtype(dlogits.dtype());
  Tensor g = ops::contiguous(in[0].dtype() == ad ? in[0] : ops::to_dtype(in[0], ad));
  if (dlogits.numel() == 0) return {dlogits};
  // One factor for contiguous dlogits: a single row of N V elements (16-byte vectors whenever N V
  // allows, whatever V is); per-row factors ("none") or rows at a stride of their own: N rows of V.
  const bool per_row = red == Reduction::None;
  const bool flat = !per_row && ld == dlogits.size(1);
  const int64_t R = flat ? 1 : dlogits.size(0), C = flat ? dlogits.numel() : dlogits.size(1);
  const int64_t row_ld = flat ? C : ld;
  set_device(dlogits, op);
  CUDA_DISPATCH_FLOAT(dlogits.dtype(), op, {
    using T = scalar_t;
    using A = acc_t<T>;
    auto launch = [&](auto kernel, int64_t nvec) {
      const int64_t target = 16 * int64_t(device_attr(cudaDevAttrMultiProcessorCount, dlogits.device().index));
      const int64_t rows = std::min<int64_t>({R, 65535, target});
      const dim3 grid(unsigned(std::clamp<int64_t>(blocks_for(nvec, kScaleThreads), 1, std::max<int64_t>(target / rows, 1))),
                      unsigned(rows));
      kernel<<<grid, kScaleThreads, 0, current_stream()>>>(dlogits.data<T>(), g.data<A>(), R, C, row_ld, per_row);
    };
    if (row_starts_aligned<T>(R, row_ld, {dlogits.raw_data()}))
      launch(scale_rows_kernel<T, kVec<T>>, C / kVec<T>);
    else
      launch(scale_rows_kernel<T, 1>, C);
  });
  check_launch(op);
  return {dlogits};
}

}  // namespace

LS_REGISTER(cross_entropy_cuda) {
  const std::vector<DType> kFloat = {DType::Float32, DType::Float64, DType::BFloat16, DType::Float16};
  register_kernel("cross_entropy", "cuda", cross_entropy_forward_cuda, kFloat);
  register_kernel("cross_entropy_backward", "cuda", cross_entropy_backward_cuda, kFloat);
  register_kernel("cross_entropy_inplace", "cuda", cross_entropy_inplace_forward_cuda, kFloat);
  register_kernel("cross_entropy_inplace_backward", "cuda", cross_entropy_inplace_backward_cuda, kFloat);
}

}  // namespace ls::cuda
