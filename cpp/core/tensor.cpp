#include "tensor.h"

#include "autograd.h"
#include "error.h"

#include <algorithm>
#include <cmath>

namespace ls {

std::string shape_str(const Shape& shape) {
  std::string s = "(";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  if (shape.size() == 1) s += ",";
  return s + ")";
}

Shape contiguous_strides(const Shape& shape) {
  Shape st(shape.size());
  int64_t s = 1;
  for (int64_t i = int64_t(shape.size()) - 1; i >= 0; --i) {
    st[i] = s;
    s *= std::max<int64_t>(shape[i], 1);
  }
  return st;
}

int64_t shape_numel(const Shape& shape) {
  int64_t n = 1;
  for (auto v : shape) n *= v;
  return n;
}

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  for (auto v : shape) LS_CHECK(v >= 0, ValueError, "empty: negative dimension in shape ", shape_str(shape));
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = allocate_storage(size_t(shape_numel(shape)) * itemsize(dtype), device);
  impl->shape = shape;
  impl->strides = contiguous_strides(shape);
  impl->dtype = dtype;
  return Tensor(impl);
}

Tensor Tensor::as_strided(const Shape& shape, const Shape& strides, int64_t offset) const {
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = impl_->storage;
  impl->shape = shape;
  impl->strides = strides;
  impl->offset = offset;
  impl->dtype = impl_->dtype;
  impl->version = impl_->version;
  return Tensor(impl);
}

namespace {
// Dimension d of a tensor of ndim dimensions (negative from the end) for size(d) and stride(d),
// which a 0-d tensor has not (wrap_dim lets it pass 0 and -1, as a reduction's dim).
int64_t existing_dim(int64_t d, int64_t ndim, const char* what) {
  LS_CHECK(ndim > 0, IndexError, what, ": dimension ", d, " given but the tensor has no dimensions");
  return wrap_dim(d, ndim, what);
}
}  // namespace

int64_t Tensor::size(int64_t d) const { return impl_->shape[existing_dim(d, dim(), "size")]; }
int64_t Tensor::stride(int64_t d) const { return impl_->strides[existing_dim(d, dim(), "stride")]; }

bool Tensor::is_contiguous() const {
  int64_t expected = 1;
  for (int64_t i = dim() - 1; i >= 0; --i) {
    if (impl_->shape[i] == 1) continue;
    if (impl_->strides[i] != expected) return false;
    expected *= impl_->shape[i];
  }
  return true;
}

AutogradMeta& Tensor::autograd_meta() const {
  if (!impl_->autograd) impl_->autograd = std::make_unique<AutogradMeta>();
  return *impl_->autograd;
}

void Tensor::set_requires_grad(bool r) {
  if (r) LS_CHECK(is_floating(dtype()), RuntimeError,
                  "only floating point tensors can require gradients, got ", dtype_name(dtype()));
  LS_CHECK(is_leaf() || r, RuntimeError,
           "requires_grad can only be turned off on leaf tensors; use detach()");
  autograd_meta().requires_grad = r;
}

Tensor Tensor::grad() const {
  if (!impl_->autograd || !impl_->autograd->grad) return Tensor();
  return Tensor(impl_->autograd->grad);
}

void Tensor::set_grad(const Tensor& g) const {
  if (g.defined()) {
    LS_CHECK(g.shape() == shape(), ValueError, "assigned grad has shape ", shape_str(g.shape()),
             " but the tensor has shape ", shape_str(shape()));
    LS_CHECK(g.device() == device(), ValueError, "assigned grad is on ", g.device().str(),
             " but the tensor is on ", device().str());
    LS_CHECK(g.dtype() == dtype(), TypeError, "assigned grad is ", dtype_name(g.dtype()),
             " but the tensor is ", dtype_name(dtype()));
  }
  autograd_meta().grad = g.impl();
}

void Tensor::set_data(const Tensor& src) const {
  LS_CHECK(is_leaf(), RuntimeError, "set_data: only a leaf tensor's data can be replaced");
  TensorImpl& d = *impl_;
  const TensorImpl& s = *src.impl();
  d.storage = s.storage;
  d.shape = s.shape;
  d.strides = s.strides;
  d.offset = s.offset;
  d.dtype = s.dtype;
  bump_version();
}

const std::shared_ptr<Node>& Tensor::grad_fn() const {
  static const std::shared_ptr<Node> none;
  return impl_->autograd ? impl_->autograd->grad_fn : none;
}

