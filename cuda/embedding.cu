// Embedding lookup on the GPU and its deterministic backward; float32, float64, bfloat16,
// float16 weights, int32/int64 ids. The math of the CPU reference cpp/ops/embedding.cpp:
//   forward  "embedding" {weight (V, C), ids (N..)} -> out (N.., C),  out[n, :] = weight[ids[n], :]
//   backward "embedding_backward" {grad (N.., C), ids} attr num_weights = V -> dweight (V, C),
//            dweight[v, :] = sum over n with ids[n] == v of grad[n, :], in increasing n (a run of
//            more than kChunk tokens: pieces of up to kChunk summed so, then added in order)
// Forward: a gather; each thread copies one 16-byte pack of a row (scalar elements when C or a
// pointer does not allow packs), so rows stream at copy bandwidth.
// Backward without float atomics, so two runs give identical bits:
//   1. keys[n] = ids[n] (V for an id out of range), vals[n] = n; count[v], the tokens of id v, by
//      int atomics, which also hand each of a row's first kSlots tokens a slot of its own;
//   2. a stable radix sort of (key, n) pairs (cub::DeviceRadixSort over the bits V needs) groups
//      the token positions by id, each group (a run) in increasing n;
//   3. start[v] = first sorted position with key >= v (a binary search per v);
//   4. a run longer than kChunk (a frequent token: real text puts a few percent of all tokens on
//      "," or " the") is cut where the sorted positions cross a multiple of kChunk, and a block
//      per chunk sums the pieces inside it into a float32 (float64) buffer, so that no block walks
//      thousands of tokens alone;
//   5. every vocabulary row v is written whole: the sum of grad[n, :] over its tokens in
//      increasing n (float32 accumulation, float64 for float64), zeros for an id no token has.
//      a. A short row (at most kSlots tokens: nearly all rows of a large vocabulary) takes its
//         tokens from its slots and sorts them in registers.
//      b. A long row sums its run of the sorted positions, or a long run's pieces in chunk order.
// Steps 2-4 are latency-bound (about 50 us at 65536 tokens on an H100) while 5a moves nearly
// all the bytes, so 2-4 and then 5b run on a high-priority side stream beside 5a.
// Step 4 was added for text-like ids: with one block per row only, a run of 600 tokens (3.7% of
// 16384, the most frequent id of a Zipf-like text) was walked by one block, one load in flight
// per thread. Uniform ids have no long runs and step 4's blocks return at once.
// All on the device, no host synchronisation; the temporaries come from the caching allocator:
// the sort's keys and scratch (about 16 bytes a token), the counts and slots (36 bytes a
// vocabulary row: more than dweight itself for a table of a few float32 columns) and the
// pieces' buffer (two rows per chunk: N C / 16 elements, touched only by long runs).
// Limits: N < 2^31 tokens. Ids out of [0, V) cannot raise here without a host round trip: the
// forward writes a row of NaN for them and records an index fault (index_fault.cuh), the CPU op's
// IndexError raised at the next synchronisation (naming a bad position, not always the first);
// the backward ignores them.
#include <cub/device/device_radix_sort.cuh>

#include <type_traits>

#include "core/registry.h"
#include "index_fault.cuh"
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
// sorted in registers; a row of more waits for the sort of all tokens.
constexpr int kSlots = 8;

// keys[n] = ids[n] (V out of range), vals[n] = n; count[v] = tokens of id v (zeroed before);
// slots[v, t] = the t-th token of id v to be counted, t < kSlots (in no particular order); the
// ids of more than kSlots tokens are listed in long_ids, long_ids_count of them (zeroed before).
template <typename I>
__global__ void make_keys_kernel(const I* __restrict__ ids, int32_t* keys, int32_t* vals, int32_t* count,
                                 int32_t* slots, int32_t* long_ids, int32_t* long_ids_count, int64_t N,
                                 int64_t V) {
  for (int64_t n = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; n < N;
       n += int64_t(gridDim.x) * blockDim.x) {
    const int64_t id = int64_t(ids[n]);
    const bool valid = id >= 0 && id < V;
    keys[n] = valid ? int32_t(id) : int32_t(V);
    vals[n] = int32_t(n);
    if (!valid) continue;
    const int t = atomicAdd(&count[id], 1);
    if (t < kSlots) slots[id * kSlots + t] = int32_t(n);
    else if (t == kSlots) long_ids[atomicAdd(long_ids_count, 1)] = int32_t(id);
  }
}

