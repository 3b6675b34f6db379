// Indexing along one dimension on the GPU: index_select (and its backward), gather, scatter_add,
// one_hot, with the registry signatures and error messages of cpp/ops/index.cpp.
//
//   index_select: x (A..., N, B...), index (M,) -> out (A..., M, B...), out[a, j, b] = x[a, index[j], b]
//   index_select_backward: g (A..., M, B...) -> dx (A..., N, B...), dx[a, index[j], b] += g[a, j, b]
//   gather:       out (index's shape), out[i...] = x[i... with i_dim = index[i...]]
//   scatter_add:  out = x; out[i... with i_dim = index[i...]] += src[i...] for every position of index
//   one_hot:      index (any shape) -> int64 (index.shape..., C), out[i..., index[i...]] = 1
//   index_check:  index -> nothing; the range check below on its own (op_args.h)
//
// Index checks: indices are made dense int64 and one pass over them finds the first position
// holding a value outside [0, size) (atomicMin); one thread records it as an index fault
// (index_fault.cuh), and the IndexError, naming the op, the value and the dimension as on the
// CPU, is raised at the host's next synchronisation. So these ops never wait for the GPU (but
// one_hot without num_classes, whose output shape needs the largest index). The kernels stay in
// bounds for a bad index: index_select and gather write zero bits there, the additions skip it.
//
// Kernels:
//   - index_select and gather move bits (one code path per item size); index_select copies whole
//     rows of `inner` items, in 16/8/4/2/1-byte units as the row size and alignment allow.
//   - The additions are deterministic and add in the CPU's order, so float32/float64 results
//     equal the CPU's bit for bit: the index is sorted stably along dim (the CUDA sort), so equal
//     targets form runs ordered by position; the thread at the start of a run owns that output
//     element and adds the run's sources in order (from 0 for index_select_backward, from x for
//     scatter_add). No atomics. bfloat16/float16 add in float32 and round once per element
//     (index_select_backward in registers; scatter_add through a float32 copy, as on the CPU).
#include <algorithm>

#include "core/registry.h"
#include "elementwise.cuh"
#include "ops/op_args.h"
#include "ops/ops.h"

namespace ls::cuda {

namespace {

// ---- index checks ---------------------------------------------------------------------------

// *first_bad = the first position whose index is outside [0, size) (one unsigned comparison also
// sends negatives out), skipping the value `ignore` when skip_ignored (cross-entropy targets).
template <typename I>
__global__ void first_bad_index_kernel(const I* __restrict__ idx, int64_t n, int64_t size, bool skip_ignored,
                                       int64_t ignore, unsigned long long* first_bad) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t v = int64_t(idx[i]);
    if (uint64_t(v) >= uint64_t(size) && !(skip_ignored && v == ignore)) atomicMin(first_bad, (unsigned long long)i);
  }
}

// One thread, after first_bad_index_kernel: records the first bad index, if any.
template <typename I>
__global__ void record_bad_index_kernel(const I* __restrict__ idx, const unsigned long long* __restrict__ first_bad,
                                        FaultSite site) {
  const unsigned long long p = *first_bad;
  if (p != ~0ull) record_index_fault(site, int64_t(p), int64_t(idx[p]));
}

// Queues the range check of a dense index on the current stream: the first bad value becomes a
// fault of `site`, raised at the next synchronisation.
template <typename I>
void check_on_device(const I* idx, int64_t n, int64_t size, bool skip_ignored, int64_t ignore,
                     const FaultSite& site, const Device& device, const char* op) {
  if (n == 0) return;
  Tensor flag = Tensor::empty({1}, DType::Int64, device);
  auto* pf = static_cast<unsigned long long*>(flag.raw_data());
  check(cudaMemsetAsync(pf, 0xFF, sizeof(unsigned long long), current_stream()), op);
  first_bad_index_kernel<<<grid_for(n), kThreads, 0, current_stream()>>>(idx, n, size, skip_ignored, ignore, pf);
  record_bad_index_kernel<<<1, 1, 0, current_stream()>>>(idx, pf, site);
  check_launch(op);
}

