// Indexing along one dimension: index_select, gather, scatter_add, one_hot.
//
//   index_select: x (A..., N, B...), index (M,) -> out (A..., M, B...)
//                 out[a, j, b] = x[a, index[j], b]
//                 d x = index_select_backward(g): zeros (A..., N, B...) with
//                       dx[a, index[j], b] += g[a, j, b]   (repeated indices accumulate)
//   gather:       x and index of the same rank, index.size(d) <= x.size(d) for d != dim;
//                 out has index's shape, out[i...] = x[i... with i_dim replaced by index[i...]]
//                 d x = scatter_add(zeros_like(x), dim, index, g)
//   scatter_add:  out = x + the scatter of src: out[i... with i_dim = index[i...]] += src[i...]
//                 for every position i of index (index.size(d) <= src.size(d) for every d and
//                 <= x.size(d) for d != dim). d x = g, d src = gather(g, dim, index), zero where
//                 src is larger than index.
//   one_hot:      index (any shape, integer) -> int64 (index.shape..., C), out[i..., index[i...]] = 1
//   index_check:  index -> nothing; raises for a value outside [0, size) (op_args.h)
//
// Data of every dtype; the additions (scatter_add, index_select's backward) of bfloat16/float16
// run in float32 and round once per output element.
// Indices are int32 or int64, each in [0, size): a negative or too large one raises IndexError
// naming the op, the value and the dimension. They are checked in one pass before any data moves,
// so nothing is half written and the workers never throw.
//
// Kernels: index_select and its backward view dense tensors as (outer, N, inner) and move whole
// rows of `inner` elements (bit copies, so every dtype is served by one code path per item size).
// gather walks index's positions in memory order, rows in parallel. scatter_add must never let
// two workers add into one output element: with dim last it runs rows in parallel (rows differ
// in a coordinate other than dim); otherwise workers own blocks of the last dimension's columns.
// Either way each output element receives its additions in a fixed order: the sums are
// deterministic, and no atomics are needed.
#include <algorithm>

#include "cpu_loops.h"
#include "op_args.h"
#include "ops.h"

