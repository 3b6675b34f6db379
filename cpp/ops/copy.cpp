// Copies: contiguous (strided -> dense), cast between dtypes, moves between devices, and the
// in-place copy_/fill_ that optimizers and loaders use. contiguous/cast/to_device are
// differentiable (their gradients are the inverse copy); copy_ and fill_ are not.
#include <cstring>

#include "core/autograd.h"
#include "cpu_loops.h"
#include "op_args.h"
#include "ops.h"

namespace ls::ops {

namespace {

// dst[...] = cast(src[...]) with src broadcast to dst's shape; both strided, any dtypes.
void copy_strided_cpu(const Tensor& dst, const Tensor& src) {
  const Shape& shape = dst.shape();
  if (dst.dtype() == src.dtype() && dst.is_contiguous() && src.is_contiguous() &&
      src.shape() == shape) {
    std::memcpy(dst.raw_data(), src.raw_data(), dst.nbytes());
    return;
  }
  std::array<Shape, 2> st{cpu::broadcast_strides(dst, shape), cpu::broadcast_strides(src, shape)};
  DISPATCH_ALL(dst.dtype(), "copy", {
    using dst_t = scalar_t;
    dst_t* d = dst.data<dst_t>();
    DISPATCH_ALL(src.dtype(), "copy", {
      const scalar_t* s = src.data<scalar_t>();
      cpu::for_each_run(shape, st, [&](auto off, auto inner, int64_t n) {
        dst_t* dp = d + off[0];
        const scalar_t* sp = s + off[1];
        if constexpr (std::is_same_v<dst_t, scalar_t>) {
          for (int64_t k = 0; k < n; ++k) dp[k * inner[0]] = sp[k * inner[1]];
        } else {
          for (int64_t k = 0; k < n; ++k)
            dp[k * inner[0]] = cast_value<dst_t>(sp[k * inner[1]]);
        }
      });
    });
  });
}

Tensors contiguous_cpu(const Tensors& in, const Attrs& a) {
  const Tensor& x = in[0];
  if (x.is_contiguous() && !a.b("force_copy", false)) return {x};
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  copy_strided_cpu(out, x);
  return {out};
}

Tensors cast_cpu(const Tensors& in, const Attrs& a) {
  Tensor out = Tensor::empty(in[0].shape(), DType(a.i("dtype")), in[0].device());
  copy_strided_cpu(out, in[0]);
  return {out};
}

// Moves go through contiguous memory on the source device, then one memcpy on the current
// stream. Only a host->device copy from pinned memory may be non-blocking: pageable memory
// could be changed by the caller before the copy reads it, and a device->host result must be
// complete before the host reads it.
Tensors to_device_any(const Tensors& in, const Attrs& a) {
  Device to = Device::parse(a.s("device", "cpu"));
  Tensor src = contiguous(in[0]);
  if (src.device() == to) return {src};
  Tensor out = Tensor::empty(src.shape(), src.dtype(), to);
  if (src.nbytes() == 0) return {out};
  const CudaHooks& cuda = require_cuda("to");
  if (src.device().is_cpu()) {
    bool async = a.b("non_blocking", false) && src.storage()->pinned;
    cuda.memcpy(out.raw_data(), src.raw_data(), src.nbytes(), 0, to.index, async);
    // the pinned block must outlive the queued copy in the cache, not only in this call
    if (async) cuda.host_record(src.storage()->data, to.index);
  } else if (to.is_cpu()) {
    cuda.memcpy(out.raw_data(), src.raw_data(), src.nbytes(), 1, src.device().index, false);
  } else {
    // The copy runs on the source device's stream, but `out` came from the destination's pool,
    // where a freed block is reused at once by the kernels of that device's current stream:
    // kernels queued there before may still read or write it. The copy waits for them (as torch
    // orders a copy between devices).
    const int dst = to.index, srcdev = src.device().index;
    void* dst_ready = cuda.event_create(dst, false);
    cuda.event_record(dst_ready, dst, cuda.current_stream(dst));
    cuda.stream_wait_event(srcdev, cuda.current_stream(srcdev), dst_ready);
    cuda.event_destroy(dst_ready);  // released by the runtime once the wait is over
    cuda.memcpy(out.raw_data(), src.raw_data(), src.nbytes(), 2, srcdev, false);
  }
  return {out};
}

Tensors copy_inplace_cpu(const Tensors& in, const Attrs&) {
  Tensor src = in[1];
  if (src.device() != in[0].device()) src = to_device(src, in[0].device());
  copy_strided_cpu(in[0], src);
  return {};
}

Tensors fill_inplace_cpu(const Tensors& in, const Attrs& a) {
  const Tensor& d = in[0];
  double v = a.f("value", 0.0);
  Tensor src = full({}, v, d.dtype(), d.device());
  copy_strided_cpu(d, src);
  return {};
}

void check_inplace(const Tensor& t, const char* op) {
  LS_CHECK(!(grad_enabled() && t.requires_grad()), RuntimeError, op,
           ": a tensor that requires grad cannot be modified in place while grad mode is on "
           "(use no_grad() or detach())");
}

// An expanded dim (stride 0) makes several elements one memory location: which of their values
// a copy leaves would depend on the kernel's order (torch refuses too; a fill, which writes one
// value everywhere, is fine).
void check_no_expanded_dim(const Tensor& t, const char* op) {
  for (int64_t d = 0; d < t.dim(); ++d)
    LS_CHECK(t.shape()[d] <= 1 || t.strides()[d] != 0, RuntimeError, op,
             ": more than one element of the written-to tensor refers to one memory location "
             "(an expanded dim); clone() it first");
}

// The bytes [first, last] that t's elements span in its storage.
std::pair<int64_t, int64_t> byte_span(const Tensor& t) {
  int64_t lo = t.offset(), hi = t.offset();
  for (int64_t d = 0; d < t.dim(); ++d) {
    const int64_t reach = (t.shape()[d] - 1) * t.strides()[d];
    (reach < 0 ? lo : hi) += reach;
  }
  const int64_t size = int64_t(itemsize(t.dtype()));
  return {lo * size, hi * size + size - 1};
}

// Whether src reads memory that dst writes, other than as the very same view: a[:] = a.T or
// a[1:] = a[:-1] would read elements already overwritten.
bool overlaps_other_view(const Tensor& dst, const Tensor& src) {
  if (dst.storage() != src.storage() || dst.numel() == 0 || src.numel() == 0) return false;
  if (dst.offset() == src.offset() && dst.shape() == src.shape() && dst.strides() == src.strides() &&
      dst.dtype() == src.dtype())
    return false;  // each element onto itself
  const auto a = byte_span(dst), b = byte_span(src);
  return a.first <= b.second && b.first <= a.second;
}

}  // namespace

Tensor contiguous(const Tensor& x) {
  if (x.is_contiguous()) return x;  // nothing to do, on any device
  return call1("contiguous", {x});
}
Tensor contiguous_copy(const Tensor& x) { return call1("contiguous", {x}, {{"force_copy", true}}); }

Tensor to_dtype(const Tensor& x, DType dtype) {
  if (x.dtype() == dtype) return x;
  return call1("cast", {x}, {{"dtype", int64_t(dtype)}});
}

Tensor to_device(const Tensor& x, Device device, bool non_blocking) {
  if (x.device() == device) return x;
  return call1("to_device", {x}, {{"device", device.str()}, {"non_blocking", non_blocking}});
}

bool is_pinned(const Tensor& x) { return x.defined() && x.storage() && x.storage()->pinned; }

// A copy, not a view: autograd does not track it (as for the data a loader stages).
Tensor pin_memory(const Tensor& x) {
  LS_CHECK(x.device().is_cpu(), ValueError, "pin_memory: only CPU tensors can be pinned, got a "
           "tensor on ", x.device().str());
  if (is_pinned(x)) return x;
  Tensor src = contiguous(x);
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = allocate_pinned_storage(src.nbytes());
  impl->shape = src.shape();
  impl->strides = contiguous_strides(src.shape());
  impl->dtype = src.dtype();
  if (src.nbytes()) std::memcpy(impl->storage->data, src.raw_data(), src.nbytes());
  return Tensor(impl);
}

void copy_(const Tensor& dst, const Tensor& src) {
  check_inplace(dst, "copy_");
  check_no_expanded_dim(dst, "copy_");
  // copy_ records no backward: while gradients are recorded, a source that requires grad would
  // lose its gradient in a destination that does not (torch records the write instead).
  LS_CHECK(!(grad_enabled() && src.requires_grad()), RuntimeError,
           "copy_: writing a value that requires grad into a tensor that does not would lose its "
           "gradient; compute out of place (x = x + y, cat, where), or write under no_grad()");
  LS_CHECK(broadcast_shapes(dst.shape(), src.shape(), "copy_") == dst.shape(), ValueError,
           "copy_: source of shape ", shape_str(src.shape()), " cannot be broadcast to ",
           shape_str(dst.shape()));
  // The source may live elsewhere; it is moved to the destination's device first. One that
  // shares memory with the destination is read from a snapshot (as numpy does).
  Tensor s = src.device() == dst.device() ? src : to_device(src, dst.device());
  if (overlaps_other_view(dst, s)) s = contiguous_copy(s);
  call("copy_", {dst, s});
}

void fill_(const Tensor& dst, double value) {
  check_inplace(dst, "fill_");
  check_fill_value(value, dst.dtype(), "fill_");
  call("fill_", {dst}, {{"value", value}});
}

LS_REGISTER(copy) {
  auto identity = [](const BackwardCtx&, const Tensors& g) { return Tensors{g[0]}; };
  declare_op("contiguous", {identity, false});
  declare_op("cast", {[](const BackwardCtx& c, const Tensors& g) {
                        return Tensors{to_dtype(g[0], c.input_dtypes[0])};
                      }, false});
  declare_op("to_device", {[](const BackwardCtx& c, const Tensors& g) {
                             return Tensors{to_device(g[0], c.device)};
                           }, false});
  declare_op("copy_", {nullptr, true, false, {0}});  // the registry bumps the destination's version
  declare_op("fill_", {nullptr, true, false, {0}});
  register_kernel("contiguous", "cpu", contiguous_cpu);
  register_kernel("cast", "cpu", cast_cpu);
  register_kernel("to_device", "any", to_device_any);
  register_kernel("copy_", "cpu", copy_inplace_cpu);
  register_kernel("fill_", "cpu", fill_inplace_cpu);
}

}  // namespace ls::ops
