// Views: new shape/strides/offset over the same storage, never a copy (reshape copies only when
// the strides cannot express the new shape, as in torch). Device-independent, so registered for
// backend "any". Gradients: the inverse view, a sum for expand, a scatter into zeros for slices.
#include <algorithm>
#include <numeric>

#include "core/autograd.h"
#include "core/error.h"
#include "ops.h"

namespace ls::ops {

namespace {

// Resolve one -1 and check the element count.
Shape infer_shape(Shape shape, int64_t numel, const char* op, const Shape& from) {
  int64_t known = 1, infer = -1;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == -1) {
      LS_CHECK(infer < 0, ValueError, op, ": only one dimension can be -1, got ", shape_str(shape));
      infer = int64_t(i);
    } else {
      LS_CHECK(shape[i] >= 0, ValueError, op, ": invalid shape ", shape_str(shape));
      known *= shape[i];
    }
  }
  if (infer >= 0) {
    LS_CHECK(known != 0 && numel % known == 0, ValueError, op, ": shape ", shape_str(shape),
             " is invalid for input of shape ", shape_str(from));
    shape[infer] = numel / known;
  }
  LS_CHECK(shape_numel(shape) == numel, ValueError, op, ": shape ", shape_str(shape),
           " is invalid for input of shape ", shape_str(from), " (", numel, " elements)");
  return shape;
}

// Strides for viewing (shape, strides) as new_shape without a copy, or empty if impossible
// (the chunk-matching algorithm of torch's computeStride).
bool view_strides(const Shape& shape, const Shape& strides, const Shape& new_shape, Shape& out) {
  out.assign(new_shape.size(), 0);
  if (shape_numel(shape) == 0 || shape.empty()) {
    out = contiguous_strides(new_shape);
    return true;
  }
  int64_t view_d = int64_t(new_shape.size()) - 1;
  int64_t chunk_base_stride = strides.back();
  int64_t tensor_numel = 1, view_numel = 1;
  for (int64_t d = int64_t(shape.size()) - 1; d >= 0; --d) {
    tensor_numel *= shape[d];
    if (d == 0 || (shape[d - 1] != 1 && strides[d - 1] != tensor_numel * chunk_base_stride)) {
      while (view_d >= 0 && (view_numel < tensor_numel || new_shape[view_d] == 1)) {
        out[view_d] = view_numel * chunk_base_stride;
        view_numel *= new_shape[view_d];
        --view_d;
      }
      if (view_numel != tensor_numel) return false;
      if (d > 0) {
        chunk_base_stride = strides[d - 1];
        tensor_numel = 1;
        view_numel = 1;
      }
    }
  }
  return view_d == -1;
}

Tensors view_any(const Tensors& in, const Attrs& a) {
  const Tensor& x = in[0];
  Shape shape = infer_shape(a.ints("shape"), x.numel(), "view", x.shape());
  Shape st;
  if (view_strides(x.shape(), x.strides(), shape, st)) return {x.as_strided(shape, st, x.offset())};
  LS_CHECK(a.b("allow_copy", false), ValueError, "view: a tensor of shape ", shape_str(x.shape()),
           " and strides ", shape_str(x.strides()), " cannot be viewed as ", shape_str(shape),
           "; use reshape() or contiguous() first");
  Tensor c = contiguous_copy(x);
  return {c.as_strided(shape, contiguous_strides(shape), c.offset())};
}

Tensors permute_any(const Tensors& in, const Attrs& a) {
  const Tensor& x = in[0];
  std::vector<int64_t> dims = a.ints("dims");
  LS_CHECK(int64_t(dims.size()) == x.dim(), ValueError, "permute: got ", dims.size(),
           " dims for a tensor of ", x.dim(), " dimensions");
  std::vector<bool> used(dims.size(), false);
  Shape shape(dims.size()), st(dims.size());
  for (size_t i = 0; i < dims.size(); ++i) {
    int64_t d = wrap_dim(dims[i], x.dim(), "permute");
    LS_CHECK(!used[d], ValueError, "permute: dimension ", d, " repeats in ", shape_str(dims));
    used[d] = true;
    shape[i] = x.shape()[d];
    st[i] = x.strides()[d];
  }
  return {x.as_strided(shape, st, x.offset())};
}

Tensors expand_any(const Tensors& in, const Attrs& a) {
  const Tensor& x = in[0];
  Shape shape = a.ints("shape");
  LS_CHECK(shape.size() >= size_t(x.dim()), ValueError, "expand: cannot expand ",
           shape_str(x.shape()), " to fewer dimensions ", shape_str(shape));
  size_t lead = shape.size() - x.dim();
  Shape st(shape.size(), 0);
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i < lead) {
      LS_CHECK(shape[i] >= 0, ValueError, "expand: invalid size in ", shape_str(shape));
      continue;
    }
    int64_t xs = x.shape()[i - lead];
    if (shape[i] == -1) shape[i] = xs;
    // a size-1 dim matches any target: a negative one (besides -1) is refused here, not later
    LS_CHECK(shape[i] >= 0 && (xs == shape[i] || xs == 1), ValueError, "expand: cannot expand ",
             shape_str(x.shape()), " to ", shape_str(shape));
    st[i] = xs == shape[i] ? x.strides()[i - lead] : 0;
  }
  return {x.as_strided(shape, st, x.offset())};
}