namespace ls::ops {

void check_scatter_shapes(const char* op, const Tensor& x, int64_t dim, const Tensor& index,
                          const Tensor* src) {
  LS_CHECK(index.dim() == x.dim(), ValueError, op, ": index must have as many dimensions as the "
           "input, got index of shape ", shape_str(index.shape()), " and input of shape ",
           shape_str(x.shape()));
  for (int64_t d = 0; d < x.dim(); ++d)
    LS_CHECK(d == dim || index.shape()[d] <= x.shape()[d], ValueError, op, ": index of shape ",
             shape_str(index.shape()), " must be no larger than the input of shape ",
             shape_str(x.shape()), " apart from dimension ", dim);
  if (src) {
    LS_CHECK(src->dim() == x.dim(), ValueError, op, ": src must have as many dimensions as the "
             "input, got src of shape ", shape_str(src->shape()), " and input of shape ",
             shape_str(x.shape()));
    for (int64_t d = 0; d < x.dim(); ++d)
      LS_CHECK(index.shape()[d] <= src->shape()[d], ValueError, op, ": index of shape ",
               shape_str(index.shape()), " must be no larger than src of shape ",
               shape_str(src->shape()));
  }
}

int64_t check_index_select_args(const Tensors& in, const Attrs& a) {
  LS_CHECK(in.size() == 2 && in[0].defined() && in[1].defined(), TypeError,
           "index_select: expected (x, index)");
  const Tensor& x0 = in[0];
  const Tensor& index = in[1];
  LS_CHECK(index.dim() <= 1, ValueError, "index_select: index must be 0-d or 1-D, got shape ",
           shape_str(index.shape()));
  int64_t dim = wrap_dim(a.i("dim"), x0.dim(), "index_select");
  LS_CHECK(x0.dim() > 0 || index.numel() == 1, IndexError, "index_select: indexing a 0-d tensor "
           "needs exactly one index, got ", index.numel());
  return dim;
}

std::string bad_index_message(const char* op, int64_t index, int64_t dim, int64_t size) {
  return ::ls::cat(op, ": index ", index, " is out of range for dimension ", dim, " of size ", size);
}

namespace {

// The index as dense int64, after checking dtype and range.
Tensor checked_index(const Tensor& index, int64_t size, const char* op, int64_t dim) {
  LS_CHECK(index.defined(), TypeError, op, ": index is None");
  LS_CHECK(index.dtype() == DType::Int32 || index.dtype() == DType::Int64, TypeError, op,
           ": index must be int32 or int64, got ", dtype_name(index.dtype()));
  Tensor idx = contiguous(to_dtype(index, DType::Int64));
  const int64_t* p = idx.data<int64_t>();
  const int64_t n = idx.numel();
  // One branch-free pass finds whether anything is out of range (negative values wrap to huge
  // unsigned ones); only then look for which.
  const uint64_t limit = size > 0 ? uint64_t(size) : 0;
  bool bad = false;
  for (int64_t i = 0; i < n; ++i) bad |= uint64_t(p[i]) >= limit;
  if (bad)
    for (int64_t i = 0; i < n; ++i)
      if (p[i] < 0 || p[i] >= size) throw IndexError(bad_index_message(op, p[i], dim, size));
  return idx;
}

// Unsigned integer type of a given byte size: the element type of bit copies.
#define LS_DISPATCH_BITS(isz, ...)                                   \
  switch (isz) {                                                     \
    case 1: { using bits_t = uint8_t; __VA_ARGS__; break; }          \
    case 2: { using bits_t = uint16_t; __VA_ARGS__; break; }         \
    case 4: { using bits_t = uint32_t; __VA_ARGS__; break; }         \
    default: { using bits_t = uint64_t; __VA_ARGS__; break; }        \
  }

// ---- index_select -------------------------------------------------------------------------

Tensors index_select_forward_cpu(const Tensors& in, const Attrs& a) {
  const int64_t dim = check_index_select_args(in, a);
  const Tensor& x0 = in[0];
  const Tensor& index = in[1];
  // A 0-d x behaves as shape (1,) and comes back 0-d (so index holds a single 0).
  Tensor x = contiguous(x0.dim() ? x0 : reshape(x0, {1}));
  const int64_t n = x.shape()[dim], m = index.numel();
  Tensor idx = checked_index(index, n, "index_select", dim);
  Shape shape = x.shape();
  shape[dim] = m;
  Tensor out = Tensor::empty(shape, x.dtype(), x.device());
  int64_t outer = 1, inner = 1;
  for (int64_t d = 0; d < dim; ++d) outer *= shape[d];
  for (int64_t d = dim + 1; d < int64_t(shape.size()); ++d) inner *= shape[d];
  const int64_t* ip = idx.data<int64_t>();
  LS_DISPATCH_BITS(itemsize(x.dtype()), {
    const bits_t* px = x.data<bits_t>();
    bits_t* po = out.data<bits_t>();
    if (inner == 1) {  // dim is last: a gather within each row
      cpu::parallel_rows(outer, m, [&](int64_t r0, int64_t r1) {
        for (int64_t o = r0; o < r1; ++o)
          for (int64_t j = 0; j < m; ++j) po[o * m + j] = px[o * n + ip[j]];
      });
    } else {
      cpu::parallel_rows(outer * m, inner, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          int64_t o = r / m, j = r % m;
          const bits_t* src = px + (o * n + ip[j]) * inner;  // src points at x[o, index[j], :]
          std::copy(src, src + inner, po + r * inner);
        }
      });
    }
  });
  if (x0.dim() == 0) out = reshape(out, {});
  return {out};
}

