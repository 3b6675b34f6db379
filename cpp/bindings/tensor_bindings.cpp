// Tensor as seen from Python: metadata, autograd state, numpy interop and element access.
// Operators and indexing are added in python/llmscratch/_tensor.py on top of these.
#include <pybind11/functional.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <memory>

#include "core/autograd.h"
#include "core/error.h"
#include "ops/ops.h"

namespace py = pybind11;
using namespace ls;

namespace {

py::tuple to_tuple(const Shape& s) {
  py::tuple t(s.size());
  for (size_t i = 0; i < s.size(); ++i) t[i] = s[i];
  return t;
}

py::dtype numpy_dtype(DType d) {
  switch (d) {
    case DType::Float32: return py::dtype::of<float>();
    case DType::Float64: return py::dtype::of<double>();
    case DType::Float16: return py::dtype("float16");
    case DType::Int32: return py::dtype::of<int32_t>();
    case DType::Int64: return py::dtype::of<int64_t>();
    case DType::Bool: return py::dtype::of<bool>();
    case DType::UInt8: return py::dtype::of<uint8_t>();
    case DType::BFloat16: break;
  }
  throw TypeError("numpy() has no bfloat16 type: convert with .to(llmscratch.float32) first");
}

DType dtype_from_numpy(const py::dtype& dt) {
  char k = dt.kind();
  size_t n = dt.itemsize();
  if (k == 'f' && n == 4) return DType::Float32;
  if (k == 'f' && n == 8) return DType::Float64;
  if (k == 'f' && n == 2) return DType::Float16;
  if (k == 'i' && n == 4) return DType::Int32;
  if (k == 'i' && n == 8) return DType::Int64;
  if (k == 'b') return DType::Bool;
  if (k == 'u' && n == 1) return DType::UInt8;
  throw TypeError(cat("unsupported numpy dtype ", std::string(py::str(dt))));
}

// A numpy array viewing t's memory (CPU only); the array keeps the storage alive.
py::array to_numpy(const Tensor& t) {
  LS_CHECK(t.device().is_cpu(), TypeError, "numpy(): tensor is on ", t.device().str(),
           "; call .cpu() first");
  py::dtype dt = numpy_dtype(t.dtype());
  std::vector<py::ssize_t> shape(t.shape().begin(), t.shape().end()), strides;
  for (auto s : t.strides()) strides.push_back(s * py::ssize_t(itemsize(t.dtype())));
  auto* keep = new std::shared_ptr<Storage>(t.storage());
  py::capsule owner(keep, [](void* p) { delete static_cast<std::shared_ptr<Storage>*>(p); });
  return py::array(dt, shape, strides, t.raw_data(), owner);
}

// A new CPU tensor holding a copy of a numpy array's values, in `dtype` if given.
Tensor from_numpy_copy(py::array arr, std::optional<DType> dtype) {
  py::array c = py::array::ensure(arr, py::array::c_style | py::array::forcecast);
  DType src = dtype_from_numpy(c.dtype());
  Shape shape(c.shape(), c.shape() + c.ndim());
  Tensor t = Tensor::empty(shape, src, Device{});
  std::memcpy(t.raw_data(), c.data(), t.nbytes());
  return dtype && *dtype != src ? ops::to_dtype(t, *dtype) : t;
}

py::object item(const Tensor& t) {
  LS_CHECK(t.numel() == 1, ValueError, "item(): only one-element tensors can be converted to a "
           "Python scalar, got shape ", shape_str(t.shape()));
  Tensor c = ops::to_device(t, Device{});
  if (c.dtype() == DType::Int64) return py::int_(*c.data<int64_t>());  // exact past 2^53
  double v = 0;
  DISPATCH_ALL(c.dtype(), "item", { v = to_double(*c.data<scalar_t>()); });
  if (is_floating(c.dtype())) return py::float_(v);
  if (c.dtype() == DType::Bool) return py::bool_(v != 0);
  return py::int_(int64_t(v));
}

// What register_hook returns, as torch's RemovableHandle: remove() stops the hook from running
// (the tape keeps it, inert, as long as the tensor's node lives).
struct HookHandle {
  std::shared_ptr<bool> removed;
  void remove() const { *removed = true; }
};

}  // namespace