// start[v] = lower_bound(sorted keys, v) for v in 0..V.
__global__ void group_starts_kernel(const int32_t* __restrict__ keys, int64_t N, int64_t V,
                                    int32_t* start) {
  for (int64_t v = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; v <= V;
       v += int64_t(gridDim.x) * blockDim.x) {
    int64_t lo = 0, hi = N;
    while (lo < hi) {
      const int64_t mid = (lo + hi) / 2;
      if (keys[mid] < v) lo = mid + 1;
      else hi = mid;
    }
    start[v] = int32_t(lo);
  }
}

// Tokens per chunk of the sorted positions: a run longer than this is summed in pieces.
constexpr int kChunk = 32;

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

// Block q, for the chunk [q * kChunk, (q + 1) * kChunk) of the sorted positions: the pieces
// inside it of long runs (more than kChunk tokens, so each touches the chunk's first or last
// position): pieces[2q] for the run at the chunk's start, pieces[2q + 1] for one that begins
// inside it. Threads over the row's W-element packs.
template <int W, typename T>
__global__ void embedding_pieces_kernel(const T* __restrict__ grad, const int32_t* __restrict__ keys,
                                        const int32_t* __restrict__ order, const int32_t* __restrict__ start,
                                        acc_t<T>* __restrict__ pieces, int64_t cp, int64_t V) {
  using A = acc_t<T>;
  const int64_t q = blockIdx.x, p0 = q * kChunk, nvalid = start[V];
  if (p0 >= nvalid) return;
  const int64_t p1 = min(p0 + kChunk, nvalid);
  const int32_t first = keys[p0], last = keys[p1 - 1];
  for (int slot = 0; slot < 2; ++slot) {
    const int32_t v = slot == 0 ? first : last;
    const int64_t s = start[v], e = start[v + 1];
    if (e - s <= kChunk || (slot == 1 && s <= p0)) continue;  // short, or the run of slot 0
    const int64_t k0 = max(s, p0), k1 = min(e, p1);
    for (int64_t c = threadIdx.x; c < cp; c += blockDim.x) {
      A acc[W];
#pragma unroll
      for (int j = 0; j < W; ++j) acc[j] = A(0);
      add_rows<8, W>(acc, grad, order, k0, k1, cp, c);  // a piece: kChunk rows, eight loads in flight
      A* piece = pieces + (2 * q + slot) * cp * W + c * W;
#pragma unroll
      for (int j = 0; j < W; ++j) piece[j] = acc[j];
    }
  }
}

// Block v, for a row of at most kSlots tokens: dweight[v, :] = the sum of their gradient rows in
// increasing n, zeros for none. Each thread loads the row's count and slots together (one
// dependent load fewer than a run of sorted positions: count, then start, then order), sorts
// the tokens in registers and sums its packs of their rows, two rows' loads in flight. At most
// 32 registers (the launch bounds; 48 without), so that an SM holds as many rows in flight as
// its threads allow: a row is latency-bound (its count and slots, then its gradient rows).
template <int W, typename T>
__global__ void __launch_bounds__(256, 8)
    embedding_short_rows_kernel(const T* __restrict__ grad, const int32_t* __restrict__ count,
                                const int32_t* __restrict__ slots, T* __restrict__ dweight, int64_t cp) {
  using A = acc_t<T>;
  using P = Pack<T, W>;
  static_assert(kSlots == 8, "the slots load as two int4");
  const int64_t v = blockIdx.x;
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
  for (int64_t c = threadIdx.x; c < cp; c += blockDim.x) {
    A acc[W];
#pragma unroll
    for (int j = 0; j < W; ++j) acc[j] = A(0);
#pragma unroll
    for (int t = 0; t < kSlots; t += 2) {
      if (t >= tokens) break;
      P g0 = reinterpret_cast<const P*>(grad)[int64_t(n[t]) * cp + c], g1;
      if (t + 1 < tokens) g1 = reinterpret_cast<const P*>(grad)[int64_t(n[t + 1]) * cp + c];
#pragma unroll
      for (int j = 0; j < W; ++j) acc[j] += convert<A>(g0.v[j]);
      if (t + 1 < tokens)
#pragma unroll
        for (int j = 0; j < W; ++j) acc[j] += convert<A>(g1.v[j]);
    }
    P out;
#pragma unroll
    for (int j = 0; j < W; ++j) out.v[j] = convert<T>(acc[j]);
    reinterpret_cast<P*>(dweight)[v * cp + c] = out;  // dweight[v, c*W:]
  }
}

