// Embedding lookup: out[n, :] = weight[ids[n], :].
//   weight (V, C) float, ids int32/int64 of any shape (N = ids.numel()) -> out ids.shape + (C,)
// Backward (op "embedding_backward", inputs {grad (N.., C), ids}, attr num_weights = V):
//   dweight[v, :] = sum over n with ids[n] == v of grad[n, :]         -> (V, C)
// Only weight gets a gradient. The backward is deterministic for any thread count: a stable
// counting sort groups token positions by id (in token order), then rows of dweight are summed
// in parallel, each row by one thread in a fixed order, so there are no racing float atomics.
// Ids outside [0, V) raise IndexError naming the id and V (checked before anything is written).
#include <vector>

#include "cpu_loops.h"
#include "kernel_checks.h"
#include "op_args.h"
#include "ops.h"

namespace ls::ops {

std::string bad_id_message(const char* op, int64_t id, int64_t position, int64_t V) {
  return ::ls::cat(op, ": id ", id, " at position ", position, " is out of range for ", V,
             " embeddings (valid ids are 0..", V - 1, ")");
}

namespace {

// Reads ids (any integer dtype we allow) into int64 and validates the range.
std::vector<int64_t> read_ids(const Tensor& ids_in, int64_t V, const char* op) {
  LS_CHECK(ids_in.dtype() == DType::Int32 || ids_in.dtype() == DType::Int64, TypeError, op,
           ": ids must be int32 or int64, got ", dtype_name(ids_in.dtype()));
  Tensor ids = contiguous(ids_in);
  std::vector<int64_t> out(size_t(ids.numel()));
  if (ids.dtype() == DType::Int32) {
    const int32_t* p = ids.data<int32_t>();
    for (size_t i = 0; i < out.size(); ++i) out[i] = p[i];
  } else {
    const int64_t* p = ids.data<int64_t>();
    for (size_t i = 0; i < out.size(); ++i) out[i] = p[i];
  }
  for (size_t i = 0; i < out.size(); ++i)
    if (out[i] < 0 || out[i] >= V) throw IndexError(bad_id_message(op, out[i], int64_t(i), V));
  return out;
}

// cpu_kernel: the CPU kernels' dtypes (float32/float64); other backends also take 16-bit floats.
void check_weight(const Tensor& weight, const char* op, bool cpu_kernel) {
  LS_CHECK(weight.dim() == 2, ValueError, op, ": weight must be 2-D (V, C), got shape ",
           shape_str(weight.shape()));
  LS_CHECK(is_floating(weight.dtype()), TypeError, op, ": weight must be floating-point, got ",
           dtype_name(weight.dtype()));
  LS_CHECK(!cpu_kernel || weight.dtype() == DType::Float32 || weight.dtype() == DType::Float64,
           TypeError, op, ": weight must be float32 or float64 on the CPU, got ",
           dtype_name(weight.dtype()));
}

Tensors embedding_forward(const Tensors& in, const Attrs&) {
  cpu::expect_inputs(in, 2, 2, "embedding");  // weight, ids
  check_weight(in[0], "embedding", true);
  Tensor weight = contiguous(in[0]);
  const int64_t V = weight.size(0), C = weight.size(1);
  std::vector<int64_t> ids = read_ids(in[1], V, "embedding");
  Shape out_shape = in[1].shape();
  out_shape.push_back(C);
  Tensor out = Tensor::empty(out_shape, weight.dtype(), weight.device());
  const int64_t N = int64_t(ids.size());
  DISPATCH_FLOAT(weight.dtype(), "embedding", {
    const scalar_t* w = weight.data<scalar_t>();
    scalar_t* o = out.data<scalar_t>();
    cpu::parallel_rows(N, C, [&](int64_t n0, int64_t n1) {
      for (int64_t n = n0; n < n1; ++n) {
        const scalar_t* src = w + ids[n] * C;  // src points at weight[ids[n], :]
        scalar_t* dst = o + n * C;              // dst points at out[n, :]
        for (int64_t c = 0; c < C; ++c) dst[c] = src[c];
      }
    });
  });
  return {out};
}

Tensors embedding_backward_cpu(const Tensors& in, const Attrs& a) {
  cpu::expect_inputs(in, 2, 2, "embedding_backward");  // grad, ids
  const int64_t V = a.i("num_weights");
  LS_CHECK(V >= 0, ValueError, "embedding_backward: num_weights must be >= 0, got ", V);
  Tensor grad = contiguous(in[0]);
  LS_CHECK(grad.dim() >= 1, ValueError, "embedding_backward: grad must have a channel dim");
  const int64_t C = grad.size(-1);
  std::vector<int64_t> ids = read_ids(in[1], V, "embedding_backward");
  const int64_t N = int64_t(ids.size());
  LS_CHECK(grad.numel() == N * C, ValueError, "embedding_backward: grad of shape ",
           shape_str(grad.shape()), " does not match ids of shape ", shape_str(in[1].shape()),
           " plus C = ", C);

  // Stable counting sort: order[start[v] .. start[v+1]) are the positions n with ids[n] == v,
  // in increasing n. This fixes the summation order of every dweight row.
  std::vector<int64_t> start(static_cast<size_t>(V) + 1, 0), order(static_cast<size_t>(N));
  for (int64_t id : ids) start[size_t(id) + 1]++;
  for (int64_t v = 0; v < V; ++v) start[v + 1] += start[v];
  {
    std::vector<int64_t> fill(start.begin(), start.end() - 1);
    for (int64_t n = 0; n < N; ++n) order[size_t(fill[size_t(ids[n])]++)] = n;
  }

  Tensor dweight = Tensor::empty({V, C}, grad.dtype(), grad.device());
  DISPATCH_FLOAT(grad.dtype(), "embedding_backward", {
    const scalar_t* g = grad.data<scalar_t>();
    scalar_t* dw = dweight.data<scalar_t>();
    cpu::parallel_rows(V, C, [&](int64_t v0, int64_t v1) {
      for (int64_t v = v0; v < v1; ++v) {
        scalar_t* row = dw + v * C;  // row points at dweight[v, :]
        for (int64_t c = 0; c < C; ++c) row[c] = scalar_t(0);
        for (int64_t k = start[v]; k < start[v + 1]; ++k) {
          const scalar_t* src = g + order[k] * C;  // src points at grad[n, :] with ids[n] == v
          for (int64_t c = 0; c < C; ++c) row[c] += src[c];
        }
      }
    });
  });
  return {dweight};
}

}  // namespace

Tensor embedding(const Tensor& weight, const Tensor& ids) {
  LS_CHECK(weight.defined() && ids.defined(), ValueError, "embedding: weight and ids are required");
  check_weight(weight, "embedding", false);
  LS_CHECK(ids.dtype() == DType::Int32 || ids.dtype() == DType::Int64, TypeError,
           "embedding: ids must be int32 or int64, got ", dtype_name(ids.dtype()));
  LS_CHECK(ids.device() == weight.device(), ValueError, "embedding: weight is on ",
           weight.device().str(), " but ids are on ", ids.device().str());
  return call1("embedding", {weight, ids});
}

LS_REGISTER(embedding) {
  declare_op("embedding", {[](const BackwardCtx& c, const Tensors& g) {
               Tensor dw;
               if (c.needs_grad[0])
                 dw = call1("embedding_backward", {g[0], c.inputs[1]},
                            {{"num_weights", c.input_shapes[0][0]}});
               return Tensors{dw, Tensor()};
             }});
  // embedding_backward is linear in grad: its own gradient is a lookup of the incoming one.
  declare_op("embedding_backward", {[](const BackwardCtx& c, const Tensors& g) {
               Tensor dg;
               if (c.needs_grad[0])
                 dg = reshape(call1("embedding", {g[0], c.inputs[1]}), c.input_shapes[0]);
               return Tensors{dg, Tensor()};
             }});
  register_kernel("embedding", "cpu", embedding_forward, {DType::Float32, DType::Float64});
  register_kernel("embedding_backward", "cpu", embedding_backward_cpu,
                  {DType::Float32, DType::Float64});
}

}  // namespace ls::ops
