// The pybind11 module llmscratch_core: the Tensor type, dtypes and devices, the generic op call,
// autograd, the generator, DLPack and the backend registry. The Python package builds its API
// (functional, nn, optim) on these.
#include <pybind11/functional.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "core/autograd.h"
#include "core/error.h"
#include "core/parallel.h"
#include "core/philox.h"
#include "ops/ops.h"

namespace py = pybind11;
using namespace ls;

void bind_tensor(py::module_& m);
void bind_dlpack(py::module_& m);
void bind_ops(py::module_& m);
void bind_layers(py::module_& m);
void bind_tokenizer(py::module_& m);

// Python value -> op attribute.
AttrValue to_attr(const std::string& key, const py::handle& v) {
  if (py::isinstance<py::bool_>(v)) return v.cast<bool>();
  if (py::isinstance<py::int_>(v)) return v.cast<int64_t>();
  if (py::isinstance<py::float_>(v)) return v.cast<double>();
  if (py::isinstance<py::str>(v)) return v.cast<std::string>();
  if (py::isinstance<DType>(v)) return int64_t(v.cast<DType>());
  if (py::isinstance<py::list>(v) || py::isinstance<py::tuple>(v)) {
    std::vector<int64_t> out;
    for (auto item : v) {
      if (!py::isinstance<py::int_>(item))
        throw TypeError(cat("argument '", key, "' must be a list of integers"));
      out.push_back(item.cast<int64_t>());
    }
    return out;
  }
  throw TypeError(cat("argument '", key, "' has an unsupported type ",
                      std::string(py::str(py::type::handle_of(v).attr("__name__")))));
}

Attrs to_attrs(const py::dict& d) {
  Attrs a;
  for (auto kv : d) {
    if (kv.second.is_none()) continue;
    std::string k = kv.first.cast<std::string>();
    a.set(k, to_attr(k, kv.second));
  }
  return a;
}

Tensors to_tensors(const py::sequence& seq) {
  Tensors out;
  for (auto item : seq) out.push_back(item.is_none() ? Tensor() : item.cast<Tensor>());
  return out;
}

// The reverse: an undefined tensor (an absent input, a gradient that never came) as None.
py::list to_list(const Tensors& tensors) {
  py::list out;
  for (const Tensor& t : tensors) out.append(t.defined() ? py::cast(t) : py::none());
  return out;
}

// A Python callable stored in the op registry. The registry is a C++ static, destroyed at process
// exit after the interpreter has finalized: releasing a Python object then aborts the process, so
// the reference is dropped only while the interpreter lives (under the GIL), and leaked after.
template <typename Obj>
std::shared_ptr<Obj> hold(Obj obj) {
  return std::shared_ptr<Obj>(new Obj(std::move(obj)), [](Obj* p) {
    if (Py_IsInitialized()) {
      py::gil_scoped_acquire gil;
      delete p;
    }
  });
}