void bind_tensor(py::module_& m) {
  py::class_<HookHandle>(m, "RemovableHandle").def("remove", &HookHandle::remove);
  py::class_<Tensor>(m, "Tensor", py::dynamic_attr())
      // Tensor(other): a new handle on the same tensor (lets Python subclasses such as
      // nn.Parameter wrap an existing tensor without copying).
      .def(py::init([](const Tensor& other) { return other; }))
      .def_property_readonly("shape", [](const Tensor& t) { return to_tuple(t.shape()); })
      .def("size", [](const Tensor& t, std::optional<int64_t> d) -> py::object {
        if (d) return py::int_(t.size(*d));
        return to_tuple(t.shape());
      }, py::arg("dim") = py::none())
      .def("stride", [](const Tensor& t, std::optional<int64_t> d) -> py::object {
        if (d) return py::int_(t.stride(*d));
        return to_tuple(t.strides());
      }, py::arg("dim") = py::none())
      .def("storage_offset", &Tensor::offset)
      .def_property_readonly("ndim", &Tensor::dim)
      .def("dim", &Tensor::dim)
      .def("numel", &Tensor::numel)
      .def("__len__", [](const Tensor& t) {
        LS_CHECK(t.dim() > 0, TypeError, "len() of a 0-d tensor");
        return t.shape()[0];
      })
      .def_property_readonly("dtype", &Tensor::dtype)
      .def_property_readonly("device", &Tensor::device)
      .def_property_readonly("is_cuda", [](const Tensor& t) { return t.device().is_cuda(); })
      .def("is_contiguous", &Tensor::is_contiguous)
      .def("data_ptr", [](const Tensor& t) { return reinterpret_cast<uintptr_t>(t.raw_data()); })
      .def_property_readonly("_version", &Tensor::version)
      .def("_same", &Tensor::same)
      .def("_impl_id", [](const Tensor& t) { return reinterpret_cast<uintptr_t>(t.impl().get()); })
      // autograd
      .def_property("requires_grad", &Tensor::requires_grad,
                    [](Tensor& t, bool r) { t.set_requires_grad(r); })
      .def("requires_grad_", [](Tensor& t, bool r) { t.set_requires_grad(r); return t; },
           py::arg("requires_grad") = true)
      .def_property("grad", [](const Tensor& t) -> py::object {
        Tensor g = t.grad();
        if (!g.defined()) return py::none();
        return py::cast(g);
      }, [](const Tensor& t, py::object g) {
        LS_CHECK(g.is_none() || py::isinstance<Tensor>(g), TypeError, "assigned grad must be a Tensor or None, got ",
                 std::string(py::str(py::type::of(g).attr("__name__"))));
        t.set_grad(g.is_none() ? Tensor() : g.cast<Tensor>());
      })
      .def_property_readonly("is_leaf", &Tensor::is_leaf)
      .def_property_readonly("grad_fn", [](const Tensor& t) -> py::object {
        if (!t.grad_fn()) return py::none();
        return py::str(t.grad_fn()->name);
      })
      .def("detach", &Tensor::detach)
      // torch's `.data`: the values without autograd history and with a version counter of their
      // own, so that autograd does not see writes through it (p.data.mul_(2) between a forward
      // and its backward); assigning points a leaf at other memory, shape and dtype (set_data)
      .def_property("data", [](const Tensor& t) {
        Tensor d = t.detach();
        d.impl()->version = std::make_shared<uint64_t>(0);
        return d;
      }, [](const Tensor& t, const Tensor& src) { t.set_data(src); })
      .def("_set_data", &Tensor::set_data)
      .def("register_hook", [](const Tensor& t, py::function fn) {
        auto removed = std::make_shared<bool>(false);
        register_hook(t, [fn, removed](const Tensor& g) -> Tensor {
          if (*removed) return Tensor();  // as a hook that returned None
          py::gil_scoped_acquire gil;
          py::object r = fn(g);
          return r.is_none() ? Tensor() : r.cast<Tensor>();
        });
        return HookHandle{removed};
      })
      .def("retain_grad", [](const Tensor& t) { retain_grad(t); })
      // data access
      .def("numpy", [](const Tensor& t) {  // as torch: the array would be outside autograd
        LS_CHECK(!t.requires_grad(), RuntimeError, "Can't call numpy() on Tensor that requires grad. "
                 "Use tensor.detach().numpy() instead.");
        return to_numpy(t);
      })
      .def("item", &item)
      .def("_as_strided", &Tensor::as_strided);

  m.def("from_numpy", &from_numpy_copy, py::arg("array"), py::arg("dtype") = py::none(),
        "A new CPU tensor with a copy of the array's values");
  m.def("_numpy_view", &to_numpy);
}
