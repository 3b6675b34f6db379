// llmscratch_core.layers: the C++ layers, with their parameters readable and assignable (the
// Python modules assign moved/cast parameters back so both sides hold the same tensors). copy.copy
// of a layer shares its tensors: Module.__deepcopy__ then assigns the copied parameters.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "layers/layers.h"

namespace py = pybind11;
using namespace ls;
using namespace ls::layers;

namespace {
// Optional parameters: an undefined tensor reads as None and None assigns "none".
template <typename C>
void optional_tensor(py::class_<C>& cls, const char* name, Tensor C::*field) {
  cls.def_property(name, [field](const C& c) -> py::object {
    const Tensor& t = c.*field;
    return t.defined() ? py::cast(t) : py::none();
  }, [field](C& c, py::object v) { c.*field = v.is_none() ? Tensor() : v.cast<Tensor>(); });
}
// copy.copy of a layer: a layer sharing its tensors (Module.__deepcopy__ then assigns the copies).
template <typename C>
py::class_<C>& copyable(py::class_<C>& cls) {
  return cls.def("__copy__", [](const C& c) { return C(c); });
}
}  // namespace

void bind_layers(py::module_& root) {
  py::module_ m = root.def_submodule("layers", "C++ layers that own their parameters");

  py::class_<Linear> linear(m, "Linear");
  linear.def(py::init<int64_t, int64_t, bool, DType, Device>(), py::arg("in_features"),
             py::arg("out_features"), py::arg("bias"), py::arg("dtype"), py::arg("device"))
      .def_readwrite("weight", &Linear::weight)
      .def("forward", &Linear::forward)
      .def("named_parameters", &Linear::named_parameters);
  optional_tensor(linear, "bias", &Linear::bias);
  copyable(linear);

  py::class_<Embedding> emb(m, "Embedding");
  emb.def(py::init<int64_t, int64_t, DType, Device>())
      .def_readwrite("weight", &Embedding::weight)
      .def("forward", &Embedding::forward)
      .def("named_parameters", &Embedding::named_parameters);
  copyable(emb);

  py::class_<LayerNorm> ln(m, "LayerNorm");
  ln.def(py::init<int64_t, double, bool, bool, DType, Device>())
      .def_readwrite("eps", &LayerNorm::eps)
      .def("forward", &LayerNorm::forward)
      .def("named_parameters", &LayerNorm::named_parameters);
  optional_tensor(ln, "weight", &LayerNorm::weight);
  optional_tensor(ln, "bias", &LayerNorm::bias);
  copyable(ln);

  py::class_<RMSNorm> rms(m, "RMSNorm");
  rms.def(py::init<int64_t, double, bool, DType, Device>())
      .def_readwrite("eps", &RMSNorm::eps)
      .def("forward", &RMSNorm::forward)
      .def("named_parameters", &RMSNorm::named_parameters);
  optional_tensor(rms, "weight", &RMSNorm::weight);
  copyable(rms);
}