// i in [0, size): a valid index. One unsigned comparison also sends negatives out.
__device__ __forceinline__ bool in_range(int64_t i, int64_t size) { return uint64_t(i) < uint64_t(size); }

template <typename V>
V read_back(const void* p, const char* op) {
  V v;
  read_to_host(&v, p, sizeof(V), op);
  return v;
}

void check_index_dtype(const Tensor& index, const char* op) {
  LS_CHECK(index.defined(), TypeError, op, ": index is None");
  LS_CHECK(index.dtype() == DType::Int32 || index.dtype() == DType::Int64, TypeError, op,
           ": index must be int32 or int64, got ", dtype_name(index.dtype()));
}

// The index as dense int64 after checking its dtype; its range is checked on the device (the
// first bad value is recorded as a fault). op must be a string literal (the record keeps it).
Tensor checked_index(const Tensor& index, int64_t size, const char* op, int64_t dim) {
  check_index_dtype(index, op);
  Tensor idx = ops::contiguous(ops::to_dtype(index, DType::Int64));
  if (idx.numel() == 0) return idx;
  set_device(idx, op);
  check_on_device(idx.data<int64_t>(), idx.numel(), size, false, 0, fault_site(op, FaultKind::Index, size, dim),
                  idx.device(), op);
  return idx;
}

// Shape rules of gather / scatter_add (as in cpp/ops/index.cpp), then the range check.
Tensor checked_scatter_index(const char* op, const Tensor& x, int64_t dim, const Tensor& index,
                             const Tensor* src) {
  check_index_dtype(index, op);
  ops::check_scatter_shapes(op, x, dim, index, src);
  return checked_index(index, x.dim() ? x.shape()[dim] : 1, op, dim);
}

// The stable sort of a checked index along dim, keyed as int32 when the values allow (8-byte
// sort items instead of 16): {sorted values, int64 positions}, both dense in idx's shape.
Tensors sorted_runs(const Tensor& idx, int64_t dim, int64_t size) {
  Tensor keys = size <= INT32_MAX ? ops::to_dtype(idx, DType::Int32) : idx;
  Tensors s = ops::sort(keys, dim, false);
  return {ops::contiguous(s[0]), ops::contiguous(s[1])};
}

// Unsigned type of a given byte size: the unit of bit copies.
#define LS_CUDA_DISPATCH_UNIT(bytes, ...)                     \
  switch (bytes) {                                            \
    case 16: { using unit_t = uint4; __VA_ARGS__; break; }    \
    case 8: { using unit_t = uint2; __VA_ARGS__; break; }     \
    case 4: { using unit_t = uint32_t; __VA_ARGS__; break; }  \
    case 2: { using unit_t = uint16_t; __VA_ARGS__; break; }  \
    default: { using unit_t = uint8_t; __VA_ARGS__; break; }  \
  }

// ---- index_select ---------------------------------------------------------------------------

// out (outer, m, inner) = x (outer, n, inner) rows picked by idx; inner counted in units.
template <typename U>
__global__ void index_select_kernel(U* __restrict__ out, const U* __restrict__ x,
                                    const int64_t* __restrict__ idx, int64_t total, int64_t m,
                                    int64_t n, int64_t inner) {
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < total;
       e += int64_t(gridDim.x) * blockDim.x) {
    int64_t c = e % inner, r = e / inner;
    int64_t j = r % m, o = r / m;
    const int64_t i = idx[j];
    out[e] = in_range(i, n) ? x[(o * n + i) * inner + c] : U{};  // x[o, index[j], c]
  }
}