PYBIND11_MODULE(llmscratch_core, m) {
  m.doc() = "llmscratch C++ core: tensors, op registry, autograd tape, CPU and CUDA kernels";

  py::register_exception<ValueError>(m, "ValueError", PyExc_ValueError);
  py::register_exception<TypeError>(m, "TypeError", PyExc_TypeError);
  py::register_exception<IndexError>(m, "IndexError", PyExc_IndexError);
  py::register_exception<NotImplementedError>(m, "NotImplementedError", PyExc_NotImplementedError);
  py::register_exception<RuntimeError>(m, "RuntimeError", PyExc_RuntimeError);

  py::enum_<DType>(m, "DType")
      .value("float32", DType::Float32)
      .value("float64", DType::Float64)
      .value("bfloat16", DType::BFloat16)
      .value("float16", DType::Float16)
      .value("int32", DType::Int32)
      .value("int64", DType::Int64)
      .value("bool", DType::Bool)
      .value("uint8", DType::UInt8)
      .def_property_readonly("itemsize", [](DType d) { return itemsize(d); })
      .def_property_readonly("is_floating_point", [](DType d) { return is_floating(d); });
  m.def("promote_types", &promote_types);

  py::class_<Device>(m, "Device")
      .def(py::init([](const std::string& s) { return Device::parse(s); }))
      .def_property_readonly("type", [](const Device& d) { return d.is_cpu() ? "cpu" : "cuda"; })
      .def_property_readonly("index", [](const Device& d) { return d.index; })
      .def("__str__", &Device::str)
      .def("__repr__", [](const Device& d) { return "device('" + d.str() + "')"; })
      .def("__eq__", [](const Device& a, const Device& b) { return a == b; })
      .def("__eq__", [](const Device& a, const std::string& b) { return a.str() == b || (b == "cuda" && a == Device::parse(b)); })
      .def("__hash__", [](const Device& d) { return std::hash<std::string>()(d.str()); });
  py::implicitly_convertible<std::string, Device>();

  bind_tensor(m);
  bind_dlpack(m);
  bind_ops(m);
  bind_layers(m);
  bind_tokenizer(m);

  m.def("call", [](const std::string& op, const py::sequence& inputs, const py::dict& attrs) {
    return call(op, to_tensors(inputs), to_attrs(attrs));
  }, py::arg("op"), py::arg("inputs"), py::arg("attrs") = py::dict(),
     "Run a registered op by name: call('softmax', [x], {'dim': -1}) -> list of outputs");
  m.def("call_native", [](const std::string& op, const py::sequence& inputs, const py::dict& attrs) {
    return call_native(op, to_tensors(inputs), to_attrs(attrs));
  }, py::arg("op"), py::arg("inputs"), py::arg("attrs") = py::dict(),
     "call() on the device's native backend, for this thread only");
  m.def("op_names", &op_names);
  m.def("has_op", &has_op);
  m.def("op_backends", &op_backends);
  m.def("current_backend", &current_backend);
  m.def("set_backend", &set_backend);
  m.def("known_backend", &known_backend);
  m.def("backend_report", &backend_report, py::arg("reset") = false);
  m.def("declare_op", [](const std::string& name, py::object backward) {
    OpSchema s;
    if (!backward.is_none()) {
      s.save_outputs = true;
      auto held = hold(std::move(backward));
      s.backward = [held](const BackwardCtx& c, const Tensors& grads) {
        py::gil_scoped_acquire gil;
        py::object r = (*held)(c.inputs.all(), c.outputs.all(), grads, c.needs_grad);
        return to_tensors(r);
      };
    }
    declare_op(name, s);
  }, py::arg("name"), py::arg("backward") = py::none(),
     "Declare an op from Python; backward(inputs, outputs, grads, needs_grad) -> input grads");
  m.def("register_kernel", [](const std::string& op, const std::string& backend, py::function fn,
                               std::vector<DType> dtypes) {
    auto held = hold(std::move(fn));
    register_kernel(op, backend, [held](const Tensors& in, const Attrs& a) {
      py::gil_scoped_acquire gil;
      py::dict kw;
      for (auto& kv : a.items) std::visit([&](auto&& v) { kw[py::str(kv.first)] = v; }, kv.second);
      py::object r = (*held)(to_list(in), kw);  // an absent optional input arrives as None
      return to_tensors(r);
    }, std::move(dtypes));
  }, py::arg("op"), py::arg("backend"), py::arg("fn"), py::arg("dtypes") = std::vector<DType>{},
     "Register a Python implementation fn(inputs, attrs) -> outputs for (op, backend); absent "
     "optional inputs arrive as None");

  // autograd
  m.def("is_grad_enabled", &grad_enabled);
  m.def("set_grad_enabled", &set_grad_enabled);
  m.def("backward", [](const py::sequence& roots, const py::sequence& grads, bool retain_graph) {
    py::gil_scoped_release nogil;  // hooks and Python backward functions re-acquire it
    Tensors r, g;
    {
      py::gil_scoped_acquire gil;
      r = to_tensors(roots);
      g = to_tensors(grads);
    }
    run_backward(r, g, retain_graph);
  }, py::arg("roots"), py::arg("grads"), py::arg("retain_graph") = false);
  m.def("grad", [](const py::sequence& roots, const py::sequence& grads, const py::sequence& inputs,
                   bool retain_graph) {
    const Tensors r = to_tensors(roots), g = to_tensors(grads), in = to_tensors(inputs);
    Tensors out;
    {
      py::gil_scoped_release nogil;  // hooks and Python backward functions re-acquire it
      out = run_grad(r, g, in, retain_graph);
    }
    return to_list(out);
  }, py::arg("roots"), py::arg("grads"), py::arg("inputs"), py::arg("retain_graph") = false);
  m.def("is_view_of_leaf", &is_view_of_leaf);
  m.def("record_function", [](const std::string& name, const py::sequence& inputs,
                              const py::sequence& outputs, py::function backward) {
    // The tape may drop the closure without the GIL (run_backward releases a node's backward
    // as soon as it has run), so the Python callable is released under the GIL.
    std::shared_ptr<py::function> fn(new py::function(std::move(backward)), [](py::function* f) {
      py::gil_scoped_acquire gil;
      delete f;
    });
    Tensors outs = to_tensors(outputs);
    // An output that gets no gradient (an integer one) gets zeros of its shape, as torch's
    // Functions (materialized gradients); the engine fills only floating outputs.
    std::vector<std::tuple<Shape, DType, Device>> meta;
    for (const Tensor& t : outs) meta.emplace_back(t.shape(), t.dtype(), t.device());
    record_node(name, to_tensors(inputs), outs, [fn, meta](const Tensors& grads) {
      py::gil_scoped_acquire gil;
      py::list g;
      for (size_t i = 0; i < grads.size(); ++i) {
        const auto& [shape, dtype, device] = meta[i];
        g.append(grads[i].defined() ? grads[i] : ops::full(shape, 0.0, dtype, device));
      }
      return to_tensors((*fn)(g));
    });
  }, "Record a Python-defined differentiable function on the tape");

  // generator and threads
  m.def("manual_seed", [](uint64_t s) { manual_seed(s); });
  m.def("get_rng_state", [] { auto s = generator_state(); return py::make_tuple(s.seed, s.offset); });
  m.def("set_rng_state", [](uint64_t seed, uint64_t offset) { set_generator_state({seed, offset}); });
  m.def("philox4x32_10", [](uint64_t counter, uint64_t seed, uint32_t c2) {
    auto r = philox4x32_10(counter, seed, c2);
    return std::vector<uint32_t>{r.v[0], r.v[1], r.v[2], r.v[3]};
  }, py::arg("counter"), py::arg("seed"), py::arg("c2") = 0);
  m.def("cpu_empty_cache", &cpu_empty_cache, "Return cached CPU blocks to the system");
  m.def("cpu_cached_bytes", &cpu_cached_bytes);
  m.def("get_num_threads", &num_threads);
  m.def("set_num_threads", &set_num_threads);

  // CUDA. `on` refuses a device index that names no device before the runtime sees it.
  auto on = [](const char* what, int device) -> const CudaHooks& {
    const CudaHooks& cuda = require_cuda(what);
    LS_CHECK(device >= 0 && device < cuda.device_count(), ValueError, what, ": device cuda:", device,
             " does not exist (", cuda.device_count(), " CUDA devices)");
    return cuda;
  };
  m.def("cuda_available", &cuda_available);
  m.def("cuda_device_count", &cuda_device_count);
  m.def("cuda_compiled", [] { return cuda_hooks() != nullptr; });
  m.def("cuda_memory_stats", [=](int device) {
    int64_t s[5];
    on("memory_stats", device).memory_stats(device, s);
    py::dict d;
    d["allocated_bytes"] = s[0];
    d["reserved_bytes"] = s[1];
    d["peak_allocated_bytes"] = s[2];
    d["num_cuda_malloc"] = s[3];
    d["num_cuda_free"] = s[4];
    return d;
  }, py::arg("device") = 0);
  m.def("cuda_empty_cache", [] { if (cuda_hooks()) cuda_hooks()->empty_cache(); });
  m.def("cuda_reset_peak_memory_stats", [=](int device) {
    on("reset_peak_memory_stats", device).reset_peak(device);
  }, py::arg("device") = 0);
  m.def("cuda_device_name", [=](int device) {
    char name[256];
    on("get_device_name", device).device_name(device, name, sizeof(name));
    return std::string(name);
  }, py::arg("device") = 0);
  m.def("cuda_synchronize", [=](int device) { on("synchronize", device).synchronize(device); },
        py::arg("device") = 0);
  m.def("cuda_set_sync_debug_mode", [](int mode) {
    require_cuda("set_sync_debug_mode").set_sync_debug_mode(mode);
  });
  m.def("cuda_get_sync_debug_mode", [] {
    return cuda_hooks() ? cuda_hooks()->sync_debug_mode() : 0;
  });

  // Streams and events as integer handles (cudaStream_t / cudaEvent_t; 0 is the legacy default
  // stream). llmscratch.cuda wraps them in Stream and Event and owns their lifetimes.
  auto ptr = [](uintptr_t h) { return reinterpret_cast<void*>(h); };
  auto handle = [](void* p) { return reinterpret_cast<uintptr_t>(p); };
  m.def("cuda_current_stream", [=](int device) {
    return handle(on("current_stream", device).current_stream(device));
  });
  m.def("cuda_set_stream", [=](int device, uintptr_t s) {
    on("set_stream", device).set_stream(device, ptr(s));
  });
  m.def("cuda_stream_create", [=](int device, int priority) {
    return handle(on("Stream", device).stream_create(device, priority));
  });
  m.def("cuda_stream_destroy", [=](int device, uintptr_t s) {
    py::gil_scoped_release nogil;  // waits for the stream's work
    on("Stream", device).stream_destroy(device, ptr(s));
  });
  m.def("cuda_stream_synchronize", [=](int device, uintptr_t s) {
    py::gil_scoped_release nogil;
    on("Stream.synchronize", device).stream_synchronize(device, ptr(s));
  });
  m.def("cuda_stream_query", [=](int device, uintptr_t s) {
    return on("Stream.query", device).stream_query(device, ptr(s));
  });
  m.def("cuda_stream_priority_range", [] {
    int least = 0, greatest = 0;
    require_cuda("Stream.priority_range").stream_priority_range(&least, &greatest);
    return py::make_tuple(least, greatest);
  });
  m.def("cuda_event_create", [=](int device, bool timing) {
    return handle(on("Event", device).event_create(device, timing));
  });
  m.def("cuda_event_destroy", [](uintptr_t e) {
    require_cuda("Event").event_destroy(reinterpret_cast<void*>(e));
  });
  m.def("cuda_event_record", [=](uintptr_t e, int device, uintptr_t s) {
    on("Event.record", device).event_record(ptr(e), device, ptr(s));
  });
  m.def("cuda_stream_wait_event", [=](int device, uintptr_t s, uintptr_t e) {
    on("Stream.wait_event", device).stream_wait_event(device, ptr(s), ptr(e));
  });
  m.def("cuda_event_synchronize", [](uintptr_t e) {
    const CudaHooks& cuda = require_cuda("Event.synchronize");
    py::gil_scoped_release nogil;
    cuda.event_synchronize(reinterpret_cast<void*>(e));
  });
  m.def("cuda_event_query", [](uintptr_t e) {
    return require_cuda("Event.query").event_query(reinterpret_cast<void*>(e));
  });
  m.def("cuda_event_elapsed_time", [](uintptr_t start, uintptr_t end) {
    return require_cuda("Event.elapsed_time")
        .event_elapsed_ms(reinterpret_cast<void*>(start), reinterpret_cast<void*>(end));
  });
}
