// Embedding lookup on the GPU and its deterministic backward; float32, float64, bfloat16,
// float16 weights, int32/int64 ids. The math of the CPU reference cpp/ops/embedding.cpp:
//   forward  "embedding" {weight (V, C), ids (N..)} -> out (N.., C),  out[n, :] = weight[ids[n], :]
//   backward "embedding_backward" {grad (N.., C), ids} attr num_weights = V -> dweight (V, C),
//            dweight[v, :] = sum over n with ids[n] == v of grad[n, :], in increasing n (a row of
//            more than kChunk tokens: pieces summed so, then added in order; see step 3d)
// Forward: a gather; each thread copies one 16-byte pack of a row (scalar elements when C or a
// pointer does not allow packs), so rows stream at copy bandwidth.
// Backward without float atomics, so two runs give identical bits:
//   1. count[v], the tokens of id v, by int atomics, which also hand each of a row's first kSlots
//      tokens a slot of its own; a row of more tokens (a long row) is listed when its count
//      passes kSlots;
//   2. every vocabulary row v of at most kSlots tokens (nearly all rows of a large vocabulary)
//      is written whole from its slots, sorted in registers: the sum of grad[n, :] over its
//      tokens in increasing n (float32 accumulation, float64 for float64), zeros for none;
//   3. the long rows, beside step 2 on a high-priority side stream, without sorting all tokens:
//      a. one block lays them out: each long row of at most kSortMax tokens gets a segment of a
//         token buffer (an exclusive scan of their counts), and each long row of more than
//         kChunk tokens a run of pieces;
//      b. each token of such a row writes its position into its row's segment, at the ticket the
//         counting atomics gave it (in no particular order);
//      c. a block per such row sorts its segment in shared memory (a bitonic network); a big row
//         (more than kSortMax tokens: a few, "," or the padding id) has no segment, its pieces
//         (d) walk the ids instead;
//      d. a long row of more than kChunk tokens (a frequent token: real text puts a few percent
//         of all tokens on "," or " the") is summed in pieces, a block per piece, into a float32
//         (float64) buffer, so that no block walks thousands of tokens alone: kChunk sorted
//         tokens a piece, or for a big row as many ranges of positions, each listing its row's
//         tokens among its ids in order;
//      e. each long row is written: the sum of its sorted tokens' rows, or of its pieces in order.
//   The layout's order (the order of the long-row list) varies from run to run; the sums do not:
//   each row's tokens and pieces are its own, in increasing n, cut at places fixed by the row's
//   length and N (kChunk sorted tokens, or a big row's ranges of positions).
// Step 3 is latency-bound, step 2 moves nearly all the bytes. Uniform ids have no long rows:
// step 3's grids then return at once. (It replaced a stable radix sort of all tokens, cub's,
// whose kernels took about 35 us whatever the ids and shared the SMs with step 2:
// bench/notes_cuda_elementwise.md.)
// All on the device, no host synchronisation; the temporaries come from the caching allocator:
// the counts, slots and long-row index (40 bytes a vocabulary row: more than dweight itself for a
// table of a few float32 columns), each token's ticket and the long rows' token buffer (8 bytes a
// token, and a few per long row) and the pieces' buffer (N / 16 rows of C, touched only by rows
// of more than kChunk tokens).
// Slow patterns (correct, bench/notes_cuda_elementwise.md): a big row's ranges read all N ids
// between them, (big rows) x N reads in all (a small vocabulary at a huge N); a big row whose
// tokens cluster in one stretch of positions is summed by the few blocks of its ranges there.
// Limits: N < 2^31 tokens. Ids out of [0, V) cannot raise here without a host round trip: the
// forward writes a row of NaN for them and records an index fault (index_fault.cuh), the CPU op's
// IndexError raised at the next synchronisation (naming a bad position, not always the first);
// the backward ignores them.
#include <cub/block/block_scan.cuh>

#include <type_traits>

#include "core/registry.h"
#include "index_fault.cuh"
#include "ops/kernel_checks.h"
#include "ops/ops.h"
#include "vec_map.cuh"