Tensors index_select_cuda(const Tensors& in, const Attrs& a) {
  const int64_t dim = ops::check_index_select_args(in, a);
  const Tensor& x0 = in[0];
  const Tensor& index = in[1];
  Tensor x = ops::contiguous(x0.dim() ? x0 : ops::reshape(x0, {1}));
  const int64_t n = x.shape()[dim], m = index.numel();
  Tensor idx = checked_index(index, n, "index_select", dim);
  Shape shape = x.shape();
  shape[dim] = m;
  Tensor out = Tensor::empty(shape, x.dtype(), x.device());
  int64_t outer = 1, inner = 1;
  for (int64_t d = 0; d < dim; ++d) outer *= shape[d];
  for (int64_t d = dim + 1; d < int64_t(shape.size()); ++d) inner *= shape[d];
  if (out.numel() > 0) {
    set_device(out, "index_select");
    // Widest unit that divides the row and keeps both pointers aligned.
    const int64_t row_bytes = inner * int64_t(itemsize(x.dtype()));
    const auto addr = reinterpret_cast<uintptr_t>(x.raw_data()) | reinterpret_cast<uintptr_t>(out.raw_data());
    int unit = 16;
    while (unit > 1 && (row_bytes % unit != 0 || addr % unit != 0)) unit /= 2;
    const int64_t inner_u = row_bytes / unit, total = outer * m * inner_u;
    LS_CUDA_DISPATCH_UNIT(unit, {
      index_select_kernel<unit_t><<<grid_for(total), kThreads, 0, current_stream()>>>(
          static_cast<unit_t*>(out.raw_data()), static_cast<const unit_t*>(x.raw_data()),
          idx.data<int64_t>(), total, m, n, inner_u);
    });
    check_launch("index_select");
  }
  if (x0.dim() == 0) out = ops::reshape(out, {});
  return {out};
}

// dx (outer, n, inner) rows idx[j] get the sum of g (outer, m, inner) rows j, in order of j:
// one thread per (o, run start k, c) of the sorted index (see the header).
template <typename T, typename S>
__global__ void index_select_backward_kernel(T* __restrict__ dx, const T* __restrict__ g,
                                             const S* __restrict__ sorted,
                                             const int64_t* __restrict__ perm, int64_t outer,
                                             int64_t m, int64_t n, int64_t inner) {
  using A = acc_t<T>;
  const int64_t total = outer * m * inner;
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < total;
       e += int64_t(gridDim.x) * blockDim.x) {
    int64_t c = e % inner, r = e / inner;
    int64_t k = r % m, o = r / m;
    S v = sorted[k];
    if (k > 0 && sorted[k - 1] == v) continue;  // not the first of its run
    if (!in_range(int64_t(v), n)) continue;     // a bad index: recorded by the check
    A acc = A(0);
    for (int64_t q = k; q < m && sorted[q] == v; ++q)
      acc += convert<A>(g[(o * m + perm[q]) * inner + c]);  // g[o, j, c], j = perm[q]
    dx[(o * n + int64_t(v)) * inner + c] = convert<T>(acc);
  }
}

Tensors index_select_backward_cuda(const Tensors& in, const Attrs& a) {
  LS_CHECK(in.size() == 2 && in[0].defined() && in[1].defined(), TypeError,
           "index_select_backward: expected (grad, index)");
  Shape shape = a.ints("shape");
  Tensor g = ops::contiguous(in[0]);
  int64_t dim = wrap_dim(a.i("dim"), int64_t(shape.size()), "index_select");
  const int64_t n = shape.empty() ? 1 : shape[dim];
  Tensor idx = checked_index(in[1], n, "index_select", dim);
  Shape gshape = shape;
  if (!shape.empty()) gshape[dim] = idx.numel();
  LS_CHECK(in[1].dim() <= 1 && g.shape() == gshape, ValueError, "index_select_backward: grad of "
           "shape ", shape_str(g.shape()), " does not match ", shape_str(gshape), " (input shape ",
           shape_str(shape), ", ", idx.numel(), " indices along dimension ", dim, ")");
  Tensor dx = ops::full(shape, 0.0, g.dtype(), g.device());
  if (shape.empty()) {  // 0-d x: the single gradient is g itself
    ops::copy_(dx, g);
    return {dx};
  }
  const int64_t m = idx.numel();
  int64_t outer = 1, inner = 1;
  for (int64_t d = 0; d < dim; ++d) outer *= shape[d];
  for (int64_t d = dim + 1; d < int64_t(shape.size()); ++d) inner *= shape[d];
  if (dx.numel() == 0 || m == 0) return {dx};
  Tensors runs = sorted_runs(ops::reshape(idx, {m}), 0, n);
  const Tensor& sorted = runs[0];
  const int64_t* perm = runs[1].data<int64_t>();
  set_device(dx, "index_select_backward");
  const int64_t total = outer * m * inner;
  CUDA_DISPATCH_FLOAT(g.dtype(), "index_select_backward", {
    scalar_t* pd = static_cast<scalar_t*>(dx.raw_data());
    const scalar_t* pg = static_cast<const scalar_t*>(g.raw_data());
    if (sorted.dtype() == DType::Int32)
      index_select_backward_kernel<scalar_t, int32_t><<<grid_for(total), kThreads, 0, current_stream()>>>(
          pd, pg, sorted.data<int32_t>(), perm, outer, m, n, inner);
    else
      index_select_backward_kernel<scalar_t, int64_t><<<grid_for(total), kThreads, 0, current_stream()>>>(
          pd, pg, sorted.data<int64_t>(), perm, outer, m, n, inner);
  });
  check_launch("index_select_backward");
  return {dx};
}

