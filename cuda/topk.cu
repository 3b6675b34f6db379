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
//   - k > 8: the row sort of cuda/sort.cu, keeping the first k (no limit on N).
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
      sort_rows(xt, rows, n, k, largest, values, indices, "topk");
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