// dx (outer, N, inner) = 0; dx[o, index[j], :] += g[o, j, :]. Work is split over (o, column
// block) pairs: each owns its output columns, and j runs in order, so the sums are deterministic.
Tensors index_select_backward_cpu(const Tensors& in, const Attrs& a) {
  LS_CHECK(in.size() == 2 && in[0].defined() && in[1].defined(), TypeError,
           "index_select_backward: expected (grad, index)");
  if (in[0].dtype() == DType::BFloat16 || in[0].dtype() == DType::Float16)  // sums in float32
    return {to_dtype(index_select_backward_cpu({to_dtype(in[0], DType::Float32), in[1]}, a)[0],
                     in[0].dtype())};
  Shape shape = a.ints("shape");
  Tensor g = contiguous(in[0]);
  int64_t dim = wrap_dim(a.i("dim"), int64_t(shape.size()), "index_select");
  Tensor idx = checked_index(in[1], shape.empty() ? 1 : shape[dim], "index_select", dim);
  Shape gshape = shape;
  if (!shape.empty()) gshape[dim] = idx.numel();
  LS_CHECK(in[1].dim() <= 1 && g.shape() == gshape, ValueError, "index_select_backward: grad of "
           "shape ", shape_str(g.shape()), " does not match ", shape_str(gshape), " (input shape ",
           shape_str(shape), ", ", idx.numel(), " indices along dimension ", dim, ")");
  Tensor dx = full(shape, 0.0, g.dtype(), g.device());
  if (shape.empty()) {  // 0-d x: the single gradient is g itself
    copy_(dx, g);
    return {dx};
  }
  const int64_t n = shape[dim], m = idx.numel();
  int64_t outer = 1, inner = 1;
  for (int64_t d = 0; d < dim; ++d) outer *= shape[d];
  for (int64_t d = dim + 1; d < int64_t(shape.size()); ++d) inner *= shape[d];
  if (dx.numel() == 0 || m == 0) return {dx};
  const int64_t block = 256, nblocks = (inner + block - 1) / block;
  const int64_t* ip = idx.data<int64_t>();
  DISPATCH_FLOAT(g.dtype(), "index_select_backward", {
    const scalar_t* pg = g.data<scalar_t>();
    scalar_t* pd = dx.data<scalar_t>();
    parallel_for(0, outer * nblocks, std::max<int64_t>(1, 4096 / std::max<int64_t>(m * block, 1)),
                 [&](int64_t w0, int64_t w1) {
      for (int64_t w = w0; w < w1; ++w) {
        int64_t o = w / nblocks, c0 = (w % nblocks) * block, c1 = std::min(inner, c0 + block);
        for (int64_t j = 0; j < m; ++j) {
          const scalar_t* gr = pg + (o * m + j) * inner;   // gr points at g[o, j, :]
          scalar_t* dr = pd + (o * n + ip[j]) * inner;      // dr points at dx[o, index[j], :]
          for (int64_t c = c0; c < c1; ++c) dr[c] += gr[c];
        }
      }
    });
  });
  return {dx};
}

// ---- gather / scatter_add -----------------------------------------------------------------

// Checks index against x (and src): same rank, index no larger than x off `dim` (and no larger
// than src anywhere). Returns the dense int64 index.
Tensor checked_scatter_index(const char* op, const Tensor& x, int64_t dim, const Tensor& index,
                             const Tensor* src) {
  LS_CHECK(index.defined(), TypeError, op, ": index is None");
  check_scatter_shapes(op, x, dim, index, src);
  return checked_index(index, x.dim() ? x.shape()[dim] : 1, op, dim);
}

