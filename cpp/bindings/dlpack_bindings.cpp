// DLPack export (__dlpack__, __dlpack_device__) and import (from_dlpack): both share memory.
// Export hands out a DLManagedTensor that owns a reference to our storage; import wraps the
// producer's memory in a Storage whose deleter calls the producer's deleter.
#include <pybind11/functional.h>
#include <pybind11/pybind11.h>

#include <functional>

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

// Fill `dl` to describe t; the shape/strides arrays live in ctx.
void describe(const Tensor& t, ExportCtx* ctx, DLTensor& dl) {
  dl.data = t.storage()->data;
  dl.byte_offset = uint64_t(t.offset()) * itemsize(t.dtype());
  dl.device = {t.device().is_cpu() ? kDLCPU : kDLCUDA, t.device().is_cpu() ? 0 : t.device().index};
  dl.ndim = int32_t(t.dim());
  dl.dtype = to_dl(t.dtype());
  dl.shape = ctx->shape.data();
  dl.strides = ctx->strides.data();
}

// Export. versioned: a DLPack 1.0 capsule (writable); otherwise the legacy one. A capsule nobody
// consumed still frees its tensor; a consumed one was renamed "used_..." by the consumer.
py::capsule to_dlpack(const Tensor& t, bool versioned) {
  auto* ctx = new ExportCtx{t.detach(), t.shape(), t.strides()};
  if (versioned) {
    auto* m = new DLManagedTensorVersioned{};
    m->version = {1, 0};
    m->flags = 0;
    describe(t, ctx, m->dl_tensor);
    m->manager_ctx = ctx;
    m->deleter = [](DLManagedTensorVersioned* self) {
      delete static_cast<ExportCtx*>(self->manager_ctx);
      delete self;
    };
    return py::capsule(m, "dltensor_versioned", [](PyObject* cap) {
      if (PyCapsule_IsValid(cap, "dltensor_versioned")) {
        auto* mt = static_cast<DLManagedTensorVersioned*>(PyCapsule_GetPointer(cap, "dltensor_versioned"));
        if (mt && mt->deleter) mt->deleter(mt);
      }
    });
  }
  auto* m = new DLManagedTensor{};
  describe(t, ctx, m->dl_tensor);
  m->manager_ctx = ctx;
  m->deleter = [](DLManagedTensor* self) {
    delete static_cast<ExportCtx*>(self->manager_ctx);
    delete self;
  };
  return py::capsule(m, "dltensor", [](PyObject* cap) {
    if (PyCapsule_IsValid(cap, "dltensor")) {
      auto* mt = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(cap, "dltensor"));
      if (mt && mt->deleter) mt->deleter(mt);
    }
  });
}

// Wrap a producer's DLTensor; `release` hands the memory back to the producer.
Tensor wrap_dl(const DLTensor& dl, std::function<void()> release) {
  Device dev;
  if (dl.device.device_type == kDLCUDA) {
    dev = Device{DeviceType::CUDA, dl.device.device_id};
  } else if (dl.device.device_type != kDLCPU && dl.device.device_type != kDLCUDAHost) {
    release();
    throw TypeError(cat("from_dlpack: unsupported device type ", dl.device.device_type));
  }
  DType dtype;
  try {
    dtype = from_dl(dl.dtype);
  } catch (...) {
    release();
    throw;
  }
  Shape shape(dl.shape, dl.shape + dl.ndim);
  Shape strides = dl.strides ? Shape(dl.strides, dl.strides + dl.ndim) : contiguous_strides(shape);
  int64_t extent = 1;  // elements spanned, so the storage knows the size of the shared block
  for (int64_t i = 0; i < dl.ndim; ++i) extent += (shape[i] - 1) * strides[i];
  size_t nbytes = shape_numel(shape) ? size_t(extent) * itemsize(dtype) : 0;
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = std::make_shared<Storage>(static_cast<char*>(dl.data) + dl.byte_offset, nbytes,
                                            dev, [release](void*) { release(); });
  impl->shape = shape;
  impl->strides = strides;
  impl->dtype = dtype;
  return Tensor(impl);
}

Tensor from_dlpack_capsule(py::capsule cap) {
  if (PyCapsule_IsValid(cap.ptr(), "dltensor_versioned")) {
    auto* m = static_cast<DLManagedTensorVersioned*>(PyCapsule_GetPointer(cap.ptr(), "dltensor_versioned"));
    // Refused before the capsule is marked used, so that its destructor still frees it.
    LS_CHECK(m->version.major == 1, TypeError, "from_dlpack: unsupported DLPack version ",
             m->version.major, ".", m->version.minor);
    if (m->flags & kDLFlagReadOnly)  // tensors are writable; from_numpy copies on this error
      throw py::buffer_error("from_dlpack: the producer's memory is read-only; copy it first");
    PyCapsule_SetName(cap.ptr(), "used_dltensor_versioned");
    return wrap_dl(m->dl_tensor, [m] { if (m->deleter) m->deleter(m); });
  }
  LS_CHECK(PyCapsule_IsValid(cap.ptr(), "dltensor"), ValueError,
           "from_dlpack: expected an unconsumed 'dltensor' capsule");
  auto* m = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(cap.ptr(), "dltensor"));
  PyCapsule_SetName(cap.ptr(), "used_dltensor");
  return wrap_dl(m->dl_tensor, [m] { if (m->deleter) m->deleter(m); });
}

}  // namespace

void bind_dlpack(py::module_& m) {
  m.def("to_dlpack", &to_dlpack, py::arg("tensor"), py::arg("versioned") = false,
        "A DLPack capsule sharing the tensor's memory");
  m.def("from_dlpack_capsule", &from_dlpack_capsule, "A tensor sharing the capsule's memory");
  m.def("dlpack_device", [](const Tensor& t) {
    return py::make_tuple(t.device().is_cpu() ? int(kDLCPU) : int(kDLCUDA),
                          t.device().is_cpu() ? 0 : t.device().index);
  });
}
