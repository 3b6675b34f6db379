// Argument parsing and validation that an op's CPU and CUDA implementations share, so both raise
// the same errors for the same bad input (the definitions live in the op's cpp/ops/<stem>.cpp).
#pragma once
#include <cstdio>
#include <initializer_list>
#include <string>
#include <utility>

#include "core/error.h"
#include "core/registry.h"

namespace ls::ops {

// cross_entropy.cpp
enum class Reduction { None, Sum, Mean };
Reduction parse_reduction(const std::string& r, const char* op);
void check_cross_entropy_args(const Tensor& logits, const Tensor& targets,
                              const std::string& reduction, double label_smoothing);
// The stride between the rows of (N, V) logits whose rows are each contiguous and do not overlap
// (a row-padded matmul output, or a contiguous tensor; V for a single row), else -1.
int64_t cross_entropy_row_stride(const Tensor& logits);
// The in-place pair: logits that the gradient can be written into (rows as
// cross_entropy_row_stride accepts; returns that stride), and the backward's {g_loss, dlogits}
// (returns the parsed reduction and dlogits' row stride).
int64_t check_cross_entropy_inplace_logits(const Tensor& logits, const char* op);
struct InplaceBackwardArgs {
  Reduction reduction;
  int64_t row_stride;  // of dlogits
};
InplaceBackwardArgs check_cross_entropy_inplace_backward_args(const Tensor& g, const Tensor& dlogits,
                                                              const std::string& reduction);
// The backward's {g_loss, logits, targets, lse, g_lse} on every backend: five inputs, the
// gradients and lse floating (any floating dtype: the kernels convert them), (logits, targets)
// as check_cross_entropy_args, and g_loss, lse and g_lse sized for N rows. Returns the reduction.
Reduction check_cross_entropy_backward_args(const Tensors& in, const std::string& reduction,
                                            double label_smoothing);

// layer_norm.cpp, for layer_norm, rms_norm and their add_ variants: x floating with at least one
// dimension, each defined parameter (pointer, name) of shape (C,) and x's dtype, eps >= 0; and
// the fused ops' second input (the residual r, or dh in their backward): defined, of x's shape
// and dtype.
void check_norm_args(const Tensor& x,
                     std::initializer_list<std::pair<const Tensor*, const char*>> params,
                     double eps, const char* op);
void check_norm_residual(const Tensor& x, const Tensor& res, const char* op, const char* name);
// The inputs every norm backward shares, on every backend: check_norm_args for x and the weight
// (or None), the gradient g of x's shape and dtype, and dh (the fused ops' residual gradient)
// checked as a residual when defined.
void check_norm_backward_args(const Tensor& x, const Tensor& w, const Tensor& g, const Tensor& dh,
                              const char* op);
// The saved statistics a norm backward reads by x's rows, on every backend: given, floating, one
// per row of x (rstd, and mean when centered: layer norm). The CPU kernels also want them in x's
// dtype.
void check_norm_stats(const Tensor& x, const Tensor& mean, const Tensor& rstd, bool centered, const char* op);

// swiglu.cpp: two floating-point halves of one dtype and shape.
void check_swiglu_args(const Tensor& a, const Tensor& b);
// swiglu_backward's {g, a, b}: three inputs, (a, b) as check_swiglu_args, g of a's dtype and shape.
void check_swiglu_backward_args(const Tensors& in);

// rope.cpp. cpu_kernel: also require the CPU kernels' dtypes (float32/float64).
void check_rope(const Tensor& x, const Tensor& cos, const Tensor& sin, const char* op,
                bool cpu_kernel);
// rope's {x, cos, sin}: three inputs, then check_rope.
void check_rope_inputs(const Tensors& in, bool cpu_kernel);
// rope_cos_sin_backward's {g, x}: both given, of one shape (..., T, NH, HS) with HS even, one dtype.
void check_rope_cos_sin_backward_args(const Tensors& in);

// softmax.cpp: x viewed as (O, N, I) around the softmax dim (O before it, I after it).
struct RowLayout {
  int64_t O = 1, N = 1, I = 1;
};
RowLayout row_layout(const Shape& shape, int64_t dim);

// matmul.cpp: fold all leading dims of x (..., R, C) into rows when they are uniformly strided.
bool fold_rows(const Tensor& x, int64_t& rows, int64_t& row_stride);

// matmul.cpp: x (..., C) (at least 1-D) as `rows` rows of C contiguous elements, ld apart (the
// leading dims folded; ld = C for a single row, whose stride is never stepped); false when its
// layout has no such description. The slices of a fused projection (q of qkv, gate of gate|up)
// are such rows.
bool contiguous_rows(const Tensor& x, int64_t& rows, int64_t& ld);

// matmul.cpp: matmul's optional bias (undefined: none) is (N,) in a's dtype, N = b.size(-1).
void check_matmul_bias(const Tensor& a, const Tensor& b, const Tensor& bias);
// The "matmul" kernels' {a, b[, bias]} (ops::matmul handles 1-D operands before them): a
// (..., M, K) and b (..., K, N) of one dtype and broadcastable batch dims, the bias as
// check_matmul_bias. backend names the kernel in the message ("CPU", "CUDA", "Triton").
// Returns the broadcast batch shape.
Shape check_matmul_kernel_args(const Tensors& in, const char* backend);

// matmul.cpp: the row stride, in elements, of a GPU matmul output with N columns of a dtype of
// itemsize bytes: N, or for a long 16-bit row that is not a multiple of 16 bytes (GPT-2's
// 50257-wide logits) N rounded up to 64 elements, so that the tensor-core GEMMs of the backward
// read the output, or a gradient written over it (the in-place cross-entropy), where they are.
int64_t matmul_row_stride(int64_t N, int64_t itemsize);
// matmul.cpp: an uninitialised tensor of `shape` with rows of matmul_row_stride (a view of the
// first shape.back() columns of a padded buffer where they are padded).
Tensor matmul_output(const Shape& shape, DType dtype, Device device);

// index.cpp: the shape rules of gather/scatter_add (index no larger than x, and src, apart from
// dim).
void check_scatter_shapes(const char* op, const Tensor& x, int64_t dim, const Tensor& index,
                          const Tensor* src);

// index.cpp: index_select's inputs (x, index 0-d or 1-D; a 0-d x takes exactly one index);
// returns the wrapped dim.
int64_t check_index_select_args(const Tensors& in, const Attrs& a);

// topk.cpp: one input and 0 <= k <= the size of dim; returns the wrapped dim.
int64_t check_topk_args(const Tensors& in, const Attrs& a);

// moe.cpp: expert_ids (N, k) int32/int64 and n_experts > 0; returns n_experts.
int64_t check_moe_permute_args(const Tensors& in, const Attrs& a);
// moe.cpp: an index input (offsets, row) that must be int64.
void expect_int64_index(const Tensor& t, const char* op, const char* what);
// moe.cpp: moe_combine's y (R, H), gates (N, k) of y's dtype and row (N, k) int64, and for its
// backward g (N, H) of y's dtype (undefined for the forward). Row's values are not read.
void check_moe_combine_args(const Tensor& y, const Tensor& gates, const Tensor& row, const Tensor& g,
                            const char* op);
// grouped_matmul's {x (M, K), w (E, K, N) (or (E, N, K) with transpose_w), offsets} and
// grouped_matmul_weight_grad's {a (M, P), b (M, Q), offsets}: three inputs, shapes, one dtype,
// int64 offsets of shape (E+1,). The offsets' values are the kernels' to check (the CPU reads
// them; a GPU kernel takes them as they are). Returns E.
int64_t check_grouped_matmul_args(const Tensors& in, bool transpose_w);
int64_t check_grouped_matmul_weight_grad_args(const Tensors& in);

// softmax.cpp: the backwards' output y and upstream gradient g, of one dtype and shape.
void check_softmax_backward_args(const Tensor& y, const Tensor& g, const char* op);

// The IndexError texts of a value outside its range, one text on every backend (the CUDA kernels
// find such values on the device and raise at the next synchronisation, adding that they did).
// index.cpp: an index of dimension dim of size `size` (index_select, gather, scatter_add, one_hot)
std::string bad_index_message(const char* op, int64_t index, int64_t dim, int64_t size);
// embedding.cpp: the id at a position of ids, for a table of V rows
std::string bad_id_message(const char* op, int64_t id, int64_t position, int64_t V);
// cross_entropy.cpp: the target at a position, for V classes and the ignore_index that passes
std::string bad_target_message(const char* op, int64_t target, int64_t position, int64_t V,
                               int64_t ignore_index);

// Which of the three a bad value is; bad_value_message picks the text: bound is the size, V or
// the classes, extra the dim (Index) or the ignore_index (Target). The CUDA fault record
// (cuda/index_fault.cuh) carries the same fields.
enum class IndexKind : int32_t { Index, Id, Target };
std::string bad_value_message(IndexKind kind, const char* op, int64_t value, int64_t position, int64_t bound,
                              int64_t extra);

// index.cpp: the op "index_check" {index} -> {}, which raises one of the errors above for the
// first value of an int32/int64 tensor outside [0, size) (CPU: at once; CUDA: at the next
// synchronisation), for kernels that cannot raise themselves (the Triton ones). Attrs: kind
// ("index", "id" or "target"), op (the op named in the message), size, dim (kind "index") and
// ignore_index (kind "target": a value that passes).
struct IndexCheckArgs {
  IndexKind kind;
  std::string op;
  int64_t size, dim, ignore_index;
};
IndexCheckArgs parse_index_check(const Tensors& in, const Attrs& a);

// A value written into an integer tensor (full, fill_, masked_fill): within the dtype's range
// [lowest, max], as torch requires of a number (NaN and 255.5 for uint8 are refused; a fraction
// inside is dropped); past it the C++ conversion is undefined (it gave INT_MIN). Python wraps a
// negative integer for uint8 first (-1 is 255, as torch). Float and bool tensors take any value.
inline void check_fill_value(double v, DType d, const char* op) {
  bool ok = true;
  switch (d) {
    case DType::Int32: ok = v >= -2147483648.0 && v <= 2147483647.0; break;
    case DType::Int64: ok = v >= -9223372036854775808.0 && v < 9223372036854775808.0; break;  // 2^63 - 1 rounds up
    case DType::UInt8: ok = v >= 0.0 && v <= 255.0; break;
    default: return;
  }
  if (ok) return;
  char value[40];
  std::snprintf(value, sizeof value, "%.17g", v);
  throw ::ls::RuntimeError(::ls::cat(op, ": value ", value, " cannot be converted to ", dtype_name(d), " without overflow"));
}

}  // namespace ls::ops
