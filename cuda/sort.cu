// sort: a stable sort along one dimension on the GPU, values and int64 positions (cpp/ops/sort.cpp).
//
//   x (A..., N, B...) -> values, indices (A..., N, B...);
//   values[a, j, b] = x[a, indices[a, j, b], b], ascending (descending=true: descending), equal
//   values in their original order, NaN the largest value. d x: the CPU op's backward
//   (scatter_add of g through the indices), which runs on the GPU through the registry.
//
// Kernel: x is made dense with `dim` last, so each row of N values is one problem. Every element
// becomes an Item (order key, position) (cuda/order_keys.cuh): (key, position) is a strict total
// order, so a bitonic network, which is not stable by itself, yields exactly the stable order.
// Rows are padded to P = the next power of two with sentinel Items that sort last.
//   - 256 < P <= 4096 and 32-bit keys (every dtype but float64 and int64): a block per row radix
//     sorts (cub::BlockRadixSort, 4 bits a pass) one 64-bit word per element, the order key above
//     the position, so equal keys come out in position order (the bitonic network over such rows
//     took log2 P (log2 P + 1) / 2 shared-memory steps, each behind a barrier: 0.20-0.42x torch
//     at 16384 x 1024);
//   - else P <= a tile (4096 Items of 8 bytes, 2048 of 16 bytes: 32 KiB of shared memory): one launch;
//     a block loads a tile of whole rows straight from x, runs the full network in shared memory
//     and writes values and indices (short rows pack many to a tile).
//   - longer rows: Items go to a global scratch buffer (rows * P Items); tiles are first sorted in
//     shared memory, then each merge stage k = 2 tile .. P runs its steps of stride >= tile as
//     global compare-exchange passes and the remaining strides in one shared-memory launch; the
//     last launch writes the outputs. Any N below 2^32 is served; the cost is O(N log^2 N) with
//     log^2(P / tile) / 2 global passes, and the scratch takes 8 or 16 bytes per padded element.
// topk with a k too large for its select kernel (cuda/topk.cu) uses the same routine and keeps
// the first k of each row (sort_rows).
#include <algorithm>

#include <cub/block/block_radix_sort.cuh>

#include "core/registry.h"
#include "elementwise.cuh"
#include "ops/ops.h"
#include "order_keys.cuh"
#include "sort.cuh"

