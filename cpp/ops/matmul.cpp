// matmul with torch semantics: 1-D operands are promoted to a row/column and squeezed back;
// batch dims broadcast; A (..., M, K) @ B (..., K, N) -> (..., M, N).
// An optional third input, bias (N,), is added to every row of the result: a Linear layer's
// x W^T + b in one op, so a backend can add it in the GEMM's epilogue instead of a separate pass
// over the output (db = the gradient summed over all rows).
// The kernel hands each matrix to the packed GEMM with its own row/column strides, so transposed
// views (the backward's A^T and B^T) are never copied. A 2-D B against a batched A is one GEMM
// over the folded rows. Backward: dA = g B^T, dB = A^T g, each summed back to its input's shape.
#include <algorithm>

#include "core/error.h"
#include "cpu_loops.h"
#include "gemm_cpu.h"
#include "kernel_checks.h"
#include "op_args.h"
#include "ops.h"

namespace ls::ops {

// Fold all leading dims of x (..., R, C) into rows when they are uniformly strided (shared with
// the CUDA kernel).
bool fold_rows(const Tensor& x, int64_t& rows, int64_t& row_stride) {
  int64_t nd = x.dim();
  rows = x.shape()[nd - 2];
  row_stride = x.strides()[nd - 2];
  for (int64_t d = nd - 3; d >= 0; --d) {
    if (x.shape()[d] == 1) continue;
    if (x.strides()[d] != rows * row_stride && rows != 1) return false;
    if (rows == 1) row_stride = x.strides()[d];
    rows *= x.shape()[d];
  }
  return true;
}

bool contiguous_rows(const Tensor& x, int64_t& rows, int64_t& ld) {
  if (x.dim() == 0 || (x.size(-1) > 1 && x.strides().back() != 1)) return false;
  rows = 1;
  if (x.dim() >= 2 && !fold_rows(x, rows, ld)) return false;
  if (rows <= 1) ld = x.size(-1);
  return true;
}

void check_matmul_bias(const Tensor& a, const Tensor& b, const Tensor& bias) {
  if (!bias.defined()) return;
  LS_CHECK(bias.dtype() == a.dtype(), TypeError, "matmul: dtypes differ: ", dtype_name(a.dtype()),
           ", ", dtype_name(b.dtype()), " and the bias's ", dtype_name(bias.dtype()));
  LS_CHECK(bias.dim() == 1 && bias.size(0) == b.size(-1), ValueError, "matmul: the bias must be (N,) "
           "= (", b.size(-1), ",), got shape ", shape_str(bias.shape()));
}

Shape check_matmul_kernel_args(const Tensors& in, const char* backend) {
  cpu::expect_inputs(in, 2, 3, "matmul");
  const Tensor& a = in[0];
  const Tensor& b = in[1];
  LS_CHECK(a.dim() >= 2 && b.dim() >= 2, ValueError, "matmul: the ", backend, " kernel takes operands of at "
           "least 2 dims, got shapes ", shape_str(a.shape()), " and ", shape_str(b.shape()));
  LS_CHECK(a.dtype() == b.dtype(), TypeError, "matmul: dtypes differ: ", dtype_name(a.dtype()), " and ",
           dtype_name(b.dtype()));
  LS_CHECK(b.size(-2) == a.size(-1), ValueError, "matmul: shapes ", shape_str(a.shape()), " and ",
           shape_str(b.shape()), " cannot be multiplied (", a.size(-1), " != ", b.size(-2), ")");
  check_matmul_bias(a, b, in.size() > 2 ? in[2] : Tensor());
  return broadcast_shapes(Shape(a.shape().begin(), a.shape().end() - 2),
                          Shape(b.shape().begin(), b.shape().end() - 2), "matmul");
}

int64_t matmul_row_stride(int64_t N, int64_t itemsize) {
  // The copy engine and cp.async read rows at 16-byte strides: an operand with any other stride is
  // first copied into padded rows, one pass over it per GEMM (twice a step for the logits'
  // gradient). Short rows keep their length (the padding would be a large share of them); 64
  // elements align the rows to 128 bytes, and row strides divisible by 16, which triton
  // specialises on, give its kernels 16-byte vector loads.
  if (itemsize != 2 || N < 4096 || N % 8 == 0) return N;
  return (N + 63) / 64 * 64;
}

Tensor matmul_output(const Shape& shape, DType dtype, Device device) {
  const int64_t N = shape.back(), ld = matmul_row_stride(N, int64_t(itemsize(dtype)));
  if (ld == N) return Tensor::empty(shape, dtype, device);
  Shape padded = shape;
  padded.back() = ld;
  return slice(Tensor::empty(padded, dtype, device), -1, 0, N);
}

namespace {

// c[r, :] += bias for each of the `rows` rows of c (row stride N).
template <typename T>
void add_bias_rows(T* c, int64_t rows, int64_t N, const T* bias) {
  parallel_for(0, rows, std::max<int64_t>(1, 65536 / std::max<int64_t>(N, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t j = 0; j < N; ++j) c[r * N + j] += bias[j];
  });
}

Tensors matmul_cpu(const Tensors& in, const Attrs&) {
  const Shape batch = check_matmul_kernel_args(in, "CPU");
  const Tensor& a = in[0];
  const Tensor& b = in[1];
  const Tensor bias = in.size() > 2 && in[2].defined() ? contiguous(in[2]) : Tensor();
  int64_t M = a.size(-2), K = a.size(-1), N = b.size(-1);
  Shape out_shape = batch;
  out_shape.push_back(M);
  out_shape.push_back(N);
  Tensor out = Tensor::empty(out_shape, a.dtype(), a.device());
  int64_t nbatch = shape_numel(batch);

  DISPATCH_FLOAT(a.dtype(), "matmul", {
    using T = scalar_t;
    const T* pa = a.data<T>();
    const T* pb = b.data<T>();
    T* pc = out.data<T>();
    int64_t rows, rs;
    if (b.dim() == 2 && fold_rows(a, rows, rs)) {  // (..., M, K) @ (K, N): one GEMM
      cpu::gemm<T>(rows, N, K, T(1), pa, rs, a.strides().back(), pb, b.strides()[0], b.strides()[1],
                   T(0), pc, N);
      if (bias.defined()) add_bias_rows<T>(pc, rows, N, bias.data<T>());
      return Tensors{out};
    }
    Shape sa = cpu::broadcast_strides(a, out_shape), sb = cpu::broadcast_strides(b, out_shape);
    int64_t nb = int64_t(batch.size());
    auto run = [&](int64_t i) {
      int64_t oa = 0, ob = 0, rem = i;
      for (int64_t d = nb - 1; d >= 0; --d) {
        int64_t idx = rem % batch[d];
        rem /= batch[d];
        oa += idx * sa[d];
        ob += idx * sb[d];
      }
      cpu::gemm<T>(M, N, K, T(1), pa + oa, a.strides()[a.dim() - 2], a.strides()[a.dim() - 1],
                   pb + ob, b.strides()[b.dim() - 2], b.strides()[b.dim() - 1], T(0), pc + i * M * N, N);
    };
    // Many small matrices: one per thread. Few large ones: the GEMM parallelises inside.
    if (nbatch >= num_threads() && M * N * K < (int64_t(1) << 24)) {
      parallel_for(0, nbatch, 1, [&](int64_t b0, int64_t b1) {
        for (int64_t i = b0; i < b1; ++i) run(i);
      });
    } else {
      for (int64_t i = 0; i < nbatch; ++i) run(i);
    }
    if (bias.defined()) add_bias_rows<T>(pc, nbatch * M, N, bias.data<T>());
  });
  return {out};
}

Tensor mT(const Tensor& x) { return transpose(x, -1, -2); }

Tensors matmul_backward(const BackwardCtx& c, const Tensors& g) {
  // Each operand is read only for the other's gradient (a saved tensor is checked when read).
  Tensor ga, gb, gbias;
  if (c.inputs.has(2) && c.needs_grad[2])  // the bias's shape only: its values are not read
    gbias = sum_to(g[0], c.input_shapes[2]);
  if (c.needs_grad[0]) ga = sum_to(call1("matmul", {g[0], mT(c.inputs[1])}), c.input_shapes[0]);
  if (c.needs_grad[1]) {
    const Tensor& a = c.inputs[0];
    const Tensor& b = c.inputs.layout(1);  // b's strides pick the layout; its values are not read
    if (b.dim() == 2 && a.dim() >= 2) {  // weight gradient: fold the batch into one GEMM
      int64_t K = a.size(-1), N = g[0].size(-1), rows = 1;
      for (int64_t d = 0; d + 1 < a.dim(); ++d) rows *= a.size(d);  // not -1: K or N may be 0
      Tensor a2 = reshape(a, {rows, K}), g2 = reshape(g[0], {rows, N});
      // b a transposed view (x @ W^T of a Linear): compute the gradient in b's own layout, so the
      // transpose's backward hands W a contiguous gradient (no transposing copy later).
      bool b_transposed = b.strides()[0] == 1 && b.strides()[1] == b.size(0) && b.size(0) > 1;
      gb = b_transposed ? mT(call1("matmul", {mT(g2), a2})) : call1("matmul", {mT(a2), g2});
    } else {
      gb = sum_to(call1("matmul", {mT(a), g[0]}), b.shape());
    }
  }
  if (c.inputs.size() > 2) return {ga, gb, gbias};
  return {ga, gb};
}

}  // namespace

Tensor matmul(const Tensor& a, const Tensor& b) {
  LS_CHECK(a.dim() >= 1 && b.dim() >= 1, ValueError, "matmul: both operands need at least one "
           "dimension, got shapes ", shape_str(a.shape()), " and ", shape_str(b.shape()));
  LS_CHECK(a.dtype() == b.dtype(), TypeError, "matmul: dtypes differ: ", dtype_name(a.dtype()),
           " and ", dtype_name(b.dtype()));
  Tensor A = a.dim() == 1 ? unsqueeze(a, 0) : a;
  Tensor B = b.dim() == 1 ? unsqueeze(b, -1) : b;
  LS_CHECK(A.size(-1) == B.size(-2), ValueError, "matmul: shapes ", shape_str(a.shape()), " and ",
           shape_str(b.shape()), " cannot be multiplied (", A.size(-1), " != ", B.size(-2), ")");
  Tensor out = call1("matmul", {A, B});
  if (a.dim() == 1) out = squeeze(out, -2);
  if (b.dim() == 1) out = squeeze(out, -1);
  return out;
}

Tensor matmul(const Tensor& a, const Tensor& b, const Tensor& bias) {
  if (!bias.defined()) return matmul(a, b);
  LS_CHECK(a.dim() >= 2 && b.dim() >= 2, ValueError, "matmul: a bias needs operands of at least "
           "2 dims, got shapes ", shape_str(a.shape()), " and ", shape_str(b.shape()));
  LS_CHECK(a.dtype() == b.dtype(), TypeError, "matmul: dtypes differ: ", dtype_name(a.dtype()),
           " and ", dtype_name(b.dtype()));
  check_matmul_bias(a, b, bias);
  LS_CHECK(a.size(-1) == b.size(-2), ValueError, "matmul: shapes ", shape_str(a.shape()), " and ",
           shape_str(b.shape()), " cannot be multiplied (", a.size(-1), " != ", b.size(-2), ")");
  return call1("matmul", {a, b, bias});
}

Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  const Tensor wt = transpose(weight, 0, 1);  // a view, never copied
  // A (N,) bias of x's dtype goes into the matmul (added in the GEMM's epilogue where the backend
  // can); any other is added after, with the add's promotion and broadcasting (as torch)
  if (x.dim() >= 2 && (!bias.defined() || (bias.dim() == 1 && bias.dtype() == x.dtype())))
    return matmul(x, wt, bias);
  const Tensor y = matmul(x, wt);
  return bias.defined() ? add(y, bias) : y;
}

LS_REGISTER(matmul) {
  declare_op("matmul", {matmul_backward});
  register_kernel("matmul", "cpu", matmul_cpu, {DType::Float32, DType::Float64});
}

}  // namespace ls::ops