Tensors slice_any(const Tensors& in, const Attrs& a) {
  const Tensor& x = in[0];
  int64_t d = wrap_dim(a.i("dim"), x.dim(), "slice");
  int64_t n = x.shape()[d], step = a.i("step", 1);
  LS_CHECK(step > 0, ValueError, "slice: step must be positive, got ", step);
  int64_t start = a.i("start", 0), end = a.i("end", n);
  if (start < 0) start += n;
  if (end < 0) end += n;
  start = std::clamp<int64_t>(start, 0, n);
  end = std::clamp<int64_t>(end, start, n);
  Shape shape = x.shape(), st = x.strides();
  shape[d] = end > start ? 1 + (end - start - 1) / step : 0;  // no overflow for a step near 2^63
  if (shape[d] > 1) st[d] *= step;  // one element (or none): its stride is never stepped
  return {x.as_strided(shape, st, x.offset() + start * x.strides()[d])};
}

Tensors select_any(const Tensors& in, const Attrs& a) {
  const Tensor& x = in[0];
  LS_CHECK(x.dim() > 0, IndexError, "select: cannot index a 0-d tensor");
  int64_t d = wrap_dim(a.i("dim"), x.dim(), "select");
  int64_t n = x.shape()[d], i = a.i("index");
  LS_CHECK(i >= -n && i < n, IndexError, "select: index ", i, " is out of range for dimension ", d,
           " of size ", n);
  if (i < 0) i += n;
  Shape shape = x.shape(), st = x.strides();
  shape.erase(shape.begin() + d);
  st.erase(st.begin() + d);
  return {x.as_strided(shape, st, x.offset() + i * x.strides()[d])};
}

// Gradient of a slice/select: zeros of the input's shape with g written into the same view.
Tensor scatter_into_zeros(const BackwardCtx& c, const std::string& op, const Tensor& g) {
  Tensor z = full(c.input_shapes[0], 0.0, g.dtype(), g.device());
  Tensor v = call1(op, {z}, c.attrs);
  copy_(v, g);
  return z;
}

Tensors reshape_back(const BackwardCtx& c, const Tensors& g) { return {reshape(g[0], c.input_shapes[0])}; }

}  // namespace

Tensor view(const Tensor& x, Shape shape) { return call1("view", {x}, {{"shape", shape}}); }
Tensor reshape(const Tensor& x, Shape shape) {
  return call1("view", {x}, {{"shape", shape}, {"allow_copy", true}});
}
Tensor permute(const Tensor& x, const std::vector<int64_t>& dims) {
  return call1("permute", {x}, {{"dims", dims}});
}
Tensor transpose(const Tensor& x, int64_t d0, int64_t d1) {
  std::vector<int64_t> dims(x.dim());
  std::iota(dims.begin(), dims.end(), 0);
  if (x.dim() == 0) {  // as torch: a 0-d tensor takes dims 0 and -1 only
    for (int64_t d : {d0, d1})
      LS_CHECK(d == 0 || d == -1, IndexError, "transpose: dimension ", d, " is out of range for a 0-d tensor");
    return permute(x, dims);
  }
  std::swap(dims[wrap_dim(d0, x.dim(), "transpose")], dims[wrap_dim(d1, x.dim(), "transpose")]);
  return permute(x, dims);
}
Tensor expand(const Tensor& x, const Shape& shape) {
  if (x.shape() == shape) return x;
  return call1("expand", {x}, {{"shape", shape}});
}
Tensor slice(const Tensor& x, int64_t dim, int64_t start, int64_t end, int64_t step) {
  return call1("slice", {x}, {{"dim", dim}, {"start", start}, {"end", end}, {"step", step}});
}
Tensor select(const Tensor& x, int64_t dim, int64_t index) {
  return call1("select", {x}, {{"dim", dim}, {"index", index}});
}
Tensor squeeze(const Tensor& x, std::optional<int64_t> dim) {
  Shape shape;
  int64_t d = dim ? wrap_dim(*dim, x.dim(), "squeeze") : -1;
  for (int64_t i = 0; i < x.dim(); ++i)
    if (!(x.shape()[i] == 1 && (d < 0 || i == d))) shape.push_back(x.shape()[i]);
  return view(x, shape);
}
Tensor unsqueeze(const Tensor& x, int64_t dim) {
  int64_t d = wrap_dim(dim, x.dim() + 1, "unsqueeze");
  Shape shape = x.shape();
  shape.insert(shape.begin() + d, 1);
  return view(x, shape);
}

LS_REGISTER(views) {
  declare_op("view", {reshape_back, false});
  declare_op("permute", {[](const BackwardCtx& c, const Tensors& g) {
                           std::vector<int64_t> dims = c.attrs.ints("dims"), inv(dims.size());
                           for (size_t i = 0; i < dims.size(); ++i)
                             inv[wrap_dim(dims[i], int64_t(dims.size()), "permute")] = int64_t(i);
                           return Tensors{permute(g[0], inv)};
                         }, false});
  declare_op("expand", {[](const BackwardCtx& c, const Tensors& g) {
                          return Tensors{sum_to(g[0], c.input_shapes[0])};
                        }, false});
  declare_op("slice", {[](const BackwardCtx& c, const Tensors& g) {
                         return Tensors{scatter_into_zeros(c, "slice", g[0])};
                       }, false});
  declare_op("select", {[](const BackwardCtx& c, const Tensors& g) {
                          return Tensors{scatter_into_zeros(c, "select", g[0])};
                        }, false});
  register_kernel("view", "any", view_any);
  register_kernel("permute", "any", permute_any);
  register_kernel("expand", "any", expand_any);
  register_kernel("slice", "any", slice_any);
  register_kernel("select", "any", select_any);
}

}  // namespace ls::ops