Tensors gather_forward_cpu(const Tensors& in, const Attrs& a) {
  LS_CHECK(in.size() == 2 && in[0].defined() && in[1].defined(), TypeError,
           "gather: expected (x, index)");
  const Tensor& x = in[0];
  int64_t dim = wrap_dim(a.i("dim"), x.dim(), "gather");
  Tensor idx = checked_scatter_index("gather", x, dim, in[1], nullptr);
  Tensor out = Tensor::empty(idx.shape(), x.dtype(), x.device());
  // Walk index's positions in memory order; x's stride along dim is zeroed because that
  // coordinate comes from the index value instead.
  const int64_t xs_dim = x.dim() ? x.strides()[dim] : 0;
  Shape xst = x.strides();
  if (x.dim()) xst[dim] = 0;
  std::array<Shape, 3> st{out.strides(), idx.strides(), xst};  // out and idx are dense
  const int64_t* pi = idx.data<int64_t>();
  LS_DISPATCH_BITS(itemsize(x.dtype()), {
    const bits_t* px = x.data<bits_t>();
    bits_t* po = out.data<bits_t>();
    cpu::for_each_run(idx.shape(), st, [&](auto off, auto s, int64_t len) {
      bits_t* o = po + off[0];            // o points at out[i..., 0]
      const int64_t* ir = pi + off[1];    // ir points at index[i..., 0]
      const bits_t* xr = px + off[2];     // xr points at x[i... with i_dim = 0, 0]
      for (int64_t k = 0; k < len; ++k) o[k] = xr[k * s[2] + ir[k] * xs_dim];
    });
  });
  return {out};
}

Tensors scatter_add_forward_cpu(const Tensors& in, const Attrs& a) {
  LS_CHECK(in.size() == 3 && in[0].defined() && in[1].defined() && in[2].defined(), TypeError,
           "scatter_add: expected (x, index, src)");
  const Tensor& x = in[0];
  const Tensor& src = in[2];
  LS_CHECK(src.dtype() == x.dtype(), TypeError, "scatter_add: src dtype ", dtype_name(src.dtype()),
           " does not match the input dtype ", dtype_name(x.dtype()));
  if (x.dtype() == DType::BFloat16 || x.dtype() == DType::Float16) {
    // Sums in float32, rounded once per output element.
    Tensor r = scatter_add_forward_cpu({to_dtype(x, DType::Float32), in[1], to_dtype(src, DType::Float32)}, a)[0];
    return {to_dtype(r, x.dtype())};
  }
  int64_t dim = wrap_dim(a.i("dim"), x.dim(), "scatter_add");
  Tensor idx = checked_scatter_index("scatter_add", x, dim, in[1], &src);
  Tensor out = contiguous_copy(x);
  if (idx.numel() == 0) return {out};
  const int64_t os_dim = out.dim() ? out.strides()[dim] : 0;
  Shape ost = out.strides();
  if (out.dim()) ost[dim] = 0;  // that coordinate comes from the index value
  const Shape& shape = idx.shape();
  const int64_t nd = int64_t(shape.size());
  const int64_t* pi = idx.data<int64_t>();
  DISPATCH_NUMERIC(x.dtype(), "scatter_add", {
    const scalar_t* ps = src.data<scalar_t>();
    scalar_t* po = out.data<scalar_t>();
    if (nd == 0 || dim == nd - 1) {
      // Runs go along dim; different runs have different other coordinates, so they write
      // different output lines and can run in parallel.
      std::array<Shape, 3> st{ost, idx.strides(), src.strides()};
      cpu::for_each_run(shape, st, [&](auto off, auto s, int64_t len) {
        scalar_t* o = po + off[0];  // o points at out[i..., 0]
        for (int64_t k = 0; k < len; ++k) {
          scalar_t& d = o[pi[off[1] + k * s[1]] * os_dim];
          d = scalar_t(d + ps[off[2] + k * s[2]]);
        }
      });
    } else {
      // dim is not last: rows that differ only along dim may hit the same output, but different
      // columns of the last dimension never do. Each worker owns a block of columns and walks
      // every row in order (so the sums are deterministic and memory is read row by row).
      const int64_t cols = shape[nd - 1], rows = idx.numel() / cols;
      const int64_t block = std::max<int64_t>(16, (cols + 2 * num_threads() - 1) / (2 * num_threads()));
      const int64_t os_c = ost[nd - 1], is_c = idx.strides()[nd - 1], ss_c = src.strides()[nd - 1];
      parallel_for(0, (cols + block - 1) / block, 1, [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          int64_t c0 = b * block, c1 = std::min(cols, c0 + block);
          for (int64_t r = 0; r < rows; ++r) {
            int64_t oo = 0, io = 0, so = 0, rem = r;  // offsets of row r's first element
            for (int64_t d = nd - 2; d >= 0; --d) {
              int64_t i = rem % shape[d];
              rem /= shape[d];
              oo += i * ost[d];
              io += i * idx.strides()[d];
              so += i * src.strides()[d];
            }
            for (int64_t c = c0; c < c1; ++c) {
              scalar_t& d = po[oo + c * os_c + pi[io + c * is_c] * os_dim];
              d = scalar_t(d + ps[so + c * ss_c]);
            }
          }
        }
      });
    }
  });
  return {out};
}

