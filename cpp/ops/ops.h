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
Tensor linspace(double start, double end, int64_t steps, DType dtype, Device device);
Tensor rand(const Shape& shape, DType dtype, Device device);
Tensor randn(const Shape& shape, DType dtype, Device device);
Tensor randint(int64_t low, int64_t high, const Shape& shape, DType dtype, Device device);

// copy.cpp
Tensor contiguous(const Tensor& x);       // x itself (as a new handle) when already contiguous
Tensor contiguous_copy(const Tensor& x);  // always fresh memory
Tensor to_dtype(const Tensor& x, DType dtype);
// non_blocking: a host->device copy from pinned memory is queued on the current stream and
// returns at once (other copies ignore it and complete before returning).
Tensor to_device(const Tensor& x, Device device, bool non_blocking = false);
Tensor pin_memory(const Tensor& x);  // x in page-locked memory (x itself when already pinned)
bool is_pinned(const Tensor& x);
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
Tensor floor_divide(const Tensor& a, const Tensor& b);  // a // b, rounded toward -inf
Tensor remainder(const Tensor& a, const Tensor& b);     // a % b, with b's sign
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
// value a 0-d tensor (of x's device), cast to x's dtype: an int64 past 2^53, which a double rounds
Tensor masked_fill(const Tensor& x, const Tensor& mask, const Tensor& value);

// reduce.cpp (dims empty = all dims)
Tensor sum(const Tensor& x, std::vector<int64_t> dims = {}, bool keepdim = false);
Tensor mean(const Tensor& x, std::vector<int64_t> dims = {}, bool keepdim = false);
Tensor var(const Tensor& x, std::vector<int64_t> dims = {}, int64_t correction = 1, bool keepdim = false);
Tensors max(const Tensor& x, int64_t dim, bool keepdim = false);  // values, int64 indices
// the max over dims (none: every element), its gradient split over ties, as torch's amax
Tensor amax(const Tensor& x, std::vector<int64_t> dims = {}, bool keepdim = false);
Tensor argmax(const Tensor& x, int64_t dim, bool keepdim = false);

// matmul.cpp
Tensor matmul(const Tensor& a, const Tensor& b);
// a @ b + bias, bias (N,) added to every row (a Linear layer: one op, the bias in the epilogue)
Tensor matmul(const Tensor& a, const Tensor& b, const Tensor& bias);
// x @ weight^T + bias (bias undefined: none), weight (out, in), as torch.nn.functional.linear
Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias);

// softmax.cpp (along `dim`, fp32/fp64, fused row kernels)
Tensor softmax(const Tensor& x, int64_t dim);
Tensor log_softmax(const Tensor& x, int64_t dim);

// layer_norm.cpp: over the last dim; registry op "layer_norm" returns {y, mean, rstd}, each
// statistic of shape x.shape[:-1]; its backward is op "layer_norm_backward".
Tensor layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps);
// rms_norm.cpp: y = x * rsqrt(mean(x^2) + eps) * weight; op "rms_norm" returns {y, rstd}.
Tensor rms_norm(const Tensor& x, const Tensor& weight, double eps);

// gelu.cpp (approximate: "none" = erf, "tanh"), silu.cpp, swiglu.cpp: silu(a) * b
Tensor gelu(const Tensor& x, const std::string& approximate = "none");
Tensor silu(const Tensor& x);
Tensor swiglu(const Tensor& a, const Tensor& b);

// embedding.cpp: weight (V, C), ids int32/int64 of any shape -> ids.shape + (C,)
Tensor embedding(const Tensor& weight, const Tensor& ids);

// cross_entropy.cpp: logits (N, V), targets (N,) int -> loss; reduction "mean" | "sum" | "none".
// Mean is over targets != ignore_index. Fused log-softmax + NLL; op returns {loss, lse}.
Tensor cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore_index = -100,
                     const std::string& reduction = "mean", double label_smoothing = 0.0);

// dropout.cpp: Philox mask recomputed in the backward (nothing stored); scales kept by 1/(1-p).
Tensor dropout(const Tensor& x, double p, bool training = true);

