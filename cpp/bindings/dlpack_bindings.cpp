// DLPack export (__dlpack__, __dlpack_device__) and import (from_dlpack): both share memory.
// Export hands out a DLManagedTensor that owns a reference to our storage; import wraps the
// producer's memory in a Storage whose deleter calls the producer's deleter.
#include <pybind11/pybind11.h>

#include "core/error.h"
#include "core/tensor.h"
#include "dlpack.h"

namespace py = pybind11;
using namespace ls;

namespace {

struct ExportCtx {
  Tensor tensor;
  std::vector<int64_t> shape, strides;
};

DLDataType to_dl(DType d) {
  switch (d) {
    case DType::Float32: return {kDLFloat, 32, 1};
    case DType::Float64: return {kDLFloat, 64, 1};
    case DType::Float16: return {kDLFloat, 16, 1};
    case DType::BFloat16: return {kDLBfloat, 16, 1};
    case DType::Int32: return {kDLInt, 32, 1};
    case DType::Int64: return {kDLInt, 64, 1};
    case DType::Bool: return {kDLBool, 8, 1};
    case DType::UInt8: return {kDLUInt, 8, 1};
  }
  return {kDLFloat, 32, 1};
}

DType from_dl(DLDataType t) {
  LS_CHECK(t.lanes == 1, TypeError, "from_dlpack: vector dtypes (lanes=", t.lanes, ") are not supported");
  if (t.code == kDLFloat && t.bits == 32) return DType::Float32;
  if (t.code == kDLFloat && t.bits == 64) return DType::Float64;
  if (t.code == kDLFloat && t.bits == 16) return DType::Float16;
  if (t.code == kDLBfloat && t.bits == 16) return DType::BFloat16;
  if (t.code == kDLInt && t.bits == 32) return DType::Int32;
  if (t.code == kDLInt && t.bits == 64) return DType::Int64;
  if (t.code == kDLBool && t.bits == 8) return DType::Bool;
  if (t.code == kDLUInt && t.bits == 8) return DType::UInt8;
  throw TypeError(cat("from_dlpack: unsupported dtype (code ", int(t.code), ", bits ", int(t.bits), ")"));
}

py::capsule to_dlpack(const Tensor& t) {
  auto* ctx = new ExportCtx{t.detach(), t.shape(), t.strides()};
  auto* m = new DLManagedTensor{};
  m->dl_tensor.data = t.storage()->data;
  m->dl_tensor.byte_offset = uint64_t(t.offset()) * itemsize(t.dtype());
  m->dl_tensor.device = {t.device().is_cpu() ? kDLCPU : kDLCUDA, t.device().is_cpu() ? 0 : t.device().index};
  m->dl_tensor.ndim = int32_t(t.dim());
  m->dl_tensor.dtype = to_dl(t.dtype());
  m->dl_tensor.shape = ctx->shape.data();
  m->dl_tensor.strides = ctx->strides.data();
  m->manager_ctx = ctx;
  m->deleter = [](DLManagedTensor* self) {
    delete static_cast<ExportCtx*>(self->manager_ctx);
    delete self;
  };
  // A capsule nobody consumed still frees the tensor; a consumed one was renamed "used_dltensor".
  return py::capsule(m, "dltensor", [](PyObject* cap) {
    if (PyCapsule_IsValid(cap, "dltensor")) {
      auto* mt = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(cap, "dltensor"));
      if (mt && mt->deleter) mt->deleter(mt);
    }
  });
}

Tensor from_dlpack_capsule(py::capsule cap) {
  LS_CHECK(PyCapsule_IsValid(cap.ptr(), "dltensor"), ValueError,
           "from_dlpack: expected an unconsumed 'dltensor' capsule");
  auto* m = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(cap.ptr(), "dltensor"));
  PyCapsule_SetName(cap.ptr(), "used_dltensor");
  const DLTensor& dl = m->dl_tensor;
  Device dev;
  if (dl.device.device_type == kDLCUDA) dev = Device{DeviceType::CUDA, dl.device.device_id};
  else if (dl.device.device_type != kDLCPU && dl.device.device_type != kDLCUDAHost) {
    m->deleter(m);
    throw TypeError(cat("from_dlpack: unsupported device type ", dl.device.device_type));
  }
  DType dtype;
  try {
    dtype = from_dl(dl.dtype);
  } catch (...) {
    if (m->deleter) m->deleter(m);
    throw;
  }
  Shape shape(dl.shape, dl.shape + dl.ndim);
  Shape strides = dl.strides ? Shape(dl.strides, dl.strides + dl.ndim) : contiguous_strides(shape);
  size_t isz = itemsize(dtype);
  auto storage = std::make_shared<Storage>(static_cast<char*>(dl.data) + dl.byte_offset, 0, dev,
                                           [m](void*) { if (m->deleter) m->deleter(m); });
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = storage;
  impl->shape = shape;
  impl->strides = strides;
  impl->dtype = dtype;
  // Extent in bytes, so that bounds-aware code knows the size of the shared block.
  int64_t extent = 1;
  for (int64_t i = 0; i < dl.ndim; ++i) extent += (shape[i] - 1) * strides[i];
  storage->nbytes = shape_numel(shape) ? size_t(extent) * isz : 0;
  return Tensor(impl);
}

}  // namespace

void bind_dlpack(py::module_& m) {
  m.def("to_dlpack", &to_dlpack, "A DLPack capsule sharing the tensor's memory");
  m.def("from_dlpack_capsule", &from_dlpack_capsule, "A tensor sharing the capsule's memory");
  m.def("dlpack_device", [](const Tensor& t) {
    return py::make_tuple(t.device().is_cpu() ? int(kDLCPU) : int(kDLCUDA),
                          t.device().is_cpu() ? 0 : t.device().index);
  });
}
