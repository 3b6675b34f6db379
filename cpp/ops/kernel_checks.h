// Argument checks for kernels that call() can reach directly (from Python: core.call(name, ...)),
// so a wrong input count or a missing tensor raises an error naming the op instead of crashing.
#pragma once
#include "core/error.h"
#include "core/registry.h"

namespace ls::cpu {

// Between min_n and max_n inputs; the first min_n must be defined. Inputs past in.size() are
// optional ones left out.
inline void expect_inputs(const Tensors& in, size_t min_n, size_t max_n, const char* op) {
  LS_CHECK(in.size() >= min_n && in.size() <= max_n, ValueError, op, ": expected ",
           min_n == max_n ? ::ls::cat(min_n) : ::ls::cat(min_n, " to ", max_n), " inputs, got ",
           in.size());
  for (size_t i = 0; i < min_n; ++i)
    LS_CHECK(in[i].defined(), ValueError, op, ": input ", i, " must not be None");
}

// The optional input i, or an undefined Tensor when it was left out.
inline Tensor optional_input(const Tensors& in, size_t i) { return i < in.size() ? in[i] : Tensor(); }
inline Tensor optional_input(const SavedTensors& in, size_t i) { return i < in.size() ? in[i] : Tensor(); }

// Two tensors the kernel reads as the same element type.
inline void expect_same_dtype(const Tensor& a, const Tensor& b, const char* op, const char* what) {
  LS_CHECK(a.dtype() == b.dtype(), TypeError, op, ": ", what, " dtype ", dtype_name(b.dtype()),
           " differs from the input dtype ", dtype_name(a.dtype()));
}

// The inputs {g, x} of an elementwise op's backward (gelu, silu): two, g of x's dtype and shape.
inline void check_pointwise_backward_args(const Tensors& in, const char* op) {
  expect_inputs(in, 2, 2, op);
  expect_same_dtype(in[1], in[0], op, "gradient");
  LS_CHECK(in[0].shape() == in[1].shape(), ValueError, op, ": gradient of shape ", shape_str(in[0].shape()),
           " does not match the input shape ", shape_str(in[1].shape()));
}

}  // namespace ls::cpu
