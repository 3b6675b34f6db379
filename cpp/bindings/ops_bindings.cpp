// Typed bindings of the C++ op wrappers (cpp/ops/ops.h) as llmscratch_core.ops. Ops without a
// C++ wrapper are reached through llmscratch_core.call(name, inputs, attrs).
#include <optional>

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "ops/kernel_checks.h"
#include "ops/op_args.h"
#include "ops/ops.h"

namespace py = pybind11;
using namespace ls;

namespace {
// A Python list of llmscratch tensors or None (an undefined Tensor), as the kernels get inputs.
Tensors tensors_of(const py::sequence& inputs) {
  Tensors in;
  for (const py::handle& t : inputs) in.push_back(t.is_none() ? Tensor() : t.cast<Tensor>());
  return in;
}
}  // namespace

void bind_ops(py::module_& root) {
  py::module_ m = root.def_submodule("ops", "C++ op wrappers");
  using namespace ls::ops;
  m.def("full", &full, py::arg("shape"), py::arg("value"), py::arg("dtype"), py::arg("device"));
  // The argument checks the CPU and CUDA kernels share (op_args.h), for the backends defined in
  // Python (the Triton kernels): bad input raises the same error on every backend.
  auto or_none = [](const std::optional<Tensor>& t) { return t ? *t : Tensor(); };
  m.def("check_norm_args", [=](const Tensor& x, std::optional<Tensor> w, std::optional<Tensor> b,
                               double eps, const std::string& op) {
    Tensor tw = or_none(w), tb = or_none(b);
    check_norm_args(x, {{&tw, "weight"}, {&tb, "bias"}}, eps, op.c_str());
  });
  m.def("check_norm_residual", [](const Tensor& x, const Tensor& res, const std::string& op,
                                  const std::string& name) { check_norm_residual(x, res, op.c_str(), name.c_str()); });
  m.def("check_norm_backward_args", [=](const Tensor& x, std::optional<Tensor> w, const Tensor& g,
                                        std::optional<Tensor> dh, const std::string& op) {
    check_norm_backward_args(x, or_none(w), g, or_none(dh), op.c_str());
  });
  m.def("check_norm_stats", [=](const Tensor& x, std::optional<Tensor> mean, std::optional<Tensor> rstd,
                                bool centered, const std::string& op) {
    check_norm_stats(x, or_none(mean), or_none(rstd), centered, op.c_str());
  });
  m.def("check_swiglu_args", &check_swiglu_args);
  m.def("check_grouped_matmul_args", [](const py::sequence& inputs, bool transpose_w) {
    check_grouped_matmul_args(tensors_of(inputs), transpose_w);
  });
  m.def("check_grouped_matmul_weight_grad_args", [](const py::sequence& inputs) {
    check_grouped_matmul_weight_grad_args(tensors_of(inputs));
  });
  m.def("check_swiglu_backward_args", [](const py::sequence& inputs) { check_swiglu_backward_args(tensors_of(inputs)); });
  m.def("check_cross_entropy_args", &check_cross_entropy_args);
  m.def("check_cross_entropy_backward_args", [](const py::sequence& inputs, const std::string& reduction,
                                                double label_smoothing) {
    check_cross_entropy_backward_args(tensors_of(inputs), reduction, label_smoothing);
  });
  m.def("check_cross_entropy_inplace_logits", [](const Tensor& logits, const std::string& op) {
    return check_cross_entropy_inplace_logits(logits, op.c_str());
  });
  m.def("check_cross_entropy_inplace_backward_args", [](const Tensor& g, const Tensor& dlogits,
                                                        const std::string& reduction) {
    return check_cross_entropy_inplace_backward_args(g, dlogits, reduction).row_stride;
  });
  m.def("check_adamw_inputs", [](const py::sequence& inputs, bool has_model_copy, bool has_grad_scale,
                                  bool params_16bit) {
    return check_adamw_inputs(tensors_of(inputs), has_model_copy, has_grad_scale, "adamw_step", params_16bit);
  });
  m.def("check_global_norm_inputs", [](const py::sequence& inputs) { return check_global_norm_inputs(tensors_of(inputs)); });
  m.def("expect_inputs", [](const py::sequence& inputs, size_t min_n, size_t max_n, const std::string& op) {
    cpu::expect_inputs(tensors_of(inputs), min_n, max_n, op.c_str());
  });
  m.def("check_softmax_backward_args", [](const Tensor& y, const Tensor& g, const std::string& op) {
    check_softmax_backward_args(y, g, op.c_str());
  });
  m.def("check_moe_combine_args", [=](const Tensor& y, const Tensor& gates, const Tensor& row,
                                      std::optional<Tensor> g, const std::string& op) {
    check_moe_combine_args(y, gates, row, or_none(g), op.c_str());
  });
  m.def("check_pointwise_backward_args", [](const py::sequence& inputs, const std::string& op) {
    cpu::check_pointwise_backward_args(tensors_of(inputs), op.c_str());
  });
  m.def("check_matmul_kernel_args", [](const py::sequence& inputs) {
    check_matmul_kernel_args(tensors_of(inputs), "Triton");
  });
  m.def("check_rope_inputs", [](const py::sequence& inputs) { check_rope_inputs(tensors_of(inputs), false); });
  m.def("check_rope_cos_sin_backward_args", [](const py::sequence& inputs) {
    check_rope_cos_sin_backward_args(tensors_of(inputs));
  });
  m.def("arange", &arange);
  m.def("linspace", &linspace);
  m.def("rand", &ops::rand);
  m.def("randn", &randn);
  m.def("randint", &randint);
  m.def("contiguous", &contiguous);
  m.def("contiguous_copy", &contiguous_copy);
  m.def("to_dtype", &to_dtype);
  m.def("to_device", &to_device, py::arg("x"), py::arg("device"), py::arg("non_blocking") = false);
  m.def("pin_memory", &pin_memory);
  m.def("is_pinned", &is_pinned);
  m.def("copy_", &copy_);
  m.def("fill_", &fill_);
  m.def("reshape", &reshape);
  m.def("view", &view);
  m.def("transpose", &transpose);
  m.def("permute", &permute);
  // always a new view (ops::expand returns x itself for its own shape), so that a flag set on
  // the result, as requires_grad_, never reaches x
  m.def("expand", [](const Tensor& x, const Shape& shape) { return call("expand", {x}, {{"shape", shape}})[0]; });
  m.def("slice", &slice);
  m.def("select", &ops::select);
  m.def("squeeze", &squeeze, py::arg("x"), py::arg("dim") = py::none());
  m.def("unsqueeze", &unsqueeze);
  m.def("add", &add);
  m.def("sub", &sub);
  m.def("mul", &mul);
  m.def("div", &ops::div);
  m.def("pow", &ops::pow);
  m.def("maximum", &maximum);
  m.def("minimum", &minimum);
  m.def("floor_divide", &floor_divide);
  m.def("remainder", &ops::remainder);
  m.def("compare", &compare);
  m.def("unary", &unary);
  m.def("clamp", &clamp);
  m.def("where", &where);
  m.def("masked_fill", py::overload_cast<const Tensor&, const Tensor&, double>(&masked_fill));
  m.def("masked_fill", py::overload_cast<const Tensor&, const Tensor&, const Tensor&>(&masked_fill));
  m.def("sum", &sum, py::arg("x"), py::arg("dims") = std::vector<int64_t>{}, py::arg("keepdim") = false);
  m.def("mean", &mean, py::arg("x"), py::arg("dims") = std::vector<int64_t>{}, py::arg("keepdim") = false);
  m.def("var", &var, py::arg("x"), py::arg("dims") = std::vector<int64_t>{}, py::arg("correction") = 1,
        py::arg("keepdim") = false);
  m.def("max", &ops::max);
  m.def("amax", &amax, py::arg("x"), py::arg("dims") = std::vector<int64_t>{}, py::arg("keepdim") = false);
  m.def("argmax", &argmax);
  m.def("matmul", [](const Tensor& a, const Tensor& b, std::optional<Tensor> bias) {
    return bias ? matmul(a, b, *bias) : matmul(a, b);
  }, py::arg("a"), py::arg("b"), py::arg("bias") = py::none());
  m.def("linear", [](const Tensor& x, const Tensor& weight, std::optional<Tensor> bias) {
    return linear(x, weight, bias ? *bias : Tensor());
  }, py::arg("x"), py::arg("weight"), py::arg("bias") = py::none());
  m.def("matmul_row_stride", &matmul_row_stride, py::arg("n"), py::arg("itemsize"));
  m.def("sum_to", &sum_to);
  m.def("adamw_step", [](const Tensors& p, const Tensors& g, const Tensors& m1, const Tensors& m2,
                         double lr, double b1, double b2, double eps, double wd, int64_t step,
                         std::optional<Tensor> scale, const Tensors& model_copies) {
    adamw_step(p, g, m1, m2, lr, b1, b2, eps, wd, step, scale ? *scale : Tensor(), model_copies);
  }, py::arg("params"), py::arg("grads"), py::arg("exp_avg"),
        py::arg("exp_avg_sq"), py::arg("lr"), py::arg("beta1"), py::arg("beta2"), py::arg("eps"),
        py::arg("weight_decay"), py::arg("step"), py::arg("grad_scale") = py::none(),
        py::arg("model_copies") = Tensors{});
  m.def("global_norm", &global_norm);
}
