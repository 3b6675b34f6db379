// topk: the k largest (or smallest) entries along one dimension, sorted, with their int64
// positions (cpp/ops/topk.cpp).
//
//   x (A..., N, B...), 0 <= k <= N -> values, indices (A..., k, B...); largest first (smallest
//   first when largest=false), ties to the lower position, NaN the largest value. d x: the CPU
//   op's backward (scatter_add of g to the positions), which runs on the GPU through the registry.
//
// Kernel: x is made dense with `dim` last. Each element becomes an Item (order key, position)
// (cuda/order_keys.cuh) so that "the k smallest Items" is exactly the CPU's answer.
//   - k <= 8 (routing: top-1/top-2 of E experts, sampling): each lane keeps its own sorted top-8
//     in registers while it strides over the row; then k rounds of a warp-wide minimum pick the
//     winners, the lane that owned each winner dropping it. A row takes one warp (N <= 2048) or
//     the 8 warps of a block, whose 8 lists are merged the same way by the row's first warp.
//   - 8 < k and the k Items fit 32 KiB of shared memory (k <= 4096 Items of 8 bytes, 2048 of 16):
//     a block per row finds the k-th smallest Item by radix select, 8 bits a pass: a histogram
//     of the next digit of the keys that match the digits found so far, then the bucket where
//     the count reaches k. The key's digits come first, then (only when the k-th key is tied and
//     not all of its ties are taken) the position's. It stops at the first bucket taken whole.
//     One more pass gathers the k Items up to that threshold, which a bitonic network in shared
//     memory puts in order. Each pass rereads the row (from L2 for rows of a few thousand).
//   - larger k: the row sort of cuda/sort.cu, keeping the first k (no limit on N).
#include <algorithm>

#include "core/registry.h"
#include "elementwise.cuh"
#include "ops/op_args.h"
#include "ops/ops.h"
#include "order_keys.cuh"
#include "sort.cuh"