// ---- gather / scatter_add -------------------------------------------------------------------

// out (dense, index's shape)[e] = x[offset of e's coordinates with the dim coordinate 0 +
// index[e] * x.stride(dim)]; ix maps e to {e, that offset}.
template <typename U>
__global__ void gather_kernel(U* __restrict__ out, const U* __restrict__ x,
                              const int64_t* __restrict__ idx, int64_t total, Indexer<2> ix,
                              int64_t xs_dim, int64_t size) {
  for_each_strided(total, ix, [&](const int64_t (&off)[2]) {
    const int64_t i = idx[off[0]];
    out[off[0]] = in_range(i, size) ? x[off[1] + i * xs_dim] : U{};
  });
}

// x viewed in index's shape with the stride of dim zeroed (that coordinate comes from the index).
Tensor view_without_dim(const Tensor& t, const Shape& shape, int64_t dim) {
  Shape st = t.strides();
  if (t.dim()) st[dim] = 0;
  return t.as_strided(shape, st, t.offset());
}

Tensors gather_cuda(const Tensors& in, const Attrs& a) {
  LS_CHECK(in.size() == 2 && in[0].defined() && in[1].defined(), TypeError,
           "gather: expected (x, index)");
  const Tensor& x = in[0];
  int64_t dim = wrap_dim(a.i("dim"), x.dim(), "gather");
  Tensor idx = checked_scatter_index("gather", x, dim, in[1], nullptr);
  Tensor out = Tensor::empty(idx.shape(), x.dtype(), x.device());
  const int64_t total = out.numel();
  if (total == 0) return {out};
  set_device(out, "gather");
  Tensor xv = view_without_dim(x, idx.shape(), dim);
  Indexer<2> ix = make_indexer<2>(idx.shape(), {&out, &xv}, "gather");
  const int64_t xs_dim = x.dim() ? x.strides()[dim] : 0, size = x.dim() ? x.shape()[dim] : 1;
  LS_CUDA_DISPATCH_UNIT(int(itemsize(x.dtype())), {
    gather_kernel<unit_t><<<grid_for(total), kThreads, 0, current_stream()>>>(
        static_cast<unit_t*>(out.raw_data()), static_cast<const unit_t*>(x.raw_data()),
        idx.data<int64_t>(), total, ix, xs_dim, size);
  });
  check_launch("gather");
  return {out};
}