Tensor Tensor::detach() const { return as_strided(shape(), strides(), offset()); }

int64_t wrap_dim(int64_t d, int64_t ndim, const char* op) {
  int64_t n = std::max<int64_t>(ndim, 1);  // a 0-d tensor accepts dim 0 and -1
  LS_CHECK(d >= -n && d < n, IndexError, op, ": dimension ", d, " is out of range for a tensor of ",
           ndim, " dimensions");
  return d < 0 ? d + n : d;
}

Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op) {
  size_t n = std::max(a.size(), b.size());
  Shape out(n);
  for (size_t i = 0; i < n; ++i) {
    int64_t da = i < n - a.size() ? 1 : a[i - (n - a.size())];
    int64_t db = i < n - b.size() ? 1 : b[i - (n - b.size())];
    LS_CHECK(da == db || da == 1 || db == 1, ValueError, op, ": shapes ", shape_str(a), " and ",
             shape_str(b), " cannot be broadcast together");
    out[i] = da == 1 ? db : da;
  }
  return out;
}

DType promote_types(DType a, DType b) {
  if (a == b) return a;
  auto rank = [](DType d) {
    switch (d) {
      case DType::Bool: return 0;
      case DType::UInt8: return 1;
      case DType::Int32: return 2;
      case DType::Int64: return 3;
      case DType::BFloat16: case DType::Float16: return 4;
      case DType::Float32: return 5;
      case DType::Float64: return 6;
    }
    return 0;
  };
  if ((a == DType::BFloat16 && b == DType::Float16) || (a == DType::Float16 && b == DType::BFloat16))
    return DType::Float32;
  return rank(a) >= rank(b) ? a : b;
}

DType result_type(const Tensor& a, const Tensor& b) {
  if ((a.dim() == 0) == (b.dim() == 0)) return promote_types(a.dtype(), b.dtype());
  const DType dims = a.dim() ? a.dtype() : b.dtype(), zero = a.dim() ? b.dtype() : a.dtype();
  if (is_floating(dims)) return dims;  // torch's combine_categories
  if (dims == DType::Bool || is_floating(zero)) return promote_types(dims, zero);
  return dims;
}

float fp16_to_float(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, u;
  if (exp == 0) {
    if (man == 0) {
      u = sign;
    } else {  // subnormal: renormalise
      exp = 127 - 15 + 1;
      while (!(man & 0x400)) { man <<= 1; --exp; }
      u = sign | (exp << 23) | ((man & 0x3ff) << 13);
    }
  } else if (exp == 31) {
    u = sign | 0x7f800000u | (man << 13);
  } else {
    u = sign | ((exp + 127 - 15) << 23) | (man << 13);
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

uint16_t float_to_fp16(float f) {  // round to nearest even
  uint32_t u;
  std::memcpy(&u, &f, 4);
  uint32_t sign = (u >> 16) & 0x8000;
  uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return uint16_t(sign | 0x7e00);  // NaN
  if (a >= 0x477ff000u) return uint16_t(sign | 0x7c00);  // overflow to inf
  if (a < 0x38800000u) {                                 // subnormal or zero in fp16
    float af;
    std::memcpy(&af, &a, 4);
    // scale so that the fp16 subnormal unit (2^-24) becomes 1, then round to nearest even
    float scaled = af * 16777216.0f;
    uint32_t r = uint32_t(std::nearbyint(scaled));
    return uint16_t(sign | r);
  }
  uint32_t e = ((a >> 23) - 127 + 15) << 10;
  uint32_t m = (a >> 13) & 0x3ff;
  uint32_t rest = a & 0x1fff;
  uint32_t h = e | m;
  if (rest > 0x1000 || (rest == 0x1000 && (m & 1))) ++h;
  return uint16_t(sign | h);
}

Device Device::parse(const std::string& s) {
  if (s == "cpu") return Device{DeviceType::CPU, 0};
  if (s == "cuda") return Device{DeviceType::CUDA, 0};
  if (s.rfind("cuda:", 0) == 0) {
    try {
      size_t used = 0;
      int idx = std::stoi(s.substr(5), &used);
      if (used == s.size() - 5 && idx >= 0) return Device{DeviceType::CUDA, idx};
    } catch (...) {
    }
  }
  throw ValueError(cat("unknown device '", s, "': expected 'cpu', 'cuda' or 'cuda:N'"));
}

}  // namespace ls
