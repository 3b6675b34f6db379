// Joining and cutting along one dimension: cat, stack, split, chunk.
//
//   cat:   xs[i] of shape (A..., N_i, B...)  ->  out (A..., sum_i N_i, B...)
//          out[a, off_i + n, b] = xs[i][a, n, b]        off_i = N_0 + ... + N_{i-1}
//          d xs[i] = g[:, off_i : off_i + N_i, :]       (a view of g, no copy)
//   stack: xs[i] all of shape S -> out of shape S with a new dimension of size len(xs) at `dim`;
//          = cat of the inputs unsqueezed at `dim`; d xs[i] = select(g, dim, i).
//   split: x (A..., N, B...) -> views x[:, off_j : off_j + sizes[j], :], sum(sizes) == N;
//          d x = cat(g_j) along dim (one node, so the gradient is assembled in one pass instead
//          of one zero-filled tensor per piece), or, when the g_j already lie side by side in
//          one buffer as the pieces of a tensor of x's shape (the CUDA attention backward writes
//          the dq, dk, dv of a fused qkv projection so), that tensor: a view, no copy.
//          chunk = split into ceil(N / chunks) sized
//          pieces, the last one smaller (torch semantics: fewer than `chunks` pieces can come out).
//
// The cat kernel views each contiguous input as (outer, N_i * inner) rows and copies row o of
// every input into row o of the output with memcpy, rows split over the thread pool; an input
// that is not contiguous is written through a strided copy into its slice of the output.
// As in torch, 1-D empty tensors of shape (0,) are skipped by cat whatever the other ranks.
// split and stack are registered for backend "any": they only build views or call cat.
#include <algorithm>
#include <cstring>
#include <utility>

#include "cpu_loops.h"
#include "ops.h"