Tensors gather_backward(const BackwardCtx& c, const Tensors& g) {
  if (!c.needs_grad[0]) return {Tensor(), Tensor()};
  int64_t dim = c.attrs.i("dim");
  Tensor z = full(c.input_shapes[0], 0.0, g[0].dtype(), g[0].device());
  return {scatter_add(z, dim, c.inputs[1], g[0]), Tensor()};
}

Tensors scatter_add_backward(const BackwardCtx& c, const Tensors& g) {
  Tensors grads(3);
  if (c.needs_grad[0]) grads[0] = g[0];
  if (c.needs_grad[2]) {
    int64_t dim = c.attrs.i("dim");
    Tensor gs = gather(g[0], dim, c.inputs[1]);
    const Shape& src_shape = c.input_shapes[2];
    if (gs.shape() != src_shape) {  // src positions that index does not cover get no gradient
      Tensor z = full(src_shape, 0.0, gs.dtype(), gs.device());
      Tensor v = z;
      for (int64_t d = 0; d < int64_t(src_shape.size()); ++d) v = slice(v, d, 0, gs.shape()[d]);
      copy_(v, gs);
      gs = z;
    }
    grads[2] = gs;
  }
  return grads;
}

// ---- one_hot ------------------------------------------------------------------------------

Tensors one_hot_forward_cpu(const Tensors& in, const Attrs& a) {
  LS_CHECK(in.size() == 1 && in[0].defined(), TypeError, "one_hot: expected one index tensor, got ",
           in.size());
  const Tensor& index = in[0];
  LS_CHECK(index.dtype() == DType::Int32 || index.dtype() == DType::Int64, TypeError,
           "one_hot: index must be int32 or int64, got ", dtype_name(index.dtype()));
  int64_t classes = a.i("num_classes", -1);
  LS_CHECK(classes >= -1, ValueError, "one_hot: num_classes must be -1 or non-negative, got ", classes);
  Tensor idx = contiguous(to_dtype(index, DType::Int64));
  const int64_t* p = idx.data<int64_t>();
  if (classes == -1) {
    LS_CHECK(idx.numel() > 0, ValueError,
             "one_hot: cannot infer num_classes from an empty index; pass num_classes");
    classes = std::max<int64_t>(*std::max_element(p, p + idx.numel()), -1) + 1;  // negatives fail below
  }
  checked_index(idx, classes, "one_hot", index.dim());
  Shape shape = index.shape();
  shape.push_back(classes);
  Tensor out = full(shape, 0.0, DType::Int64, index.device());
  int64_t* o = out.data<int64_t>();
  parallel_for(0, idx.numel(), 16384, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) o[i * classes + p[i]] = 1;  // o[i, :] is row i of the output
  });
  return {out};
}

}  // namespace

Tensor index_select(const Tensor& x, int64_t dim, const Tensor& index) {
  return call1("index_select", {x, index}, {{"dim", dim}});
}

Tensor gather(const Tensor& x, int64_t dim, const Tensor& index) {
  return call1("gather", {x, index}, {{"dim", dim}});
}

Tensor scatter_add(const Tensor& x, int64_t dim, const Tensor& index, const Tensor& src) {
  return call1("scatter_add", {x, index, src}, {{"dim", dim}});
}

Tensor one_hot(const Tensor& index, int64_t num_classes) {
  return call1("one_hot", {index}, {{"num_classes", num_classes}});
}