namespace ls::cuda {

namespace {

constexpr int kMaxSmallK = 8;

template <typename K>
__device__ __forceinline__ Item<K> shfl_xor_item(Item<K> v, int mask) {
  if constexpr (sizeof(K) == 8)
    v.key = K(__shfl_xor_sync(0xffffffffu, (unsigned long long)v.key, mask));
  else
    v.key = K(__shfl_xor_sync(0xffffffffu, (unsigned)v.key, mask));
  v.pos = __shfl_xor_sync(0xffffffffu, v.pos, mask);
  return v;
}

// Inserts `it` into the ascending list `best` (length kMaxSmallK), dropping the largest.
template <typename K>
__device__ __forceinline__ void insert(Item<K> (&best)[kMaxSmallK], const Item<K>& it) {
#pragma unroll
  for (int s = kMaxSmallK - 1; s > 0; --s)
    if (item_less(it, best[s])) best[s] = item_less(it, best[s - 1]) ? best[s - 1] : it;
  if (item_less(it, best[0])) best[0] = it;
}

// k rounds over the warp: each round the smallest head among the lanes wins, is handed to
// emit(r, item) on every lane, and leaves its owner's list.
template <typename K, typename Emit>
__device__ __forceinline__ void warp_select(Item<K> (&best)[kMaxSmallK], int k, Emit emit) {
  for (int r = 0; r < k; ++r) {
    Item<K> m = best[0];
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
      Item<K> o = shfl_xor_item(m, off);
      if (item_less(o, m)) m = o;
    }
    emit(r, m);
    if (best[0].key == m.key && best[0].pos == m.pos) {  // this lane owned the winner
#pragma unroll
      for (int s = 0; s < kMaxSmallK - 1; ++s) best[s] = best[s + 1];
      best[kMaxSmallK - 1] = item_sentinel<K>();
    }
  }
}

// Blocks of 256 threads; kWarpsPerRow warps per row (1 or 8), so 8 / kWarpsPerRow rows a block.
template <typename T, int kWarpsPerRow>
__global__ void topk_small_kernel(const T* __restrict__ x, T* __restrict__ values,
                                  int64_t* __restrict__ indices, int64_t rows, int64_t n, int k,
                                  bool descending) {
  using K = key_t<T>;
  __shared__ Item<K> lists[8][kMaxSmallK];  // one list per warp (merge of a multi-warp row)
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t row = int64_t(blockIdx.x) * (8 / kWarpsPerRow) + warp / kWarpsPerRow;
  const int wr = warp % kWarpsPerRow;  // this warp's part of the row
  Item<K> best[kMaxSmallK];
#pragma unroll
  for (int s = 0; s < kMaxSmallK; ++s) best[s] = item_sentinel<K>();
  if (row < rows) {
    const T* xr = x + row * n;  // xr points at x[row, :]
    for (int64_t c = int64_t(wr) * 32 + lane; c < n; c += 32 * kWarpsPerRow)
      insert(best, Item<K>{order_key(xr[c], descending), uint32_t(c)});
  }
  auto write_out = [&](int r, const Item<K>& m) {
    if (lane == 0 && row < rows) {
      values[row * k + r] = x[row * n + m.pos];
      indices[row * k + r] = int64_t(m.pos);
    }
  };
  if constexpr (kWarpsPerRow == 1) {
    warp_select(best, k, write_out);
  } else {
    warp_select(best, k, [&](int r, const Item<K>& m) {
      if (lane == 0) lists[warp][r] = m;
    });
    __syncthreads();
    if (wr == 0) {  // lane l < 8 takes the list of the row's warp l
#pragma unroll
      for (int s = 0; s < kMaxSmallK; ++s)
        best[s] = lane < kWarpsPerRow && s < k ? lists[warp + lane][s] : item_sentinel<K>();
      warp_select(best, k, write_out);
    }
  }
}

constexpr int64_t kSelectBytes = 32768;  // shared memory for the k Items of the select kernel
constexpr int kDigitBits = 8, kBins = 1 << kDigitBits;

// The digit of a radix-select pass: among the bins (counts of the candidates by their next digit,
// ascending), the bin where the running count reaches `want`. Warp 0 only (8 bins a lane); it
// writes the bin, the candidates before it and the candidates in it.
__device__ __forceinline__ void find_digit(const uint32_t* hist, uint32_t want, uint32_t* digit,
                                           uint32_t* before, uint32_t* inside) {
  const int lane = threadIdx.x;
  uint32_t c[kBins / 32], sum = 0;
#pragma unroll
  for (int j = 0; j < kBins / 32; ++j) sum += c[j] = hist[lane * (kBins / 32) + j];
  uint32_t incl = sum;  // inclusive scan over the lanes
#pragma unroll
  for (int off = 1; off < 32; off <<= 1) {
    const uint32_t y = __shfl_up_sync(0xffffffffu, incl, off);
    if (lane >= off) incl += y;
  }
  uint32_t acc = incl - sum;
  if (acc < want && want <= incl) {  // exactly one lane
#pragma unroll
    for (int j = 0; j < kBins / 32; ++j) {
      if (acc + c[j] >= want) {
        *digit = uint32_t(lane * (kBins / 32) + j);
        *before = acc;
        *inside = c[j];
        break;
      }
      acc += c[j];
    }
  }
}

// Block per row of x (rows, n): values, indices (rows, k) = the k smallest Items of the row in
// order; kpad = the power of two >= k, Items in dynamic shared memory; pos_bits = the bits of n - 1.
template <typename T>
__global__ void __launch_bounds__(1024) topk_select_kernel(const T* __restrict__ x, T* __restrict__ values,
                                   int64_t* __restrict__ indices, int64_t n, int k, int kpad,
                                   int pos_bits, bool descending) {
  using K = key_t<T>;
  extern __shared__ unsigned char smem_raw[];
  Item<K>* chosen = reinterpret_cast<Item<K>*>(smem_raw);
  __shared__ uint32_t hist[kBins];
  __shared__ uint32_t s_digit, s_before, s_inside, s_count;
  const T* xr = x + int64_t(blockIdx.x) * n;  // xr points at x[row, :]
  // The threshold Item (key_prefix | ~key_mask, pos_prefix | ~pos_mask) once every digit is
  // found or a bucket is taken whole; `want` counts the Items still to take among the candidates
  // (the Items whose found digits match).
  // The position's bits above its digits are 0 for every position: known from the start.
  const int pos_width = (pos_bits + kDigitBits - 1) / kDigitBits * kDigitBits;
  K key_prefix = 0, key_mask = 0;
  uint32_t pos_prefix = 0, pos_mask = pos_width >= 32 ? 0u : ~((1u << pos_width) - 1u), want = uint32_t(k);
  bool done = false;
  for (int stage = 0; stage < 2 && !done; ++stage) {  // 0: the key's digits, 1: the position's
    const int width = stage == 0 ? int(8 * sizeof(K)) : pos_width;
    for (int shift = width - kDigitBits; shift >= 0 && !done;
         shift -= kDigitBits) {
      for (int i = threadIdx.x; i < kBins; i += blockDim.x) hist[i] = 0;
      __syncthreads();
      for (int64_t c = threadIdx.x; c < n; c += blockDim.x) {
        const K key = order_key(xr[c], descending);
        if ((key & key_mask) != key_prefix) continue;
        if (stage == 0) atomicAdd(&hist[uint32_t(key >> shift) & (kBins - 1)], 1u);
        else if ((uint32_t(c) & pos_mask) == pos_prefix) atomicAdd(&hist[(uint32_t(c) >> shift) & (kBins - 1)], 1u);
      }
      __syncthreads();
      if (threadIdx.x < 32) find_digit(hist, want, &s_digit, &s_before, &s_inside);
      __syncthreads();
      want -= s_before;
      if (stage == 0) {
        key_prefix |= K(s_digit) << shift;
        key_mask |= K(kBins - 1) << shift;
      } else {
        pos_prefix |= s_digit << shift;
        pos_mask |= uint32_t(kBins - 1) << shift;
      }
      done = s_inside == want;  // the bucket is taken whole: its lower digits do not matter
    }
  }
  const K key_last = key_prefix | K(~key_mask);
  const uint32_t pos_last = pos_prefix | ~pos_mask;
  for (int i = threadIdx.x; i < kpad; i += blockDim.x) chosen[i] = item_sentinel<K>();
  if (threadIdx.x == 0) s_count = 0;
  __syncthreads();
  for (int64_t c = threadIdx.x; c < n; c += blockDim.x) {  // exactly k Items are up to the threshold
    const K key = order_key(xr[c], descending);
    if (key < key_last || (key == key_last && uint32_t(c) <= pos_last)) {
      const uint32_t slot = atomicAdd(&s_count, 1u);
      if (slot < uint32_t(kpad)) chosen[slot] = Item<K>{key, uint32_t(c)};
    }
  }
  __syncthreads();
  bitonic_stages(chosen, kpad, 0, kpad, 2, kpad, 1);  // the whole network: ascending
  const int64_t row = blockIdx.x;
  for (int j = threadIdx.x; j < k; j += blockDim.x) {
    const uint32_t p = chosen[j].pos;
    values[row * k + j] = xr[p];
    indices[row * k + j] = int64_t(p);
  }
}

Tensors topk_cuda(const Tensors& in, const Attrs& a) {
  const int64_t dim = ops::check_topk_args(in, a);
  const Tensor& x = in[0];
  const int64_t k = a.i("k");
  const bool largest = a.b("largest", true);
  const int64_t n = x.dim() ? x.shape()[dim] : 1;
  const int64_t last = std::max<int64_t>(x.dim(), 1) - 1;
  Tensor xt = ops::contiguous(x.dim() ? ops::transpose(x, dim, last) : ops::reshape(x, {1}));
  Shape shape = xt.shape();
  shape.back() = k;
  Tensor values = Tensor::empty(shape, x.dtype(), x.device());
  Tensor indices = Tensor::empty(shape, DType::Int64, x.device());
  if (values.numel() > 0) {
    const int64_t rows = xt.numel() / n;
    set_device(x, "topk");
    if (k <= kMaxSmallK) {
      LS_CHECK(n < int64_t(0xFFFFFFFFu), NotImplementedError, "topk: rows of ", n,
               " elements are not supported on CUDA (at most 2^32 - 2)");
      CUDA_DISPATCH_ALL(x.dtype(), "topk", {
        const scalar_t* px = static_cast<const scalar_t*>(xt.raw_data());
        scalar_t* pv = static_cast<scalar_t*>(values.raw_data());
        if (n <= 2048)
          topk_small_kernel<scalar_t, 1><<<unsigned((rows + 7) / 8), 256, 0, current_stream()>>>(
              px, pv, indices.data<int64_t>(), rows, n, int(k), largest);
        else
          topk_small_kernel<scalar_t, 8><<<unsigned(rows), 256, 0, current_stream()>>>(
              px, pv, indices.data<int64_t>(), rows, n, int(k), largest);
      });
      check_launch("topk");
    } else {
      CUDA_DISPATCH_ALL(x.dtype(), "topk", {
        using K = key_t<scalar_t>;
        const int kpad = int(pow2_ceil(k));
        int pos_bits = 0;
        while ((int64_t(1) << pos_bits) < n) ++pos_bits;  // the bits of n - 1
        const size_t smem = size_t(kpad) * sizeof(Item<K>);
        if (int64_t(smem) <= kSelectBytes && rows < (int64_t(1) << 31) && n < int64_t(0xFFFFFFFFu)) {
          // long rows (a vocabulary) take 1024 threads: few rows leave most SMs idle otherwise
          const int threads = int(std::clamp<int64_t>((n + 31) / 32 * 32, 32, n >= 16384 ? 1024 : 256));
          topk_select_kernel<scalar_t><<<unsigned(rows), threads, smem, current_stream()>>>(
              static_cast<const scalar_t*>(xt.raw_data()), static_cast<scalar_t*>(values.raw_data()),
              indices.data<int64_t>(), n, int(k), kpad, pos_bits, largest);
          check_launch("topk");
        } else {
          sort_rows(xt, rows, n, k, largest, values, indices, "topk");
        }
      });
    }
  }
  if (x.dim() == 0) {
    Shape s = k == 1 ? Shape{} : Shape{0};
    return {ops::reshape(values, s), ops::reshape(indices, s)};
  }
  return {ops::contiguous(ops::transpose(values, dim, last)),
          ops::contiguous(ops::transpose(indices, dim, last))};
}

}  // namespace

LS_REGISTER(topk_cuda) { register_kernel("topk", "cuda", topk_cuda); }

}  // namespace ls::cuda