// One thread per position e of the (dense) sorted index; the first of each run of equal targets
// along dim adds the run's src elements, in position order, into its out element.
// ix maps e to {e, out offset with the dim coordinate 0, src offset}; is_dim: the dense index's
// stride along dim, m its size there.
template <typename T, typename S>
__global__ void scatter_add_kernel(T* out, const T* __restrict__ src, const S* __restrict__ sorted,
                                   const int64_t* __restrict__ perm, int64_t total, Indexer<3> ix,
                                   int64_t is_dim, int64_t m, int64_t os_dim, int64_t ss_dim,
                                   int64_t size) {
  for_each_strided(total, ix, [&](const int64_t (&off)[3]) {
    const int64_t e = off[0];
    const int64_t k = (e / is_dim) % m;  // e's coordinate along dim
    const S v = sorted[e];
    if (k > 0 && sorted[e - is_dim] == v) return;  // not the first of its run
    if (!in_range(int64_t(v), size)) return;       // a bad index: recorded by the check
    T* o = out + off[1] + int64_t(v) * os_dim;     // o points at out[i... with i_dim = v]
    T acc = *o;
    for (int64_t q = k; q < m && sorted[e + (q - k) * is_dim] == v; ++q)
      acc = T(acc + src[off[2] + (perm[e + (q - k) * is_dim] - k) * ss_dim]);
    *o = acc;
  });
}

Tensors scatter_add_cuda(const Tensors& in, const Attrs& a) {
  LS_CHECK(in.size() == 3 && in[0].defined() && in[1].defined() && in[2].defined(), TypeError,
           "scatter_add: expected (x, index, src)");
  const Tensor& x = in[0];
  const Tensor& src = in[2];
  LS_CHECK(src.dtype() == x.dtype(), TypeError, "scatter_add: src dtype ", dtype_name(src.dtype()),
           " does not match the input dtype ", dtype_name(x.dtype()));
  if (x.dtype() == DType::BFloat16 || x.dtype() == DType::Float16) {
    // Sums in float32, rounded once per output element.
    Tensor r = scatter_add_cuda({ops::to_dtype(x, DType::Float32), in[1], ops::to_dtype(src, DType::Float32)}, a)[0];
    return {ops::to_dtype(r, x.dtype())};
  }
  int64_t dim = wrap_dim(a.i("dim"), x.dim(), "scatter_add");
  Tensor idx = checked_scatter_index("scatter_add", x, dim, in[1], &src);
  Tensor out = ops::contiguous_copy(x);
  const int64_t total = idx.numel();
  if (total == 0) return {out};
  const int64_t size = x.dim() ? x.shape()[dim] : 1;
  Tensors runs = sorted_runs(idx, dim, size);
  const Tensor& sorted = runs[0];
  const int64_t* perm = runs[1].data<int64_t>();
  set_device(out, "scatter_add");
  Tensor ov = view_without_dim(out, idx.shape(), dim);
  Tensor sv = src.as_strided(idx.shape(), src.strides(), src.offset());
  Indexer<3> ix = make_indexer<3>(idx.shape(), {&idx, &ov, &sv}, "scatter_add");
  const int64_t m = idx.dim() ? idx.shape()[dim] : 1;
  int64_t is_dim = 1;  // the dense index's stride along dim
  for (int64_t d = dim + 1; d < idx.dim(); ++d) is_dim *= idx.shape()[d];
  const int64_t os_dim = out.dim() ? out.strides()[dim] : 0;
  const int64_t ss_dim = src.dim() ? src.strides()[dim] : 0;
  auto launch = [&](auto* po, const auto* ps) {
    if (sorted.dtype() == DType::Int32)
      scatter_add_kernel<<<grid_for(total), kThreads, 0, current_stream()>>>(po, ps, sorted.data<int32_t>(), perm, total,
                                                        ix, is_dim, m, os_dim, ss_dim, size);
    else
      scatter_add_kernel<<<grid_for(total), kThreads, 0, current_stream()>>>(po, ps, sorted.data<int64_t>(), perm, total,
                                                        ix, is_dim, m, os_dim, ss_dim, size);
  };
  switch (x.dtype()) {
    case DType::Float32: launch(out.data<float>(), src.data<float>()); break;
    case DType::Float64: launch(out.data<double>(), src.data<double>()); break;
    case DType::Int32: launch(out.data<int32_t>(), src.data<int32_t>()); break;
    case DType::Int64: launch(out.data<int64_t>(), src.data<int64_t>()); break;
    case DType::UInt8: launch(out.data<uint8_t>(), src.data<uint8_t>()); break;
    case DType::Bool: launch(out.data<bool>(), src.data<bool>()); break;
    default: throw_dtype_error("scatter_add", x.dtype());
  }
  check_launch("scatter_add");
  return {out};
}

