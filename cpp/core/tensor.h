// Tensor: a handle to a TensorImpl, which is shape/strides/offset over a shared Storage plus the
// autograd state. Views share the Storage (and its version counter) and never copy.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "device.h"
#include "dtype.h"
#include "storage.h"

namespace ls {

using Shape = std::vector<int64_t>;
struct Node;
class Tensor;
using GradHook = std::function<Tensor(const Tensor&)>;  // returns the grad to use (or undefined: keep)

struct AutogradMeta {
  bool requires_grad = false;
  std::shared_ptr<struct TensorImpl> grad;
  std::shared_ptr<Node> grad_fn;  // null for leaves
  int output_nr = 0;              // which output of grad_fn this tensor is
  std::vector<GradHook> hooks;    // leaf hooks, run before accumulation into .grad
};

struct TensorImpl {
  std::shared_ptr<Storage> storage;
  Shape shape, strides;  // strides in elements
  int64_t offset = 0;    // in elements
  DType dtype = DType::Float32;
  std::shared_ptr<uint64_t> version = std::make_shared<uint64_t>(0);  // bumped by in-place writes
  std::unique_ptr<AutogradMeta> autograd;
};

Shape contiguous_strides(const Shape& shape);
int64_t shape_numel(const Shape& shape);

class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}

  // Fresh, uninitialised, contiguous memory.
  static Tensor empty(const Shape& shape, DType dtype, Device device = {});
  // A new TensorImpl over the same storage (a view: no copy, shares the version counter).
  Tensor as_strided(const Shape& shape, const Shape& strides, int64_t offset) const;

  bool defined() const { return impl_ != nullptr; }
  const std::shared_ptr<TensorImpl>& impl() const { return impl_; }
  DType dtype() const { return impl_->dtype; }
  Device device() const { return impl_->storage->device; }
  const Shape& shape() const { return impl_->shape; }
  const Shape& strides() const { return impl_->strides; }
  int64_t offset() const { return impl_->offset; }
  int64_t dim() const { return int64_t(impl_->shape.size()); }
  int64_t size(int64_t d) const;  // negative d counts from the end
  int64_t stride(int64_t d) const;  // in elements; negative d counts from the end
  int64_t numel() const { return shape_numel(impl_->shape); }
  size_t nbytes() const { return size_t(numel()) * itemsize(dtype()); }
  bool is_contiguous() const;
  const std::shared_ptr<Storage>& storage() const { return impl_->storage; }

  void* raw_data() const {
    return static_cast<char*>(impl_->storage->data) + impl_->offset * int64_t(itemsize(dtype()));
  }
  template <typename T> T* data() const { return static_cast<T*>(raw_data()); }

  // In-place writes bump the version so autograd can detect saved tensors changed under it.
  void bump_version() const { ++*impl_->version; }
  uint64_t version() const { return *impl_->version; }

  // Autograd state.
  bool requires_grad() const { return impl_->autograd && impl_->autograd->requires_grad; }
  void set_requires_grad(bool r);
  bool is_leaf() const { return !impl_->autograd || !impl_->autograd->grad_fn; }
  Tensor grad() const;
  void set_grad(const Tensor& g) const;
  const std::shared_ptr<Node>& grad_fn() const;
  AutogradMeta& autograd_meta() const;  // created on first use
  // Same storage, same version counter, no autograd history.
  Tensor detach() const;
  // Point this tensor at src's memory, shape and dtype, keeping its identity, autograd state and
  // version counter (bumped): a module moved to another device or dtype keeps its Parameter
  // objects, which optimizers hold (torch's `param.data = ...`).
  void set_data(const Tensor& src) const;

  bool same(const Tensor& o) const { return impl_ == o.impl_; }

 private:
  std::shared_ptr<TensorImpl> impl_;
};

// Normalise a possibly negative dimension index for a tensor of rank `ndim`.
int64_t wrap_dim(int64_t d, int64_t ndim, const char* op);
// numpy broadcasting of two shapes; throws naming `op` on mismatch.
Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op);

// The dtype of a binary op on a and b, as torch: a 0-d operand counts like a scalar, its dtype
// only deciding when its category is higher (bool < integer < floating): float32 [n] with a
// float64 0-d gives float32, int32 [n] with an int64 0-d int32, int64 [n] with a float64 0-d
// float64. Two operands of the same kind promote as promote_types.
DType result_type(const Tensor& a, const Tensor& b);

}  // namespace ls