namespace ls::ops {

namespace {
bool legacy_empty(const Tensor& t) { return t.dim() == 1 && t.shape()[0] == 0; }
}  // namespace

Shape cat_shape(const Tensors& xs, int64_t& dim) {
  LS_CHECK(!xs.empty(), ValueError, "cat: expected a non-empty list of tensors");
  const Tensor* ref = nullptr;
  int64_t ref_i = 0;
  for (size_t i = 0; i < xs.size(); ++i) {
    LS_CHECK(xs[i].defined(), TypeError, "cat: tensor ", i, " is None");
    LS_CHECK(xs[i].dtype() == xs[0].dtype(), TypeError, "cat: expected all tensors to have dtype ",
             dtype_name(xs[0].dtype()), ", got ", dtype_name(xs[i].dtype()), " for tensor ", i);
    LS_CHECK(xs[i].dim() > 0, ValueError, "cat: zero-dimensional tensor (at position ", i,
             ") cannot be concatenated");
    if (!ref && !legacy_empty(xs[i])) {
      ref = &xs[i];
      ref_i = int64_t(i);
    }
  }
  if (!ref) {  // only (0,) tensors: the result is one too
    wrap_dim(dim, 1, "cat");
    dim = 0;
    return {0};
  }
  dim = wrap_dim(dim, ref->dim(), "cat");
  Shape out = ref->shape();
  out[dim] = 0;
  for (size_t i = 0; i < xs.size(); ++i) {
    const Tensor& x = xs[i];
    if (legacy_empty(x)) continue;
    LS_CHECK(x.dim() == ref->dim(), ValueError, "cat: tensors must have the same number of "
             "dimensions: tensor ", ref_i, " has shape ", shape_str(ref->shape()), " and tensor ", i,
             " has shape ", shape_str(x.shape()));
    for (int64_t d = 0; d < x.dim(); ++d)
      LS_CHECK(d == dim || x.shape()[d] == ref->shape()[d], ValueError,
               "cat: sizes of tensors must match except in dimension ", dim, ": tensor ", ref_i,
               " has shape ", shape_str(ref->shape()), " and tensor ", i, " has shape ",
               shape_str(x.shape()));
    out[dim] += x.shape()[dim];
  }
  return out;
}

namespace {

Tensors cat_forward_cpu(const Tensors& xs, const Attrs& a) {
  int64_t dim = a.i("dim", 0);
  Shape shape = cat_shape(xs, dim);
  Tensor out = Tensor::empty(shape, xs[0].dtype(), xs[0].device());
  if (out.numel() == 0) return {out};
  int64_t outer = 1, inner = 1;
  for (int64_t d = 0; d < dim; ++d) outer *= shape[d];
  for (int64_t d = dim + 1; d < int64_t(shape.size()); ++d) inner *= shape[d];
  const size_t isz = itemsize(out.dtype());
  const int64_t out_row = shape[dim] * inner;  // elements per output row

  // Dense inputs go through one memcpy per (row, input); the others through a strided copy.
  struct Piece { const char* src; int64_t offset, len; };  // len, offset: elements within a row
  std::vector<Piece> dense;
  int64_t off = 0;
  for (const Tensor& x : xs) {
    if (legacy_empty(x)) continue;
    int64_t len = x.shape()[dim] * inner;
    if (len > 0) {
      if (x.is_contiguous()) {
        dense.push_back({static_cast<const char*>(x.raw_data()), off, len});
      } else {
        copy_(slice(out, dim, off / inner, off / inner + x.shape()[dim]), x);
      }
    }
    off += len;
  }
  char* o = static_cast<char*>(out.raw_data());
  cpu::parallel_rows(outer, out_row, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      for (const Piece& p : dense)  // o points at out[r, off_i, :]
        std::memcpy(o + (r * out_row + p.offset) * isz, p.src + r * p.len * isz, p.len * isz);
  });
  return {out};
}

Tensors cat_backward(const BackwardCtx& c, const Tensors& g) {
  int64_t dim = c.attrs.i("dim", 0);
  Tensors grads(c.input_shapes.size());
  bool any = false;
  for (auto& s : c.input_shapes) any = any || !(s.size() == 1 && s[0] == 0);
  if (!any) return grads;
  for (auto& s : c.input_shapes)
    if (!(s.size() == 1 && s[0] == 0)) { dim = wrap_dim(dim, int64_t(s.size()), "cat"); break; }
  int64_t off = 0;
  for (size_t i = 0; i < grads.size(); ++i) {
    const Shape& s = c.input_shapes[i];
    if (s.size() == 1 && s[0] == 0) {
      if (c.needs_grad[i]) grads[i] = full({0}, 0.0, g[0].dtype(), g[0].device());
      continue;
    }
    if (c.needs_grad[i]) grads[i] = slice(g[0], dim, off, off + s[dim]);
    off += s[dim];
  }
  return grads;
}

Tensors stack_forward_any(const Tensors& xs, const Attrs& a) {
  LS_CHECK(!xs.empty(), ValueError, "stack: expected a non-empty list of tensors");
  for (size_t i = 0; i < xs.size(); ++i) {
    LS_CHECK(xs[i].defined(), TypeError, "stack: tensor ", i, " is None");
    LS_CHECK(xs[i].shape() == xs[0].shape(), ValueError, "stack: expects each tensor to be equal "
             "size, but got ", shape_str(xs[0].shape()), " at entry 0 and ",
             shape_str(xs[i].shape()), " at entry ", i);
  }
  int64_t dim = wrap_dim(a.i("dim", 0), xs[0].dim() + 1, "stack");
  Tensors u;
  for (const Tensor& x : xs) u.push_back(unsqueeze(x, dim));
  return {cat(u, dim)};
}

Tensors stack_backward(const BackwardCtx& c, const Tensors& g) {
  int64_t dim = wrap_dim(c.attrs.i("dim", 0), int64_t(c.input_shapes[0].size()) + 1, "stack");
  Tensors grads(c.input_shapes.size());
  for (size_t i = 0; i < grads.size(); ++i)
    if (c.needs_grad[i]) grads[i] = select(g[0], dim, int64_t(i));
  return grads;
}

Tensors split_forward_any(const Tensors& in, const Attrs& a) {
  LS_CHECK(in.size() == 1 && in[0].defined(), TypeError, "split: expected one input tensor, got ",
           in.size());
  const Tensor& x = in[0];
  LS_CHECK(x.dim() > 0, ValueError, "split: cannot split a zero-dimensional tensor");
  int64_t dim = wrap_dim(a.i("dim", 0), x.dim(), "split");
  std::vector<int64_t> sizes = a.ints("sizes");
  int64_t total = 0;
  for (int64_t s : sizes) {
    LS_CHECK(s >= 0, ValueError, "split: sizes must be non-negative, got ", shape_str(sizes));
    total += s;
  }
  LS_CHECK(total == x.shape()[dim], ValueError, "split: sizes ", shape_str(sizes),
           " must sum exactly to ", x.shape()[dim], " (the size of dimension ", dim,
           " of the input of shape ", shape_str(x.shape()), ")");
  Tensors out;
  int64_t off = 0;
  for (int64_t s : sizes) {
    out.push_back(slice(x, dim, off, off + s));
    off += s;
  }
  return out;
}

// No two elements of a tensor of this shape and these strides share memory: with the dims of
// more than one element ordered by stride, each stride reaches past the previous dim's extent.
bool non_overlapping(const Shape& shape, const Shape& strides) {
  std::vector<std::pair<int64_t, int64_t>> dims;  // (stride, size)
  for (size_t d = 0; d < shape.size(); ++d)
    if (shape[d] > 1) dims.push_back({strides[d], shape[d]});
  std::sort(dims.begin(), dims.end());
  int64_t extent = 1;  // elements spanned by the dims so far
  for (auto [stride, size] : dims) {
    if (stride < extent) return false;
    extent = stride * (size - 1) + extent;
  }
  return true;
}

Tensors split_backward(const BackwardCtx& c, const Tensors& g) {
  // Every output is floating (x is), so the tape has filled any unused grad with zeros.
  const int64_t dim = wrap_dim(c.attrs.i("dim", 0), int64_t(c.input_shapes[0].size()), "split");
  // Each piece has its output's shape (the tape checks what hooks and backwards return), so the
  // pieces join to the input's shape.
  Tensor joined = tiled_view(g, c.input_shapes[0], dim);
  return {joined.defined() ? joined : cat(g, dim)};
}

}  // namespace