// ---- one_hot --------------------------------------------------------------------------------

__global__ void one_hot_kernel(int64_t* __restrict__ out, const int64_t* __restrict__ idx,
                               int64_t total, int64_t classes) {
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < total;
       e += int64_t(gridDim.x) * blockDim.x)
    out[e] = idx[e / classes] == e % classes ? 1 : 0;  // out[i, c] = (index[i] == c)
}

Tensors one_hot_cuda(const Tensors& in, const Attrs& a) {
  LS_CHECK(in.size() == 1 && in[0].defined(), TypeError, "one_hot: expected one index tensor, got ",
           in.size());
  const Tensor& index = in[0];
  check_index_dtype(index, "one_hot");
  int64_t classes = a.i("num_classes", -1);
  LS_CHECK(classes >= -1, ValueError, "one_hot: num_classes must be -1 or non-negative, got ", classes);
  Tensor idx = ops::contiguous(ops::to_dtype(index, DType::Int64));
  if (classes == -1) {
    LS_CHECK(idx.numel() > 0, ValueError,
             "one_hot: cannot infer num_classes from an empty index; pass num_classes");
    Tensor mx = ops::amax(idx);
    classes = std::max<int64_t>(read_back<int64_t>(mx.raw_data(), "one_hot"), -1) + 1;  // negatives fail below
  }
  checked_index(idx, classes, "one_hot", index.dim());
  Shape shape = index.shape();
  shape.push_back(classes);
  Tensor out = Tensor::empty(shape, DType::Int64, index.device());
  const int64_t total = out.numel();
  if (total == 0) return {out};
  set_device(out, "one_hot");
  one_hot_kernel<<<grid_for(total), kThreads, 0, current_stream()>>>(out.data<int64_t>(), idx.data<int64_t>(), total, classes);
  check_launch("one_hot");
  return {out};
}

#undef LS_CUDA_DISPATCH_UNIT

// The "index_check" op (op_args.h) for the kernels that cannot raise themselves.
Tensors index_check_cuda(const Tensors& in, const Attrs& a) {
  const ops::IndexCheckArgs c = ops::parse_index_check(in, a);
  Tensor idx = ops::contiguous(in[0]);
  if (idx.numel() == 0) return {};
  set_device(idx, "index_check");
  const char* op = lasting_op_name(c.op);
  const bool skip = c.kind == FaultKind::Target;  // a target may be the ignore_index
  const FaultSite site = fault_site(op, c.kind, c.size, skip ? c.ignore_index : c.dim);
  if (idx.dtype() == DType::Int32)
    check_on_device(idx.data<int32_t>(), idx.numel(), c.size, skip, c.ignore_index, site, idx.device(), op);
  else
    check_on_device(idx.data<int64_t>(), idx.numel(), c.size, skip, c.ignore_index, site, idx.device(), op);
  return {};
}

}  // namespace

LS_REGISTER(index_cuda) {
  const std::vector<DType> kNumeric = {DType::Float32, DType::Float64, DType::BFloat16, DType::Float16,
                                       DType::Int32, DType::Int64, DType::UInt8, DType::Bool};
  register_kernel("index_select", "cuda", index_select_cuda);
  register_kernel("index_select_backward", "cuda", index_select_backward_cuda,
                  {DType::Float32, DType::Float64, DType::BFloat16, DType::Float16});
  register_kernel("gather", "cuda", gather_cuda);
  register_kernel("scatter_add", "cuda", scatter_add_cuda, kNumeric);
  register_kernel("one_hot", "cuda", one_hot_cuda);
  register_kernel("index_check", "cuda", index_check_cuda, {DType::Int32, DType::Int64});
}

}  // namespace ls::cuda
