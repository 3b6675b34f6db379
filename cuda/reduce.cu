// Sum over any set of dims on the GPU. The reduced dims are moved last and made dense (a CUDA
// copy when needed), so every output element reduces one contiguous row of C elements:
// one block of 256 threads per row, each thread striding over the row, then a shared-memory tree.
// Accumulation is in float64 for float64 input, float32 otherwise (16-bit inputs included);
// integer inputs accumulate and return int64, as on the CPU.
#include <algorithm>
#include <numeric>

#include "core/registry.h"
#include "elementwise.cuh"
#include "ops/ops.h"

namespace ls::cuda {

namespace {

template <typename T, typename A, typename O>
__global__ void row_sum_kernel(O* out, const T* x, int64_t cols) {
  __shared__ A partial[kThreads];
  const T* row = x + int64_t(blockIdx.x) * cols;
  A acc = A(0);
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) acc += convert<A>(row[c]);
  partial[threadIdx.x] = acc;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) partial[threadIdx.x] += partial[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) out[blockIdx.x] = convert<O>(partial[0]);
}

// Accumulator and output types per input type (see the header).
template <typename T> struct SumTypes { using acc = float; using out = T; };
template <> struct SumTypes<double> { using acc = double; using out = double; };
template <> struct SumTypes<int32_t> { using acc = int64_t; using out = int64_t; };
template <> struct SumTypes<int64_t> { using acc = int64_t; using out = int64_t; };
template <> struct SumTypes<bool> { using acc = int64_t; using out = int64_t; };
template <> struct SumTypes<uint8_t> { using acc = int64_t; using out = int64_t; };

Tensors sum_cuda(const Tensors& in, const Attrs& a) {
  const Tensor& x = in[0];
  std::vector<int64_t> dims = a.ints("dims", {});
  if (dims.empty()) {
    dims.resize(x.dim());
    std::iota(dims.begin(), dims.end(), 0);
  }
  for (auto& d : dims) d = wrap_dim(d, x.dim(), "sum");
  std::sort(dims.begin(), dims.end());
  bool keepdim = a.b("keepdim", false);
  Shape out_shape;
  std::vector<int64_t> perm;
  int64_t cols = 1;
  for (int64_t i = 0; i < x.dim(); ++i) {
    bool r = std::binary_search(dims.begin(), dims.end(), i);
    if (!r) { out_shape.push_back(x.shape()[i]); perm.push_back(i); }
    else if (keepdim) out_shape.push_back(1);
    if (r) cols *= x.shape()[i];
  }
  for (auto d : dims) perm.push_back(d);
  bool integer = !is_floating(x.dtype());
  Tensor out = Tensor::empty(out_shape, integer ? DType::Int64 : x.dtype(), x.device());
  int64_t rows = out.numel();
  if (rows == 0) return {out};
  if (cols == 0) {
    ops::fill_(out, 0.0);
    return {out};
  }
  Tensor xr = ops::contiguous(ops::permute(x, perm));
  set_device(out, "sum");
  CUDA_DISPATCH_ALL(x.dtype(), "sum", {
    using T = scalar_t;
    using O = typename SumTypes<T>::out;
    row_sum_kernel<T, typename SumTypes<T>::acc, O><<<unsigned(rows), kThreads>>>(
        static_cast<O*>(out.raw_data()), static_cast<const T*>(xr.raw_data()), cols);
  });
  check_launch("sum");
  return {out};
}

}  // namespace

LS_REGISTER(reduce_cuda) { register_kernel("sum", "cuda", sum_cuda); }

}  // namespace ls::cuda
