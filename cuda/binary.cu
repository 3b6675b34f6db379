// Elementwise binary ops on the GPU with numpy broadcasting: add sub mul div pow maximum minimum
// and the comparisons eq ne lt le gt ge (bool output). Both operands arrive in one dtype (the
// registry wrappers promote first); 16-bit floats compute in float32. Dense floating-point
// operands go through vec_map.cuh (16-byte packs per thread); otherwise one thread per output
// element, and the Indexer maps it to the two (possibly broadcast, strided) input elements.
#include "core/registry.h"
#include "elementwise.cuh"
#include "vec_map.cuh"

namespace ls::cuda {

namespace {

enum class Bin { Add, Sub, Mul, Div, Pow, Max, Min, Eq, Ne, Lt, Le, Gt, Ge };

template <typename A>
__device__ __forceinline__ A apply(Bin op, A x, A y) {
  switch (op) {
    case Bin::Add: return x + y;
    case Bin::Sub: return x - y;
    case Bin::Mul: return x * y;
    case Bin::Div: return x / y;
    case Bin::Pow:
      if constexpr (std::is_floating_point_v<A>) return A(pow(x, y));
      else return A(pow(double(x), double(y)));
    case Bin::Max: return (x > y || x != x) ? x : y;  // NaN propagates
    case Bin::Min: return (x < y || x != x) ? x : y;
    case Bin::Eq: return A(x == y);
    case Bin::Ne: return A(x != y);
    case Bin::Lt: return A(x < y);
    case Bin::Le: return A(x <= y);
    case Bin::Gt: return A(x > y);
    default: return A(x >= y);
  }
}

template <typename A> struct Pair { A x, y; };

// The op as a vec_map functor (dense floating-point operands, same-dtype output).
struct BinaryMap {
  Bin op;
  template <typename A> __device__ void operator()(const A (&x)[2], A (&y)[1]) const {
    y[0] = apply<A>(op, x[0], x[1]);
  }
};

template <typename O, typename T>
__global__ void binary_kernel(Bin op, O* __restrict__ out, const T* __restrict__ a,
                              const T* __restrict__ b, int64_t n, Indexer<3> ix, bool dense) {
  using A = acc_t<T>;
  if (dense) {
    for_each_dense<Pair<A>>(
        n, [&](int64_t i) { return Pair<A>{convert<A>(a[i]), convert<A>(b[i])}; },
        [&](int64_t i, Pair<A> v) { out[i] = convert<O>(apply<A>(op, v.x, v.y)); });
  } else {
    for_each_strided(n, ix, [&](const int64_t (&off)[3]) {
      out[off[0]] = convert<O>(apply<A>(op, convert<A>(a[off[1]]), convert<A>(b[off[2]])));
    });
  }
}

Kernel binary_entry(Bin op, const char* name) {
  return [op, name](const Tensors& in, const Attrs&) {
    const Tensor& a = in[0];
    const Tensor& b = in[1];
    LS_CHECK(a.dtype() == b.dtype(), TypeError, name, ": dtypes differ: ", dtype_name(a.dtype()),
             " and ", dtype_name(b.dtype()));
    Shape shape = broadcast_shapes(a.shape(), b.shape(), name);
    bool compare = op >= Bin::Eq;
    Tensor out = Tensor::empty(shape, compare ? DType::Bool : a.dtype(), a.device());
    int64_t n = out.numel();
    if (n == 0) return Tensors{out};
    set_device(out, name);
    Indexer<3> ix = make_indexer<3>(shape, {&out, &a, &b}, name);
    bool dense = is_dense(ix);
    if (dense && !compare && is_floating(a.dtype())) {
      CUDA_DISPATCH_FLOAT(a.dtype(), name, {
        launch_map(BinaryMap{op}, MapArgs<scalar_t, 2, 1>{{cptr<scalar_t>(a), cptr<scalar_t>(b)},
                                                          {mptr<scalar_t>(out)}}, n, name);
      });
      return Tensors{out};
    }
    CUDA_DISPATCH_ALL(a.dtype(), name, {
      const scalar_t* pa = static_cast<const scalar_t*>(a.raw_data());
      const scalar_t* pb = static_cast<const scalar_t*>(b.raw_data());
      if (compare)
        binary_kernel<bool, scalar_t><<<grid_for(n), kThreads, 0, current_stream()>>>(op, out.data<bool>(), pa, pb, n, ix, dense);
      else
        binary_kernel<scalar_t, scalar_t><<<grid_for(n), kThreads, 0, current_stream()>>>(
            op, static_cast<scalar_t*>(out.raw_data()), pa, pb, n, ix, dense);
    });
    check_launch(name);
    return Tensors{out};
  };
}

}  // namespace

LS_REGISTER(binary_cuda) {
  const std::pair<const char*, Bin> ops[] = {
      {"add", Bin::Add}, {"sub", Bin::Sub}, {"mul", Bin::Mul}, {"div", Bin::Div},
      {"pow", Bin::Pow}, {"maximum", Bin::Max}, {"minimum", Bin::Min}, {"eq", Bin::Eq},
      {"ne", Bin::Ne}, {"lt", Bin::Lt}, {"le", Bin::Le}, {"gt", Bin::Gt}, {"ge", Bin::Ge}};
  for (auto& [name, op] : ops) register_kernel(name, "cuda", binary_entry(op, name));
}

}  // namespace ls::cuda