namespace ls::cuda {

namespace {

// out[n, :] = weight[ids[n], :], W-element packs; cp = packs per row. J indexes the packs of out:
// uint32_t below 2^32 of them, as a 64-bit division per pack (to find its row) made the copy
// compute-bound; int64_t otherwise.
template <int W, typename J, typename T, typename I>
__global__ void embedding_forward_kernel(const T* __restrict__ weight, const I* __restrict__ ids,
                                         T* __restrict__ out, int64_t N, int64_t cp_, int64_t V,
                                         FaultSite site) {
  using P = Pack<T, W>;
  const J total = J(N * cp_), cp = J(cp_);
  for (J idx = J(blockIdx.x) * blockDim.x + threadIdx.x; idx < total; idx += J(gridDim.x) * blockDim.x) {
    const J n = idx / cp, c = idx - n * cp;
    const int64_t id = int64_t(ids[n]);
    P v;
    if (id >= 0 && id < V) {
      v = reinterpret_cast<const P*>(weight)[id * int64_t(cp) + c];  // weight[id, c*W : c*W+W]
    } else {
#pragma unroll
      for (int j = 0; j < W; ++j) v.v[j] = convert<T>(acc_t<T>(NAN));
      record_index_fault(site, int64_t(n), id);
    }
    reinterpret_cast<P*>(out)[idx] = v;  // out[n, c*W : c*W+W]
  }
}

// Tokens a short row may have: its tokens are kept in a slot each as they are counted, and
// sorted in registers; a row of more is a long row (step 3).
constexpr int kSlots = 8;

// count[0 .. n) = 0: the first kernel of the backward's chain, which lets the counting launch early.
__global__ void zero_counts_kernel(int32_t* __restrict__ count, int64_t n) {
  allow_early_launch();
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    count[i] = 0;
}

// count[v] = tokens of id v (zeroed before); ticket[n] = the order in which token n was counted
// among its id's (0, 1, ...: each a place of its own in a long row's segment); slots[v, t] = the
// t-th token of id v to be counted, t < kSlots (in no particular order); the ids of more than
// kSlots tokens are listed in long_ids, long_ids_count of them (zeroed before). Ids out of range
// are skipped.
template <typename I>
__global__ void count_tokens_kernel(const I* __restrict__ ids, int32_t* count, int32_t* __restrict__ ticket,
                                    int32_t* slots, int32_t* long_ids, int32_t* long_ids_count, int64_t N,
                                    int64_t V) {
  allow_early_launch();  // the short rows' blocks may take their slots and wait
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  int64_t n = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  // The first id is read before the wait, so the load overlaps the zeroing kernel instead of
  // following it. Safe because the ids are the op's input and the zeroing kernel is launched
  // plainly: whatever wrote the ids finished before it started, and this kernel starts only after
  // it has (were the zeroing ever launched early, this read could race that writer).
  int64_t id = n < N ? int64_t(ids[n]) : -1;
  wait_for_prior_grids();  // the zeroed counts
  for (; n < N; n += stride) {
    const int64_t next = n + stride < N ? int64_t(ids[n + stride]) : -1;
    if (id >= 0 && id < V) {
      const int t = atomicAdd(&count[id], 1);
      ticket[n] = t;
      if (t < kSlots) slots[id * kSlots + t] = int32_t(n);
      else if (t == kSlots) long_ids[atomicAdd(long_ids_count, 1)] = int32_t(id);
    }
    id = next;
  }
}

// Tokens per piece of a sorted long row: a long row of more than kChunk tokens is summed in pieces.
constexpr int kChunk = 32;
// A long row of at most kSortMax tokens is sorted in shared memory (one token a thread); a big
// row (more) is never sorted: its p = ceil(tokens / kChunk) pieces are ranges of positions,
// piece j over its tokens at positions [j P, (j + 1) P), P = ceil(N / p), each in increasing n.
constexpr int kSortMax = 512;

// The long rows' layout, one block: long row b (the id long_ids[b], m = *long_ids_count of them)
// owns the token buffer's [seg_start[b], seg_start[b + 1]) (empty for a big row) and, past kChunk
// tokens, the pieces [piece_start[b], piece_start[b + 1]), each listed in piece_row;
// row_of[id] = b.
constexpr int kLayoutThreads = 1024;
__global__ void __launch_bounds__(kLayoutThreads)
    long_rows_layout_kernel(const int32_t* __restrict__ count, const int32_t* __restrict__ long_ids,
                            const int32_t* __restrict__ long_ids_count, int32_t* __restrict__ seg_start,
                            int32_t* __restrict__ piece_start, int32_t* __restrict__ piece_row,
                            int32_t* __restrict__ row_of) {
  using Scan = cub::BlockScan<int32_t, kLayoutThreads>;
  __shared__ typename Scan::TempStorage scan;
  __shared__ int32_t tile_pieces_end[kLayoutThreads];  // the end of each tile row's pieces, in the tile
  const int32_t m = *long_ids_count;
  int32_t tokens_before = 0, pieces_before = 0;  // over the tiles done
  for (int32_t base = 0; base < m; base += kLayoutThreads) {
    const int32_t b = base + int32_t(threadIdx.x);
    const int32_t id = b < m ? long_ids[b] : 0, count_b = b < m ? count[id] : 0;
    const bool big = count_b > kSortMax;
    const int32_t tokens = big ? 0 : count_b;  // the segment's length
    const int32_t pieces = count_b > kChunk ? (count_b + kChunk - 1) / kChunk : 0;
    int32_t t0, p0, tile_tokens, tile_pieces;
    Scan(scan).ExclusiveSum(tokens, t0, tile_tokens);
    __syncthreads();  // scan's storage is used again
    Scan(scan).ExclusiveSum(pieces, p0, tile_pieces);
    tile_pieces_end[threadIdx.x] = p0 + pieces;
    __syncthreads();
    if (b < m) {
      seg_start[b] = tokens_before + t0;
      piece_start[b] = pieces_before + p0;
      row_of[id] = b;
    }
    // The tile's pieces over all threads (one row may have thousands): piece q is its row's, the
    // first tile row whose pieces end past q. (The next tile writes tile_pieces_end after the
    // barrier between its scans, which every thread reaches only when done here.)
    for (int32_t q = threadIdx.x; q < tile_pieces; q += kLayoutThreads) {
      int32_t lo = 0, hi = kLayoutThreads - 1;
      while (lo < hi) {
        const int32_t mid = (lo + hi) / 2;
        if (tile_pieces_end[mid] > q) hi = mid;
        else lo = mid + 1;
      }
      piece_row[pieces_before + q] = base + lo;
    }
    tokens_before += tile_tokens;
    pieces_before += tile_pieces;
  }
  if (threadIdx.x == 0) {
    seg_start[m] = tokens_before;
    piece_start[m] = pieces_before;
  }
}

// Each token of a sorted long row writes its position into its row's segment, at its ticket (in
// no particular order, without a second round of atomics).
template <typename I>
__global__ void scatter_long_tokens_kernel(const I* __restrict__ ids, const int32_t* __restrict__ count,
                                           const int32_t* __restrict__ ticket, const int32_t* __restrict__ row_of,
                                           const int32_t* __restrict__ seg_start,
                                           const int32_t* __restrict__ long_ids_count,
                                           int32_t* __restrict__ seg, int64_t N, int64_t V) {
  if (*long_ids_count == 0) return;  // uniform ids: no long row, nothing to read
  for (int64_t n = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; n < N;
       n += int64_t(gridDim.x) * blockDim.x) {
    const int64_t id = int64_t(ids[n]);
    if (id < 0 || id >= V) continue;
    const int32_t tokens = count[id];
    if (tokens > kSlots && tokens <= kSortMax) seg[seg_start[row_of[id]] + ticket[n]] = int32_t(n);
  }
}

// Blocks stride over the long rows and sort each segment (at most kSortMax tokens; none for a
// big row) into increasing positions: a bitonic network in shared memory, a token a thread.
__global__ void __launch_bounds__(kSortMax)
    sort_segments_kernel(const int32_t* __restrict__ long_ids_count, const int32_t* __restrict__ seg_start,
                         int32_t* __restrict__ seg) {
  __shared__ int32_t keys[kSortMax];
  const int32_t m = *long_ids_count, i = threadIdx.x;
  for (int32_t b = blockIdx.x; b < m; b += gridDim.x) {
    const int32_t s = seg_start[b], tokens = seg_start[b + 1] - s;
    if (tokens == 0) continue;  // a big row (the same for the whole block)
    int32_t P = 2;
    while (P < tokens) P *= 2;
    if (i < P) keys[i] = i < tokens ? seg[s + i] : INT32_MAX;
    __syncthreads();
    for (int32_t k = 2; k <= P; k *= 2)
      for (int32_t j = k / 2; j > 0; j /= 2) {
        const int32_t partner = i ^ j;
        if (i < P && partner > i) {
          const int32_t x = keys[i], y = keys[partner];
          if ((x > y) == ((i & k) == 0)) {  // ascending where bit k of i is 0
            keys[i] = y;
            keys[partner] = x;
          }
        }
        __syncthreads();
      }
    if (i < tokens) seg[s + i] = keys[i];
    __syncthreads();  // keys are reused by the next row
  }
}

// acc += grad[order[k], c*W : c*W+W] for k in [k0, k1), in increasing k, kLoads rows loaded before
// any is added.
template <int kLoads, int W, typename T>
__device__ __forceinline__ void add_rows(acc_t<T> (&acc)[W], const T* __restrict__ grad,
                                         const int32_t* __restrict__ order, int64_t k0, int64_t k1,
                                         int64_t cp, int64_t c) {
  using P = Pack<T, W>;
  for (int64_t k = k0; k < k1; k += kLoads) {
    P g[kLoads];
#pragma unroll
    for (int u = 0; u < kLoads; ++u)
      if (k + u < k1) g[u] = reinterpret_cast<const P*>(grad)[int64_t(order[k + u]) * cp + c];
#pragma unroll
    for (int u = 0; u < kLoads; ++u)
      if (k + u < k1)
#pragma unroll
        for (int j = 0; j < W; ++j) acc[j] += convert<acc_t<T>>(g[u].v[j]);
  }
}

// The positions n in [n0, n1) with ids[n] == id, in increasing order, into list (shared), their
// number returned to every thread: kListPerThread consecutive ids a thread, placed by a scan of
// the threads' counts. n1 - n0 is at most kListPerThread blockDim.x; blockDim.x is a multiple
// of 32, at most 32 kListWarps.
constexpr int kListPerThread = 8, kListWarps = 4, kListMax = kListPerThread * 32 * kListWarps;
template <typename I>
__device__ int32_t list_matches(const I* __restrict__ ids, int64_t id, int64_t n0, int64_t n1, int32_t* list,
                                int32_t* warp_total) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  const int64_t first = n0 + int64_t(threadIdx.x) * kListPerThread;
  uint32_t mine = 0;  // bit u: ids[first + u] == id
#pragma unroll
  for (int u = 0; u < kListPerThread; ++u)
    if (first + u < n1 && int64_t(ids[first + u]) == id) mine |= 1u << u;
  const int32_t count = __popc(mine);
  int32_t through = count;  // inclusive scan over the warp's lanes
#pragma unroll
  for (int d = 1; d < 32; d *= 2) {
    const int32_t v = __shfl_up_sync(0xffffffffu, through, d);
    if (lane >= d) through += v;
  }
  if (lane == 31) warp_total[warp] = through;
  __syncthreads();
  int32_t at = through - count, total = 0;
  for (int w = 0; w < warps; ++w) {
    if (w < warp) at += warp_total[w];
    total += warp_total[w];
  }
  for (; mine; mine &= mine - 1) list[at++] = int32_t(first + __ffs(mine) - 1);
  __syncthreads();  // the list is whole
  return total;
}

// Blocks stride over the pieces. Piece w of long row b = piece_row[w], j = w - piece_start[b]:
// for a sorted row, the rows of its tokens seg[seg_start[b] + kChunk j ...] (up to kChunk);
// for a big row of p pieces, the rows of its tokens at positions [j P, (j + 1) P), P = ceil(N / p),
// found by walking those ids; summed in increasing n into pieces[w]. Threads over the row's
// W-element packs.
template <int W, typename T, typename I>
__global__ void embedding_pieces_kernel(const T* __restrict__ grad, const I* __restrict__ ids,
                                        const int32_t* __restrict__ seg, const int32_t* __restrict__ seg_start,
                                        const int32_t* __restrict__ piece_start,
                                        const int32_t* __restrict__ piece_row, const int32_t* __restrict__ long_ids,
                                        const int32_t* __restrict__ long_ids_count, acc_t<T>* __restrict__ pieces,
                                        int64_t cp, int64_t N) {
  using A = acc_t<T>;
  __shared__ int32_t list[kListMax];
  __shared__ int32_t warp_total[kListWarps];
  const int32_t rows = *long_ids_count;
  if (rows == 0) return;  // uniform ids: no long row, one load before the block leaves
  const int32_t total = piece_start[rows];
  for (int32_t w = blockIdx.x; w < total; w += gridDim.x) {
    const int32_t b = piece_row[w], j = w - piece_start[b];
    const int64_t s = seg_start[b], e = seg_start[b + 1];
    const bool big = s == e;  // a long row has more than kSlots tokens: an empty segment is a big row's
    // the same number of passes for every thread (list_matches synchronises the block)
    for (int64_t c0 = 0; c0 < cp; c0 += blockDim.x) {
      const int64_t c = c0 + threadIdx.x;
      const bool active = c < cp;
      A acc[W];
#pragma unroll
      for (int u = 0; u < W; ++u) acc[u] = A(0);
      if (!big) {
        const int64_t k0 = s + int64_t(j) * kChunk, k1 = min(k0 + kChunk, e);
        if (active) add_rows<8, W>(acc, grad, seg, k0, k1, cp, c);  // eight loads in flight
      } else {
        const int64_t p = piece_start[b + 1] - piece_start[b], span = (N + p - 1) / p;
        const int64_t id = long_ids[b], n1 = min(N, (j + 1) * span), step = int64_t(kListPerThread) * blockDim.x;
        for (int64_t n0 = int64_t(j) * span; n0 < n1; n0 += step) {
          const int32_t listed = list_matches(ids, id, n0, min(n1, n0 + step), list, warp_total);
          if (active) add_rows<8, W>(acc, grad, list, 0, listed, cp, c);
          __syncthreads();  // list and warp_total are written again
        }
      }
      if (active) {
        A* piece = pieces + int64_t(w) * cp * W + c * W;
#pragma unroll
        for (int u = 0; u < W; ++u) piece[u] = acc[u];
      }
    }
  }
}

// Block v, for a row of at most kSlots tokens: dweight[v, :] = the sum of their gradient rows in
// increasing n, zeros for none. Each thread loads the row's count and slots together (one
// dependent load fewer than a run of sorted positions: count, then start, then order), sorts
// the tokens in registers and sums its packs of their rows, two rows' loads in flight. At most
// 32 registers (the launch bounds; 48 without), so that an SM holds as many rows in flight as
// its threads allow: a row is latency-bound (its count and slots, then its gradient rows).
// J indexes packs: uint32_t below 2^32 of them in grad and in dweight. Every gradient row is read
// once and every dweight row written once, so both stream past L2 (streaming loads and stores).
// At V50304 C1280 N65536 bf16 the two took the zeroing, counting and short rows from 0.1151 to
// 0.1122 ms on an H100 and from 0.0930 to 0.0838 ms on an H200 (bench/results/nvidia-h100-f4afa74).
template <int W, typename J, typename T>
__global__ void __launch_bounds__(256, 8)
    embedding_short_rows_kernel(const T* __restrict__ grad, const int32_t* __restrict__ count,
                                const int32_t* __restrict__ slots, T* __restrict__ dweight, int64_t cp_) {
  using A = acc_t<T>;
  using P = Pack<T, W>;
  static_assert(kSlots == 8, "the slots load as two int4");
  wait_for_prior_grids();  // the counts and slots
  const J v = blockIdx.x, cp = J(cp_);
  const int tokens = count[v];
  const int4 lo = reinterpret_cast<const int4*>(slots)[2 * v], hi = reinterpret_cast<const int4*>(slots)[2 * v + 1];
  if (tokens > kSlots) return;  // the long rows' kernel's
  int32_t n[kSlots] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
  // Unused slots were never written (one 32-byte load reads them anyway, instead of a second
  // load that waits for the count; compute-sanitizer's initcheck reports it): they sort last.
#pragma unroll
  for (int t = 0; t < kSlots; ++t)
    if (t >= tokens) n[t] = INT32_MAX;
#pragma unroll
  for (int i = 0; i < kSlots; ++i)  // odd-even transposition sort: kSlots rounds
#pragma unroll
    for (int t = i % 2; t + 1 < kSlots; t += 2) {
      const int32_t a = min(n[t], n[t + 1]), b = max(n[t], n[t + 1]);
      n[t] = a;
      n[t + 1] = b;
    }
  const P* rows = reinterpret_cast<const P*>(grad);
  for (J c = threadIdx.x; c < cp; c += blockDim.x) {
    A acc[W];
#pragma unroll
    for (int j = 0; j < W; ++j) acc[j] = A(0);
#pragma unroll
    for (int t = 0; t < kSlots; t += 2) {
      if (t >= tokens) break;
      P g0 = load_streaming(rows + (J(n[t]) * cp + c)), g1;
      if (t + 1 < tokens) g1 = load_streaming(rows + (J(n[t + 1]) * cp + c));
#pragma unroll
      for (int j = 0; j < W; ++j) acc[j] += convert<A>(g0.v[j]);
      if (t + 1 < tokens)
#pragma unroll
        for (int j = 0; j < W; ++j) acc[j] += convert<A>(g1.v[j]);
    }
    P out;
#pragma unroll
    for (int j = 0; j < W; ++j) out.v[j] = convert<T>(acc[j]);
    store_streaming(reinterpret_cast<P*>(dweight) + (v * cp + c), out);  // dweight[v, c*W:]
  }
}

// Blocks stride over the long rows: dweight[long_ids[b], :] = the sum of the rows of its sorted
// tokens, or of its pieces in order when it has some (more than kChunk tokens).
template <int W, typename T>
__global__ void embedding_long_rows_kernel(const T* __restrict__ grad, const int32_t* __restrict__ seg,
                                           const int32_t* __restrict__ seg_start,
                                           const int32_t* __restrict__ piece_start,
                                           const acc_t<T>* __restrict__ pieces, const int32_t* __restrict__ long_ids,
                                           const int32_t* __restrict__ long_ids_count, T* __restrict__ dweight,
                                           int64_t cp) {
  using A = acc_t<T>;
  using P = Pack<T, W>;
  const int32_t rows = *long_ids_count;
  for (int32_t b = blockIdx.x; b < rows; b += gridDim.x) {
    const int64_t v = long_ids[b], s = seg_start[b], e = seg_start[b + 1];
    for (int64_t c = threadIdx.x; c < cp; c += blockDim.x) {
      A acc[W];
#pragma unroll
      for (int j = 0; j < W; ++j) acc[j] = A(0);
      if (piece_start[b + 1] == piece_start[b]) {
        add_rows<8, W>(acc, grad, seg, s, e, cp, c);  // kSlots + 1 to kChunk rows, eight in flight
      } else {
        for (int64_t w = piece_start[b]; w < piece_start[b + 1]; ++w) {
          const A* piece = pieces + w * cp * W + c * W;
#pragma unroll
          for (int j = 0; j < W; ++j) acc[j] += piece[j];
        }
      }
      P out;
#pragma unroll
      for (int j = 0; j < W; ++j) out.v[j] = convert<T>(acc[j]);
      reinterpret_cast<P*>(dweight)[v * cp + c] = out;  // dweight[v, c*W:]
    }
  }
}

void check_ids(const Tensor& ids, const char* op) {
  LS_CHECK(ids.dtype() == DType::Int32 || ids.dtype() == DType::Int64, TypeError, op,
           ": ids must be int32 or int64, got ", dtype_name(ids.dtype()));
  LS_CHECK(ids.numel() < (int64_t(1) << 31), ValueError, op, ": at most 2^31 - 1 ids, got ", ids.numel());
}

Tensors embedding_forward(const Tensors& in, const Attrs&) {
  cpu::expect_inputs(in, 2, 2, "embedding");  // weight, ids
  LS_CHECK(in[0].dim() == 2, ValueError, "embedding: weight must be 2-D (V, C), got shape ",
           shape_str(in[0].shape()));
  check_ids(in[1], "embedding");
  Tensor weight = ops::contiguous(in[0]), ids = ops::contiguous(in[1]);
  const int64_t V = weight.size(0), C = weight.size(1), N = ids.numel();
  Shape out_shape = ids.shape();
  out_shape.push_back(C);
  Tensor out = Tensor::empty(out_shape, weight.dtype(), weight.device());
  if (N == 0 || C == 0) return {out};
  set_device(weight, "embedding");
  const FaultSite site = fault_site("embedding", FaultKind::Id, V, 0);
  CUDA_DISPATCH_FLOAT(weight.dtype(), "embedding", {
    using T = scalar_t;
    const int W = vectorizable<T>(C, {weight.raw_data(), out.raw_data()}) ? kVec<T> : 1;
    const int64_t cp = C / W;
    // The grid (at most 2^20 blocks of kThreads) strides, so idx + stride stays below 2^32 + 2^28.
    const bool narrow = N * cp < (int64_t(1) << 32) - (int64_t(1) << 28);
    auto launch = [&](auto* pid) {
      auto go = [&](auto kernel) {
        kernel<<<grid_stride_blocks(N * cp, kThreads), kThreads, 0, current_stream()>>>(
            cptr<T>(weight), pid, mptr<T>(out), N, cp, V, site);
      };
      using I = std::remove_const_t<std::remove_pointer_t<decltype(pid)>>;
      constexpr int WV = kVec<T>;
      if (W == 1) narrow ? go(embedding_forward_kernel<1, uint32_t, T, I>) : go(embedding_forward_kernel<1, int64_t, T, I>);
      else narrow ? go(embedding_forward_kernel<WV, uint32_t, T, I>) : go(embedding_forward_kernel<WV, int64_t, T, I>);
    };
    if (ids.dtype() == DType::Int32) launch(ids.data<int32_t>());
    else launch(ids.data<int64_t>());
  });
  check_launch("embedding");
  return {out};
}

Tensors embedding_backward(const Tensors& in, const Attrs& a) {
  cpu::expect_inputs(in, 2, 2, "embedding_backward");  // grad, ids
  const int64_t V = a.i("num_weights");
  LS_CHECK(V >= 0 && V < (int64_t(1) << 31) - 1, ValueError,
           "embedding_backward: num_weights must be in [0, 2^31 - 1), got ", V);
  check_ids(in[1], "embedding_backward");
  LS_CHECK(in[0].dim() >= 1, ValueError, "embedding_backward: grad must have a channel dim");
  Tensor grad = ops::contiguous(in[0]), ids = ops::contiguous(in[1]);
  const int64_t C = grad.size(-1), N = ids.numel();
  LS_CHECK(grad.numel() == N * C, ValueError, "embedding_backward: grad of shape ",
           shape_str(grad.shape()), " does not match ids of shape ", shape_str(ids.shape()),
           " plus C = ", C);
  Tensor dweight = Tensor::empty({V, C}, grad.dtype(), grad.device());
  if (V == 0 || C == 0) return {dweight};
  if (N == 0) {
    ops::fill_(dweight, 0.0);
    return {dweight};
  }
  set_device(grad, "embedding_backward");
  const Device dev = grad.device();
  // 1. the count of each id, the tokens of short rows, the long rows' ids
  // a long row of c > kChunk tokens has ceil(c / kChunk) pieces: at most N / kChunk + N / (kChunk + 1)
  const int64_t max_long = N / (kSlots + 1), max_pieces = N / kChunk + N / (kChunk + 1);
  auto ints = [&](int64_t n) { return Tensor::empty({std::max<int64_t>(n, 1)}, DType::Int32, dev); };
  Tensor count = ints(V + 1);  // count[V]: long_ids_count
  Tensor ticket = ints(N);
  Tensor slots = Tensor::empty({V, kSlots}, DType::Int32, dev);
  Tensor long_ids = ints(max_long);
  int32_t* long_ids_count = count.data<int32_t>() + V;
  cudaStream_t stream = current_stream();
  // The zeroing, the counting and the short rows run as a chain of early launches (launch_early):
  // each kernel's launch overlaps the one before, about 2.5 us of gaps less at V50304 C1280 N65536
  // (bench/notes_cuda_elementwise.md).
  zero_counts_kernel<<<grid_stride_blocks(V + 1, kThreads), kThreads, 0, stream>>>(count.data<int32_t>(), V + 1);
  check_launch("embedding_backward");
  auto count_tokens = [&](auto* pid) {
    launch_early(count_tokens_kernel<std::remove_const_t<std::remove_pointer_t<decltype(pid)>>>,
                 grid_stride_blocks(N, kThreads), kThreads, stream, dev.index, "embedding_backward", pid,
                 count.data<int32_t>(), ticket.data<int32_t>(), slots.data<int32_t>(), long_ids.data<int32_t>(),
                 long_ids_count, N, V);
  };
  if (ids.dtype() == DType::Int32) count_tokens(ids.data<int32_t>());
  else count_tokens(ids.data<int64_t>());
  // Step 3's buffers, allocated here: the side stream joins before anything is freed.
  Tensor seg_start = ints(max_long + 1), piece_start = ints(max_long + 1);
  Tensor piece_row = ints(max_pieces), row_of = ints(V), seg = ints(N);
  // one row per piece, written only for rows of more than kChunk tokens
  Tensor pieces = Tensor::empty({std::max<int64_t>(max_pieces, 1), C},
                                grad.dtype() == DType::Float64 ? DType::Float64 : DType::Float32, dev);
  // Grids of step 3: the host does not know how many long rows there are (at most max_long);
  // blocks stride over them. With uniform ids every block returns at once, but each still takes
  // a place on an SM from the short rows while it reads the long-row count (the side stream has
  // the higher priority): grids of 1024 to 4096 blocks cost about 4 us of the op at V50304 C1280
  // N65536 bf16 on an H100 (a sweep of grid sizes, bench/notes_cuda_elementwise.md). Text-like ids
  // put most bytes on the long rows (at 128 x 1024 tokens, three quarters of the tokens), where
  // the pieces' grid decides the time and the long rows' grid next. With these grids (8, 4, 2 and
  // 2 blocks per SM for the pieces, long rows, sorts and token scatter) and the short rows' changes
  // the uniform case went 0.122 -> 0.115 ms and the text-like one 0.195 -> 0.203 ms
  // (bench/results/nvidia-h100-7488fb2 and nvidia-h100-f4afa74).
  const int64_t sms = sm_count(dev.index, "embedding_backward");
  auto side_blocks = [&](int64_t items, int64_t per_sm) {
    return unsigned(std::clamp<int64_t>(std::min(items, per_sm * sms), 1, int64_t(1) << 20));
  };
  const unsigned piece_blocks = side_blocks(max_pieces, 8), long_blocks = side_blocks(max_long, 4);
  const unsigned sort_blocks = side_blocks(max_long, 2), scatter_blocks = side_blocks(blocks_for(N, kThreads), 2);
  CUDA_DISPATCH_FLOAT(grad.dtype(), "embedding_backward", {
    using T = scalar_t;
    const int W = vectorizable<T>(C, {grad.raw_data(), dweight.raw_data()}) ? kVec<T> : 1;
    const int64_t cp = C / W;
    const int threads = int(std::min<int64_t>(128, (cp + 31) / 32 * 32));
    // a thread per pack up to 256 (GPT-2 large's 1280 bf16 columns: 160), so a short row's
    // loads are all in flight at once
    const int short_threads = int(std::min<int64_t>(256, (cp + 31) / 32 * 32));
    auto* acc = static_cast<acc_t<T>*>(pieces.raw_data());
    auto go = [&](auto short_rows_kernel, auto pieces_kernel, auto long_rows_kernel, auto* pid) {
      using I = std::remove_const_t<std::remove_pointer_t<decltype(pid)>>;
      SideStream side;
      // 2. the short rows, queued first: they need no order
      launch_early(short_rows_kernel, unsigned(V), short_threads, stream, dev.index, "embedding_backward",
                   cptr<T>(grad), count.data<int32_t>(), slots.data<int32_t>(), mptr<T>(dweight), cp);
      if (max_long > 0) {
        // 3a. the long rows' layout
        long_rows_layout_kernel<<<1, kLayoutThreads, 0, side.get()>>>(
            count.data<int32_t>(), long_ids.data<int32_t>(), long_ids_count, seg_start.data<int32_t>(),
            piece_start.data<int32_t>(), piece_row.data<int32_t>(), row_of.data<int32_t>());
        check_launch("embedding_backward");
        // 3b. the tokens of rows of at most kSortMax into their segments
        scatter_long_tokens_kernel<I><<<scatter_blocks, kThreads, 0, side.get()>>>(
            pid, count.data<int32_t>(), ticket.data<int32_t>(), row_of.data<int32_t>(), seg_start.data<int32_t>(),
            long_ids_count, seg.data<int32_t>(), N, V);
        check_launch("embedding_backward");
        // 3c. each segment in increasing positions
        sort_segments_kernel<<<sort_blocks, kSortMax, 0, side.get()>>>(long_ids_count, seg_start.data<int32_t>(),
                                                                        seg.data<int32_t>());
        check_launch("embedding_backward");
        // 3d. the pieces of rows of more than kChunk tokens
        pieces_kernel<<<piece_blocks, threads, 0, side.get()>>>(
            cptr<T>(grad), pid, seg.data<int32_t>(), seg_start.data<int32_t>(), piece_start.data<int32_t>(),
            piece_row.data<int32_t>(), long_ids.data<int32_t>(), long_ids_count, acc, cp, N);
        check_launch("embedding_backward");
        // 3e. the long rows: they write other rows than step 2, so they need not wait for it
        long_rows_kernel<<<long_blocks, threads, 0, side.get()>>>(
            cptr<T>(grad), seg.data<int32_t>(), seg_start.data<int32_t>(), piece_start.data<int32_t>(), acc,
            long_ids.data<int32_t>(), long_ids_count, mptr<T>(dweight), cp);
      }
      side.join();  // (a failed launch is reported by the check after go)
    };
    // 32-bit pack offsets while grad and dweight each hold fewer than 2^32 - 256 packs (a
    // thread's next pack, c + blockDim.x, stays below 2^32 too)
    const bool narrow = std::max(N, V) * cp < (int64_t(1) << 32) - 256;
    auto dispatch = [&](auto* pid) {
      using I = std::remove_const_t<std::remove_pointer_t<decltype(pid)>>;
      constexpr int WV = kVec<T>;
      if (W == 1)
        narrow ? go(embedding_short_rows_kernel<1, uint32_t, T>, embedding_pieces_kernel<1, T, I>,
                    embedding_long_rows_kernel<1, T>, pid)
               : go(embedding_short_rows_kernel<1, int64_t, T>, embedding_pieces_kernel<1, T, I>,
                    embedding_long_rows_kernel<1, T>, pid);
      else
        narrow ? go(embedding_short_rows_kernel<WV, uint32_t, T>, embedding_pieces_kernel<WV, T, I>,
                    embedding_long_rows_kernel<WV, T>, pid)
               : go(embedding_short_rows_kernel<WV, int64_t, T>, embedding_pieces_kernel<WV, T, I>,
                    embedding_long_rows_kernel<WV, T>, pid);
    };
    if (ids.dtype() == DType::Int32) dispatch(ids.data<int32_t>());
    else dispatch(ids.data<int64_t>());
  });
  check_launch("embedding_backward");
  return {dweight};
}

}  // namespace

LS_REGISTER(embedding_cuda) {
  const std::vector<DType> kFloat = {DType::Float32, DType::Float64, DType::BFloat16, DType::Float16};
  register_kernel("embedding", "cuda", embedding_forward, kFloat);
  register_kernel("embedding_backward", "cuda", embedding_backward, kFloat);
}

}  // namespace ls::cuda