Tensor tiled_view(const Tensors& g, const Shape& x_shape, int64_t dim) {
  if (g.empty() || !g[0].defined()) return {};
  const Tensor& g0 = g[0];
  int64_t off = g0.offset(), total = 0;
  for (const Tensor& t : g) {
    // a piece of another rank or shape (a Python backward may return anything) is cat's to reject
    if (!t.defined() || t.dim() != int64_t(x_shape.size()) || t.storage() != g0.storage() ||
        t.dtype() != g0.dtype() || t.strides() != g0.strides() || t.offset() != off)
      return {};
    for (int64_t d = 0; d < t.dim(); ++d)
      if (d != dim && t.shape()[d] != x_shape[d]) return {};
    off += t.shape()[dim] * t.strides()[dim];
    total += t.shape()[dim];
  }
  if (total != x_shape[dim] || !non_overlapping(x_shape, g0.strides())) return {};
  return g0.as_strided(x_shape, g0.strides(), g0.offset());
}

Tensor cat(const std::vector<Tensor>& xs, int64_t dim) { return call1("cat", xs, {{"dim", dim}}); }

Tensor stack(const std::vector<Tensor>& xs, int64_t dim) {
  return call1("stack", xs, {{"dim", dim}});
}

std::vector<Tensor> split(const Tensor& x, const std::vector<int64_t>& sizes, int64_t dim) {
  return call("split", {x}, {{"sizes", sizes}, {"dim", dim}});
}

std::vector<Tensor> chunk(const Tensor& x, int64_t chunks, int64_t dim) {
  LS_CHECK(chunks > 0, ValueError, "chunk: chunks must be greater than 0, got ", chunks);
  LS_CHECK(x.dim() > 0, ValueError, "chunk: cannot chunk a zero-dimensional tensor");
  int64_t n = x.shape()[wrap_dim(dim, x.dim(), "chunk")];
  // torch: pieces of ceil(n / chunks); an empty dimension gives `chunks` empty pieces.
  int64_t each = (n + chunks - 1) / chunks;
  std::vector<int64_t> sizes;
  if (n == 0) sizes.assign(chunks, 0);
  for (int64_t off = 0; off < n; off += each) sizes.push_back(std::min(each, n - off));
  return split(x, sizes, dim);
}

LS_REGISTER(concat) {
  declare_op("cat", {cat_backward, false});
  declare_op("stack", {stack_backward, false});
  declare_op("split", {split_backward, false});
  register_kernel("cat", "cpu", cat_forward_cpu);
  register_kernel("stack", "any", stack_forward_any);
  register_kernel("split", "any", split_forward_any);
}

}  // namespace ls::ops