IndexCheckArgs parse_index_check(const Tensors& in, const Attrs& a) {
  LS_CHECK(in.size() == 1 && in[0].defined(), ValueError, "index_check: expected one input, the index");
  LS_CHECK(in[0].dtype() == DType::Int32 || in[0].dtype() == DType::Int64, TypeError,
           "index_check: index must be int32 or int64, got ", dtype_name(in[0].dtype()));
  const std::string kind = a.s("kind", "index");
  IndexCheckArgs r{IndexKind::Index, a.s("op", "index_check"), a.i("size"), a.i("dim", 0),
                   a.i("ignore_index", -100)};
  if (kind == "id") r.kind = IndexKind::Id;
  else if (kind == "target") r.kind = IndexKind::Target;
  else LS_CHECK(kind == "index", ValueError, "index_check: kind must be index, id or target, got ", kind);
  LS_CHECK(r.size >= 0, ValueError, "index_check: size must be >= 0, got ", r.size);
  return r;
}

std::string bad_value_message(IndexKind kind, const char* op, int64_t value, int64_t position, int64_t bound,
                              int64_t extra) {
  switch (kind) {
    case IndexKind::Target: return bad_target_message(op, value, position, bound, extra);
    case IndexKind::Id: return bad_id_message(op, value, position, bound);
    default: return bad_index_message(op, value, extra, bound);
  }
}

namespace {

Tensors index_check_cpu(const Tensors& in, const Attrs& a) {
  const IndexCheckArgs c = parse_index_check(in, a);
  Tensor idx = contiguous(in[0]);
  auto scan = [&](const auto* p) {
    for (int64_t i = 0; i < idx.numel(); ++i) {
      const int64_t v = int64_t(p[i]);
      if ((v >= 0 && v < c.size) || (c.kind == IndexKind::Target && v == c.ignore_index)) continue;
      throw IndexError(bad_value_message(c.kind, c.op.c_str(), v, i, c.size,
                                         c.kind == IndexKind::Target ? c.ignore_index : c.dim));
    }
  };
  if (idx.dtype() == DType::Int32) scan(idx.data<int32_t>());
  else scan(idx.data<int64_t>());
  return {};
}

}  // namespace

LS_REGISTER(index) {
  const std::vector<DType> kNumeric = {DType::Float32, DType::Float64, DType::BFloat16, DType::Float16,
                                       DType::Int32, DType::Int64, DType::UInt8, DType::Bool};
  declare_op("index_select", {[](const BackwardCtx& c, const Tensors& g) {
                                if (!c.needs_grad[0]) return Tensors{Tensor(), Tensor()};
                                Attrs a{{"dim", c.attrs.i("dim")}, {"shape", c.input_shapes[0]}};
                                return Tensors{call1("index_select_backward", {g[0], c.inputs[1]}, a),
                                               Tensor()};
                              }});
  // Its own gradient (for double backward) selects the same rows again.
  declare_op("index_select_backward", {[](const BackwardCtx& c, const Tensors& g) {
                                         return Tensors{index_select(g[0], c.attrs.i("dim"), c.inputs[1]),
                                                        Tensor()};
                                       }});
  declare_op("gather", {gather_backward});
  declare_op("scatter_add", {scatter_add_backward});
  declare_op("one_hot", {});
  register_kernel("index_select", "cpu", index_select_forward_cpu);
  register_kernel("index_select_backward", "cpu", index_select_backward_cpu,
                  {DType::Float32, DType::Float64, DType::BFloat16, DType::Float16});
  register_kernel("gather", "cpu", gather_forward_cpu);
  register_kernel("scatter_add", "cpu", scatter_add_forward_cpu, kNumeric);
  register_kernel("one_hot", "cpu", one_hot_forward_cpu);
  declare_op("index_check", {});
  register_kernel("index_check", "cpu", index_check_cpu, {DType::Int32, DType::Int64});
}

#undef LS_DISPATCH_BITS

}  // namespace ls::ops