// Blocks stride over the rows of more than kSlots tokens (long_ids): dweight[v, :] = the sum of
// grad[order[k], :] over its run [start[v], start[v+1]), or of its pieces when the run is long.
template <int W, typename T>
__global__ void embedding_long_rows_kernel(const T* __restrict__ grad, const int32_t* __restrict__ order,
                                           const int32_t* __restrict__ start, const acc_t<T>* __restrict__ pieces,
                                           const int32_t* __restrict__ long_ids,
                                           const int32_t* __restrict__ long_ids_count, T* __restrict__ dweight,
                                           int64_t cp) {
  using A = acc_t<T>;
  using P = Pack<T, W>;
  const int32_t rows = *long_ids_count;
  for (int32_t b = blockIdx.x; b < rows; b += gridDim.x) {
    const int64_t v = long_ids[b], s = start[v], e = start[v + 1];
    for (int64_t c = threadIdx.x; c < cp; c += blockDim.x) {
      A acc[W];
#pragma unroll
      for (int j = 0; j < W; ++j) acc[j] = A(0);
      if (e - s <= kChunk) {
        add_rows<8, W>(acc, grad, order, s, e, cp, c);  // kSlots + 1 to kChunk rows, eight in flight
      } else {
        for (int64_t q = s / kChunk; q <= (e - 1) / kChunk; ++q) {
          const A* piece = pieces + (2 * q + (s > q * kChunk ? 1 : 0)) * cp * W + c * W;
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
  LS_CHECK(in.size() == 2 && in[0].defined() && in[1].defined(), ValueError,
           "embedding: expected the inputs (weight, ids)");
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
  LS_CHECK(in.size() == 2 && in[0].defined() && in[1].defined(), ValueError,
           "embedding_backward: expected the inputs (grad, ids)");
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
  // 1. keys, positions, the count of each id, the tokens of short rows and the long rows' ids
  const int64_t max_long = N / (kSlots + 1);
  Tensor keys = Tensor::empty({N}, DType::Int32, dev), vals = Tensor::empty({N}, DType::Int32, dev);
  Tensor sorted_keys = Tensor::empty({N}, DType::Int32, dev), order = Tensor::empty({N}, DType::Int32, dev);
  Tensor count = Tensor::empty({V + 1}, DType::Int32, dev);  // count[V]: long_ids_count
  Tensor slots = Tensor::empty({V, kSlots}, DType::Int32, dev);
  Tensor long_ids = Tensor::empty({std::max<int64_t>(max_long, 1)}, DType::Int32, dev);
  int32_t* long_ids_count = count.data<int32_t>() + V;
  cudaStream_t stream = current_stream();
  check(cudaMemsetAsync(count.raw_data(), 0, size_t(V + 1) * sizeof(int32_t), stream), "embedding_backward");
  auto make_keys = [&](auto* pid) {
    make_keys_kernel<<<grid_stride_blocks(N, kThreads), kThreads, 0, stream>>>(
        pid, keys.data<int32_t>(), vals.data<int32_t>(), count.data<int32_t>(), slots.data<int32_t>(),
        long_ids.data<int32_t>(), long_ids_count, N, V);
  };
  if (ids.dtype() == DType::Int32) make_keys(ids.data<int32_t>());
  else make_keys(ids.data<int64_t>());
  check_launch("embedding_backward");
  // Scratch of steps 2-4, allocated here: the side stream joins before anything is freed.
  int end_bit = 1;
  while ((int64_t(1) << end_bit) <= V) ++end_bit;
  size_t scratch_bytes = 0;
  check(cub::DeviceRadixSort::SortPairs(nullptr, scratch_bytes, keys.data<int32_t>(), sorted_keys.data<int32_t>(),
                                        vals.data<int32_t>(), order.data<int32_t>(), int(N), 0, end_bit, stream),
        "embedding_backward");
  Tensor scratch = Tensor::empty({int64_t(std::max<size_t>(scratch_bytes, 1))}, DType::UInt8, dev);
  Tensor start = Tensor::empty({V + 1}, DType::Int32, dev);
  const int64_t chunks = (N + kChunk - 1) / kChunk;
  // 2 rows per chunk, written only where a run is longer than kChunk
  Tensor pieces = Tensor::empty({2 * chunks, C}, grad.dtype() == DType::Float64 ? DType::Float64 : DType::Float32, dev);
  CUDA_DISPATCH_FLOAT(grad.dtype(), "embedding_backward", {
    using T = scalar_t;
    const int W = vectorizable<T>(C, {grad.raw_data(), dweight.raw_data()}) ? kVec<T> : 1;
    const int64_t cp = C / W;
    const int threads = int(std::min<int64_t>(128, (cp + 31) / 32 * 32));
    // a thread per pack up to 256 (GPT-2 large's 1280 bf16 columns: 160), so a short row's
    // loads are all in flight at once
    const int short_threads = int(std::min<int64_t>(256, (cp + 31) / 32 * 32));
    auto* acc = static_cast<acc_t<T>*>(pieces.raw_data());
    auto go = [&](auto short_rows_kernel, auto pieces_kernel, auto long_rows_kernel) {
      SideStream side;
      // 5a. the short rows, queued first: they need no order
      short_rows_kernel<<<unsigned(V), short_threads, 0, stream>>>(cptr<T>(grad), count.data<int32_t>(),
                                                             slots.data<int32_t>(), mptr<T>(dweight), cp);
      check_launch("embedding_backward");
      // 2. stable sort by key over the bits that hold 0..V
      check(cub::DeviceRadixSort::SortPairs(scratch.raw_data(), scratch_bytes, keys.data<int32_t>(),
                                            sorted_keys.data<int32_t>(), vals.data<int32_t>(),
                                            order.data<int32_t>(), int(N), 0, end_bit, side.get()),
            "embedding_backward");
      // 3. group boundaries
      group_starts_kernel<<<grid_stride_blocks(V + 1, kThreads), kThreads, 0, side.get()>>>(
          sorted_keys.data<int32_t>(), N, V, start.data<int32_t>());
      check_launch("embedding_backward");
      // 4. pieces of long runs
      pieces_kernel<<<unsigned(chunks), threads, 0, side.get()>>>(cptr<T>(grad), sorted_keys.data<int32_t>(),
                                                            order.data<int32_t>(), start.data<int32_t>(), acc, cp, V);
      check_launch("embedding_backward");
      // 5b. the long rows, on the side stream too: they write other rows than 5a, so they need
      // not wait for it (queued behind it on the op's stream, they were a tail of 2-6 us)
      if (max_long > 0)
        long_rows_kernel<<<unsigned(std::min<int64_t>(max_long, 1024)), threads, 0, side.get()>>>(
            cptr<T>(grad), order.data<int32_t>(), start.data<int32_t>(), acc, long_ids.data<int32_t>(),
            long_ids_count, mptr<T>(dweight), cp);
      side.join();  // (a failed launch is reported by the check after go)
    };
    constexpr int WV = kVec<T>;
    if (W == 1) go(embedding_short_rows_kernel<1, T>, embedding_pieces_kernel<1, T>, embedding_long_rows_kernel<1, T>);
    else go(embedding_short_rows_kernel<WV, T>, embedding_pieces_kernel<WV, T>, embedding_long_rows_kernel<WV, T>);
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
