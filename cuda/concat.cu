// cat on the GPU (cpp/ops/concat.cpp; stack and split are views or calls of cat, registered for
// every device there).
//
//   xs[i] (A..., N_i, B...) -> out (A..., sum_i N_i, B...), out[a, off_i + n, b] = xs[i][a, n, b]
//   d xs[i] = a slice of g (the CPU op's backward, a view).
//
// Kernel: out is viewed as (outer, out_row) rows with out_row = (sum_i N_i) * inner, and each
// dense input as (outer, len_i) rows, len_i = N_i * inner, landing at column off_i of every output
// row. One launch copies up to 32 inputs (blockIdx.y picks the input), in the widest unit of
// 16/8/4/2/1 bytes that divides every length, offset and row and keeps the pointers aligned, so
// typical activations move as 16-byte vectors. An input that is not dense is written by the
// strided copy kernel straight into its slice of out (no temporary), as on the CPU.
#include <algorithm>

#include "core/registry.h"
#include "elementwise.cuh"
#include "ops/ops.h"

namespace ls::cuda {

namespace {

constexpr int kMaxPieces = 32;

struct Pieces {
  const void* src[kMaxPieces];
  int64_t offset[kMaxPieces];  // column of out's rows where this input starts, in units
  int64_t len[kMaxPieces];     // units per row of this input
};

template <typename U>
__global__ void cat_kernel(U* __restrict__ out, Pieces p, int64_t outer, int64_t out_row) {
  const int piece = blockIdx.y;
  const U* __restrict__ src = static_cast<const U*>(p.src[piece]);
  const int64_t len = p.len[piece], off = p.offset[piece], total = outer * len;
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < total;
       e += int64_t(gridDim.x) * blockDim.x) {
    int64_t r = e / len, c = e - r * len;
    out[r * out_row + off + c] = src[e];  // out[r, off_i + c] = xs[i][r, c]
  }
}

struct Dense { const void* src; int64_t offset, len; };  // in bytes

void launch_pieces(const Tensor& out, const std::vector<Dense>& dense, int64_t outer,
                   int64_t row_bytes) {
  uintptr_t align = reinterpret_cast<uintptr_t>(out.raw_data()) | uintptr_t(row_bytes);
  for (const Dense& d : dense)
    align |= reinterpret_cast<uintptr_t>(d.src) | uintptr_t(d.offset) | uintptr_t(d.len);
  int unit = 16;
  while (unit > 1 && align % unit != 0) unit /= 2;
  for (size_t b = 0; b < dense.size(); b += kMaxPieces) {
    Pieces p{};
    const int count = int(std::min<size_t>(kMaxPieces, dense.size() - b));
    int64_t longest = 0;
    for (int i = 0; i < count; ++i) {
      p.src[i] = dense[b + i].src;
      p.offset[i] = dense[b + i].offset / unit;
      p.len[i] = dense[b + i].len / unit;
      longest = std::max(longest, outer * p.len[i]);
    }
    dim3 grid(grid_for(longest), unsigned(count));
    switch (unit) {
      case 16: cat_kernel<uint4><<<grid, kThreads, 0, current_stream()>>>(static_cast<uint4*>(out.raw_data()), p, outer, row_bytes / 16); break;
      case 8: cat_kernel<uint2><<<grid, kThreads, 0, current_stream()>>>(static_cast<uint2*>(out.raw_data()), p, outer, row_bytes / 8); break;
      case 4: cat_kernel<uint32_t><<<grid, kThreads, 0, current_stream()>>>(static_cast<uint32_t*>(out.raw_data()), p, outer, row_bytes / 4); break;
      case 2: cat_kernel<uint16_t><<<grid, kThreads, 0, current_stream()>>>(static_cast<uint16_t*>(out.raw_data()), p, outer, row_bytes / 2); break;
      default: cat_kernel<uint8_t><<<grid, kThreads, 0, current_stream()>>>(static_cast<uint8_t*>(out.raw_data()), p, outer, row_bytes); break;
    }
    check_launch("cat");
  }
}

Tensors cat_cuda(const Tensors& xs, const Attrs& a) {
  int64_t dim = a.i("dim", 0);
  Shape shape = ops::cat_shape(xs, dim);
  Tensor out = Tensor::empty(shape, xs[0].dtype(), xs[0].device());
  if (out.numel() == 0) return {out};
  set_device(out, "cat");
  int64_t outer = 1, inner = 1;
  for (int64_t d = 0; d < dim; ++d) outer *= shape[d];
  for (int64_t d = dim + 1; d < int64_t(shape.size()); ++d) inner *= shape[d];
  const int64_t isz = int64_t(itemsize(out.dtype()));
  std::vector<Dense> dense;
  int64_t off = 0;  // elements within an output row
  for (const Tensor& x : xs) {
    if (x.dim() == 1 && x.shape()[0] == 0) continue;  // skipped, as on the CPU
    const int64_t len = x.shape()[dim] * inner;
    if (len > 0) {
      if (x.is_contiguous())
        dense.push_back({x.raw_data(), off * isz, len * isz});
      else
        ops::copy_(ops::slice(out, dim, off / inner, off / inner + x.shape()[dim]), x);
    }
    off += len;
  }
  if (!dense.empty()) launch_pieces(out, dense, outer, shape[dim] * inner * isz);
  return {out};
}

}  // namespace

LS_REGISTER(concat_cuda) { register_kernel("cat", "cuda", cat_cuda); }

}  // namespace ls::cuda