namespace ls::cuda {

namespace {

constexpr int64_t kTileBytes = 32768;
constexpr int kMaxTileThreads = 1024;

template <typename K> constexpr int64_t tile_items() { return kTileBytes / int64_t(sizeof(Item<K>)); }

// A tile of `tile` Items (global positions base .. base + tile) in shared memory. Runs the stages
// k = k_first .. k_last (powers of two), the first of them from stride j_first, the others from
// k / 2, down to stride 1. kFromX: build the Items from x; else read the scratch. kToOut: write
// the first k_out of each row to values/indices; else write the scratch back.
template <typename T, typename K, bool kFromX, bool kToOut>
__global__ void __launch_bounds__(kMaxTileThreads)
bitonic_tile_kernel(const T* __restrict__ x, Item<K>* items, T* values, int64_t* indices,
                    int64_t n, int64_t P, int64_t total, int64_t k_out, int tile, int64_t k_first,
                    int64_t k_last, int64_t j_first, bool descending) {
  extern __shared__ unsigned char smem_raw[];
  Item<K>* s = reinterpret_cast<Item<K>*>(smem_raw);
  const int64_t base = int64_t(blockIdx.x) * tile;
  for (int t = threadIdx.x; t < tile; t += blockDim.x) {
    int64_t g = base + t;
    Item<K> it = item_sentinel<K>();
    if (g < total) {
      if constexpr (kFromX) {
        int64_t row = g / P, pos = g % P;
        if (pos < n) it = Item<K>{order_key(x[row * n + pos], descending), uint32_t(pos)};
      } else {
        it = items[g];
      }
    }
    s[t] = it;
  }
  __syncthreads();
  bitonic_stages(s, tile, base, P, k_first, k_last, j_first);  // the last stage: all ascending
  for (int t = threadIdx.x; t < tile; t += blockDim.x) {
    int64_t g = base + t;
    if (g >= total) continue;
    if constexpr (kToOut) {
      int64_t row = g / P, pos = g % P;
      if (pos < k_out) {  // values[row, pos] = x[row, position of the pos-th item]
        uint32_t p = s[t].pos;
        values[row * k_out + pos] = x[row * n + p];
        indices[row * k_out + pos] = int64_t(p);
      }
    } else {
      items[g] = s[t];
    }
  }
}

// One global step (stride j >= tile) of stage k over all rows' padded Items.
template <typename K>
__global__ void bitonic_global_kernel(Item<K>* items, int64_t pairs, int64_t P, int64_t k, int64_t j) {
  for (int64_t q = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; q < pairs;
       q += int64_t(gridDim.x) * blockDim.x) {
    int64_t i = 2 * j * (q / j) + q % j;
    Item<K> a = items[i], b = items[i + j];
    if (item_less(b, a) == (((i % P) & k) == 0)) {
      items[i] = b;
      items[i + j] = a;
    }
  }
}

constexpr int kRadixThreads = 256;

// Low bits of T's 32-bit order key that carry no order: bfloat16 and float16 widen exactly to
// float32, whose last 16 and 13 mantissa bits are then all 0 (all 1 once inverted), so the radix
// sort skips them (bf16: 7 passes of 4 bits instead of 11 at n = 1024).
template <typename T>
constexpr int kDeadKeyBits = std::is_same_v<T, __nv_bfloat16> ? 16 : std::is_same_v<T, __half> ? 13 : 0;

// Block per row of x (rows, n), n <= kRadixThreads * kItems = P = 2^pos_bits: the first k_out of
// the row in order. The word (key << pos_bits | position) is unique, so the load order does not
// matter (coalesced here) and padding words (all ones) sort last.
template <typename T, int kItems>
__global__ void __launch_bounds__(kRadixThreads)
radix_rows_kernel(const T* __restrict__ x, T* __restrict__ values, int64_t* __restrict__ indices,
                  int64_t n, int64_t k_out, int pos_bits, bool descending) {
  using Sort = cub::BlockRadixSort<uint64_t, kRadixThreads, kItems>;
  __shared__ typename Sort::TempStorage temp;
  const int64_t row = blockIdx.x;
  const T* xr = x + row * n;  // xr points at x[row, :]
  uint64_t words[kItems];
#pragma unroll
  for (int i = 0; i < kItems; ++i) {
    const int64_t p = int64_t(i) * kRadixThreads + threadIdx.x;
    words[i] = p < n ? uint64_t(order_key(xr[p], descending) >> kDeadKeyBits<T>) << pos_bits | uint64_t(p)
                     : ~uint64_t(0);
  }
  Sort(temp).SortBlockedToStriped(words, 0, 32 - kDeadKeyBits<T> + pos_bits);
  const uint64_t pos_mask = (uint64_t(1) << pos_bits) - 1;
#pragma unroll
  for (int i = 0; i < kItems; ++i) {
    const int64_t j = int64_t(i) * kRadixThreads + threadIdx.x;  // striped: coalesced stores
    if (j < k_out) {
      const int64_t p = int64_t(words[i] & pos_mask);
      values[row * k_out + j] = xr[p];
      indices[row * k_out + j] = p;
    }
  }
}

template <typename T>
void sort_rows_typed(const Tensor& x, int64_t rows, int64_t n, int64_t k_out, bool descending,
                     const Tensor& values, const Tensor& indices, const char* op) {
  using K = key_t<T>;
  const T* px = static_cast<const T*>(x.raw_data());
  T* pv = static_cast<T*>(values.raw_data());
  int64_t* pi = indices.data<int64_t>();
  const int64_t P = pow2_ceil(n), S = tile_items<K>(), total = rows * P;
  if constexpr (sizeof(K) == 4) {
    if (P > kRadixThreads && P <= 16 * kRadixThreads && rows < (int64_t(1) << 31)) {
      int pos_bits = 0;
      while ((int64_t(1) << pos_bits) < P) ++pos_bits;
      auto go = [&](auto kernel) {
        kernel<<<unsigned(rows), kRadixThreads, 0, current_stream()>>>(px, pv, pi, n, k_out, pos_bits, descending);
      };
      switch (P / kRadixThreads) {
        case 2: go(radix_rows_kernel<T, 2>); break;
        case 4: go(radix_rows_kernel<T, 4>); break;
        case 8: go(radix_rows_kernel<T, 8>); break;
        default: go(radix_rows_kernel<T, 16>); break;
      }
      check_launch(op);
      return;
    }
  }
  auto threads_for = [](int64_t tile) { return int(std::clamp<int64_t>(tile / 2, 32, kMaxTileThreads)); };
  if (P <= S) {  // whole rows in one tile: one launch
    int64_t tile = std::min(S, pow2_ceil(total));
    size_t smem = size_t(tile) * sizeof(Item<K>);
    bitonic_tile_kernel<T, K, true, true><<<unsigned((total + tile - 1) / tile), threads_for(tile), smem, current_stream()>>>(
        px, nullptr, pv, pi, n, P, total, k_out, int(tile), 2, P, 1, descending);
    check_launch(op);
    return;
  }
  Tensor scratch = Tensor::empty({total * int64_t(sizeof(Item<K>))}, DType::UInt8, x.device());
  Item<K>* items = static_cast<Item<K>*>(scratch.raw_data());
  const unsigned blocks = unsigned(total / S);  // P and S are powers of two, P > S
  const size_t smem = size_t(S) * sizeof(Item<K>);
  bitonic_tile_kernel<T, K, true, false><<<blocks, threads_for(S), smem, current_stream()>>>(
      px, items, nullptr, nullptr, n, P, total, k_out, int(S), 2, S, 1, descending);
  check_launch(op);
  for (int64_t k = 2 * S; k <= P; k <<= 1) {
    for (int64_t j = k / 2; j >= S; j >>= 1) {
      bitonic_global_kernel<K><<<grid_for(total / 2), kThreads, 0, current_stream()>>>(items, total / 2, P, k, j);
      check_launch(op);
    }
    if (k < P) {
      bitonic_tile_kernel<T, K, false, false><<<blocks, threads_for(S), smem, current_stream()>>>(
          px, items, nullptr, nullptr, n, P, total, k_out, int(S), k, k, S / 2, descending);
    } else {
      bitonic_tile_kernel<T, K, false, true><<<blocks, threads_for(S), smem, current_stream()>>>(
          px, items, pv, pi, n, P, total, k_out, int(S), k, k, S / 2, descending);
    }
    check_launch(op);
  }
}

Tensors sort_cuda(const Tensors& in, const Attrs& a) {
  LS_CHECK(in.size() == 1 && in[0].defined(), TypeError, "sort: expected one input tensor, got ",
           in.size());
  const Tensor& x = in[0];
  bool descending = a.b("descending", false);
  int64_t dim = wrap_dim(a.i("dim", -1), x.dim(), "sort");
  const int64_t last = std::max<int64_t>(x.dim(), 1) - 1;
  Tensor xt = ops::contiguous(x.dim() ? ops::transpose(x, dim, last) : ops::reshape(x, {1}));
  const int64_t n = xt.shape().back();
  Tensor values = Tensor::empty(xt.shape(), x.dtype(), x.device());
  Tensor indices = Tensor::empty(xt.shape(), DType::Int64, x.device());
  if (values.numel() > 0)
    sort_rows(xt, xt.numel() / n, n, n, descending, values, indices, "sort");
  if (x.dim() == 0) return {ops::reshape(values, {}), ops::reshape(indices, {})};
  return {ops::contiguous(ops::transpose(values, dim, last)),
          ops::contiguous(ops::transpose(indices, dim, last))};
}

}  // namespace

void sort_rows(const Tensor& x, int64_t rows, int64_t n, int64_t k_out, bool descending,
               const Tensor& values, const Tensor& indices, const char* op) {
  LS_CHECK(n < int64_t(0xFFFFFFFFu), NotImplementedError, op, ": rows of ", n,
           " elements are not supported on CUDA (at most 2^32 - 2)");
  set_device(x, op);
  CUDA_DISPATCH_ALL(x.dtype(), op, {
    sort_rows_typed<scalar_t>(x, rows, n, k_out, descending, values, indices, op);
  });
}

LS_REGISTER(sort_cuda) { register_kernel("sort", "cuda", sort_cuda); }

}  // namespace ls::cuda
