// The C++ face of every registered op: thin typed wrappers over call(name, inputs, attrs).
// Layers, backward formulas and the bindings use these; each is implemented next to its kernels
// in cpp/ops/<stem>.cpp.
#pragma once
#include <optional>
#include <vector>

#include "core/registry.h"

namespace ls::ops {

// creation.cpp
Tensor full(const Shape& shape, double value, DType dtype, Device device);
Tensor full_like(const Tensor& t, double value);
Tensor arange(double start, double end, double step, DType dtype, Device device);
Tensor rand(const Shape& shape, DType dtype, Device device);
Tensor randn(const Shape& shape, DType dtype, Device device);
Tensor randint(int64_t low, int64_t high, const Shape& shape, DType dtype, Device device);

// copy.cpp
Tensor contiguous(const Tensor& x);       // x itself (as a new handle) when already contiguous
Tensor contiguous_copy(const Tensor& x);  // always fresh memory
Tensor to_dtype(const Tensor& x, DType dtype);
Tensor to_device(const Tensor& x, Device device);
void copy_(const Tensor& dst, const Tensor& src);  // broadcasts src into dst, casts dtype
void fill_(const Tensor& dst, double value);

// views.cpp (no copies; differentiable)
Tensor reshape(const Tensor& x, Shape shape);  // copies only when the strides do not allow a view
Tensor view(const Tensor& x, Shape shape);     // throws when a view is impossible
Tensor transpose(const Tensor& x, int64_t d0, int64_t d1);
Tensor permute(const Tensor& x, const std::vector<int64_t>& dims);
Tensor expand(const Tensor& x, const Shape& shape);
Tensor slice(const Tensor& x, int64_t dim, int64_t start, int64_t end, int64_t step = 1);
Tensor select(const Tensor& x, int64_t dim, int64_t index);
Tensor squeeze(const Tensor& x, std::optional<int64_t> dim = std::nullopt);
Tensor unsqueeze(const Tensor& x, int64_t dim);

// binary.cpp (numpy broadcasting)
Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor div(const Tensor& a, const Tensor& b);
Tensor pow(const Tensor& a, const Tensor& b);
Tensor maximum(const Tensor& a, const Tensor& b);
Tensor minimum(const Tensor& a, const Tensor& b);
Tensor compare(const Tensor& a, const Tensor& b, const std::string& how);  // eq ne lt le gt ge
Tensor scalar_like(double v, const Tensor& like);  // 0-d tensor of like's dtype and device
Tensor mul_scalar(const Tensor& a, double s);
Tensor add_scalar(const Tensor& a, double s);
// Sum a broadcast gradient back down to `shape`.
Tensor sum_to(const Tensor& g, const Shape& shape);

// unary.cpp
Tensor unary(const std::string& op, const Tensor& x);  // neg exp log sqrt rsqrt tanh sigmoid abs relu sin cos
Tensor clamp(const Tensor& x, std::optional<double> lo, std::optional<double> hi);
Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b);
Tensor masked_fill(const Tensor& x, const Tensor& mask, double value);

// reduce.cpp (dims empty = all dims)
Tensor sum(const Tensor& x, std::vector<int64_t> dims = {}, bool keepdim = false);
Tensor mean(const Tensor& x, std::vector<int64_t> dims = {}, bool keepdim = false);
Tensor var(const Tensor& x, std::vector<int64_t> dims = {}, int64_t correction = 1, bool keepdim = false);
Tensors max(const Tensor& x, int64_t dim, bool keepdim = false);  // values, int64 indices
Tensor amax(const Tensor& x);                                     // max of all elements
Tensor argmax(const Tensor& x, int64_t dim, bool keepdim = false);

// matmul.cpp
Tensor matmul(const Tensor& a, const Tensor& b);

}  // namespace ls::ops