// rope.cpp: x (B, T, NH, HS); cos, sin (T, HS/2). interleaved: pairs (2i, 2i+1) (GPT-J/Meta);
// otherwise half-split: pairs (i, i + HS/2) (GPT-NeoX/Hugging Face LLaMA).
Tensor rope(const Tensor& x, const Tensor& cos, const Tensor& sin, bool interleaved = false);

// attention.cpp: q (B, NH, T, HS), k and v (B, NKV, S, HS) with NH % NKV == 0 (GQA shares each
// kv head among NH / NKV query heads). mask: optional bool (T, S) (true = attend) or float
// additive, broadcastable to (B, NH, T, S). Causal masks key s > query t + (S - T).
// Op "attention" returns {out (B, NH, T, HS), lse (B, NH, T)}; backward "attention_backward".
Tensors attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask,
                  bool causal, std::optional<double> scale = std::nullopt);

// concat.cpp
Tensor cat(const std::vector<Tensor>& xs, int64_t dim);
// Validates cat's inputs (every backend's kernel calls it) and returns the output shape; `dim`
// comes back normalised.
Shape cat_shape(const std::vector<Tensor>& xs, int64_t& dim);
Tensor stack(const std::vector<Tensor>& xs, int64_t dim);
std::vector<Tensor> split(const Tensor& x, const std::vector<int64_t>& sizes, int64_t dim);
std::vector<Tensor> chunk(const Tensor& x, int64_t chunks, int64_t dim);
// The pieces g as the tensor of x_shape they tile along dim (0 <= dim < rank), when they lie in
// one buffer that way (one storage and dtype, the same strides, each starting where the previous
// one ends along dim, together non-overlapping); undefined otherwise. split's backward takes such
// gradients whole, and the CUDA backwards of slices of one projection (SwiGLU's halves, the
// attention's q, k, v heads) write theirs into one buffer laid out so.
Tensor tiled_view(const std::vector<Tensor>& g, const Shape& x_shape, int64_t dim);

// index.cpp (indices int32 or int64; out-of-range indices raise IndexError)
Tensor index_select(const Tensor& x, int64_t dim, const Tensor& index);
Tensor gather(const Tensor& x, int64_t dim, const Tensor& index);
Tensor scatter_add(const Tensor& x, int64_t dim, const Tensor& index, const Tensor& src);
Tensor one_hot(const Tensor& index, int64_t num_classes);  // int64 output

// topk.cpp, sort.cpp, cumsum.cpp
Tensors topk(const Tensor& x, int64_t k, int64_t dim = -1, bool largest = true);  // values, int64 indices
Tensors sort(const Tensor& x, int64_t dim = -1, bool descending = false);        // stable
Tensor argsort(const Tensor& x, int64_t dim = -1, bool descending = false);
Tensor cumsum(const Tensor& x, int64_t dim);

// optim/adamw.cpp: fused multi-tensor AdamW (in place) and the global L2 norm (0-d float32).
// grads may be bfloat16/float16 for float32 params; model_copies (empty, or one bfloat16/float16
// tensor per param) receive the updated weights rounded, in the same pass.
void adamw_step(const Tensors& params, const Tensors& grads, const Tensors& exp_avg,
                const Tensors& exp_avg_sq, double lr, double beta1, double beta2, double eps,
                double weight_decay, int64_t step, const Tensor& grad_scale = Tensor(),
                const Tensors& model_copies = {});
Tensor global_norm(const Tensors& tensors);
// The input checks of the "adamw_step" kernels: P tensors per group, the dtype rules, one shape
// per parameter, contiguous memory. Returns P. params_16bit: bfloat16/float16 parameters too
// (the Triton kernel's; their gradients and moments in their dtype).
size_t check_adamw_inputs(const Tensors& in, bool has_model_copy, bool has_grad_scale, const char* op,
                          bool params_16bit = false);
// The input checks of the "global_norm" kernels: at least one tensor, each given and floating.
// Returns the norm's dtype: float64 when a tensor is float64 (torch's, whose norm follows the
// gradients' dtype), else float32 (16-bit gradients too: their squares are summed wider).
DType check_global_norm_inputs(const Tensors& in);
}  // namespace ls::ops
