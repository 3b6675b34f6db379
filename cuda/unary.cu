// Elementwise unary ops on the GPU (neg exp log sqrt rsqrt tanh sigmoid abs sign relu sin cos),
// clamp, and where(cond, a, b). Float types compute in float (float32/bf16/fp16) or double;
// neg/abs/sign/relu also take integers. Dense floating-point tensors go through vec_map.cuh
// (16-byte packs per thread); strided and broadcast operands go through the Indexer.
// relu and clamp are cpp/ops/clamp_math.h, shared with the CPU: NaN propagates, and clamp with
// lo > hi gives hi, as torch.
#include <cmath>

#include "core/registry.h"
#include "elementwise.cuh"
#include "ops/clamp_math.h"
#include "vec_map.cuh"

namespace ls::cuda {

namespace {

enum class Un { Neg, Exp, Log, Sqrt, Rsqrt, Tanh, Sigmoid, Abs, Sign, Relu, Sin, Cos };  // Cos last: kLastUn

template <typename A>
__device__ __forceinline__ A apply(Un op, A v) {
  if constexpr (!std::is_floating_point_v<A>) {
    switch (op) {
      case Un::Neg: return A(-v);
      case Un::Abs: return v < 0 ? A(-v) : v;
      case Un::Sign: return A((v > 0) - (v < 0));
      default: return clamp_math::relu(v);
    }
  } else {
    switch (op) {
      case Un::Neg: return -v;
      case Un::Exp: return exp(v);
      case Un::Log: return log(v);
      case Un::Sqrt: return sqrt(v);
      case Un::Rsqrt: return A(1) / sqrt(v);
      case Un::Tanh: return tanh(v);
      case Un::Sigmoid: return A(1) / (A(1) + exp(-v));
      case Un::Abs: return fabs(v);
      case Un::Sign: return A((v > A(0)) - (v < A(0)));
      case Un::Relu: return clamp_math::relu(v);
      case Un::Sin: return sin(v);
      default: return cos(v);
    }
  }
}

// The op as a vec_map functor (dense floating-point tensors), with the op a template parameter:
// apply's switch folds away and each kernel holds one op's code. With the op a runtime value,
// every element went through the switch (an indirect branch per element, 8 per 16-byte bf16
// pack) and the kernel carried sin/cos's registers and stack: bf16 exp ran at 72% of the copy
// bandwidth.
template <Un Op>
struct UnaryMap {
  template <typename A> __device__ void operator()(const A (&x)[1], A (&y)[1]) const {
    y[0] = apply<A>(Op, x[0]);
  }
};

constexpr Un kLastUn = Un::Cos;

// launch_map with UnaryMap<op>: op matched against Un(I), Un(I + 1), ... at compile time.
template <typename T, int I = 0>
void launch_dense(Un op, const MapArgs<T, 1, 1>& a, int64_t n, const char* name) {
  if constexpr (I <= int(kLastUn)) {
    if (op == Un(I)) return launch_map(UnaryMap<Un(I)>{}, a, n, name);
    launch_dense<T, I + 1>(op, a, n, name);
  }
}

template <typename T>
__global__ void unary_kernel(Un op, T* __restrict__ out, const T* __restrict__ x, int64_t n,
                             Indexer<2> ix, bool dense) {
  using A = acc_t<T>;
  if (dense) {
    for_each_dense<A>(n, [&](int64_t i) { return convert<A>(x[i]); },
                      [&](int64_t i, A v) { out[i] = convert<T>(apply<A>(op, v)); });
  } else {
    for_each_strided(n, ix, [&](const int64_t (&off)[2]) {
      out[off[0]] = convert<T>(apply<A>(op, convert<A>(x[off[1]])));
    });
  }
}

template <typename T>
__global__ void clamp_kernel(T* out, const T* x, int64_t n, Indexer<2> ix, double lo, double hi) {
  using A = acc_t<T>;
  for_each_strided(n, ix, [&](const int64_t (&off)[2]) {
    A v = convert<A>(x[off[1]]);
    out[off[0]] = convert<T>(clamp_math::clamp(v, A(lo), A(hi)));
  });
}

template <typename T>
__global__ void where_kernel(T* out, const bool* c, const T* a, const T* b, int64_t n, Indexer<4> ix) {
  for_each_strided(n, ix, [&](const int64_t (&off)[4]) { out[off[0]] = c[off[1]] ? a[off[2]] : b[off[3]]; });
}

Kernel unary_entry(Un op, const char* name) {
  return [op, name](const Tensors& in, const Attrs&) {
    const Tensor& x = in[0];
    Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
    int64_t n = out.numel();
    if (n == 0) return Tensors{out};
    set_device(out, name);
    Indexer<2> ix = make_indexer<2>(x.shape(), {&out, &x}, name);
    bool dense = is_dense(ix);
    if (dense && is_floating(x.dtype())) {
      CUDA_DISPATCH_FLOAT(x.dtype(), name, {
        launch_dense(op, MapArgs<scalar_t, 1, 1>{{cptr<scalar_t>(x)}, {mptr<scalar_t>(out)}}, n, name);
      });
      return Tensors{out};
    }
    auto launch = [&](auto* o, const auto* p) {
      unary_kernel<<<grid_for(n), kThreads, 0, current_stream()>>>(op, o, p, n, ix, dense);
    };
    switch (x.dtype()) {
      case DType::Float32: launch(out.data<float>(), x.data<float>()); break;
      case DType::Float64: launch(out.data<double>(), x.data<double>()); break;
      case DType::BFloat16:
        launch(static_cast<__nv_bfloat16*>(out.raw_data()), static_cast<const __nv_bfloat16*>(x.raw_data()));
        break;
      case DType::Float16:
        launch(static_cast<__half*>(out.raw_data()), static_cast<const __half*>(x.raw_data()));
        break;
      case DType::Int32: launch(out.data<int32_t>(), x.data<int32_t>()); break;
      case DType::Int64: launch(out.data<int64_t>(), x.data<int64_t>()); break;
      default: throw_dtype_error(name, x.dtype());
    }
    check_launch(name);
    return Tensors{out};
  };
}

Tensors clamp_cuda(const Tensors& in, const Attrs& a) {
  const Tensor& x = in[0];
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  int64_t n = out.numel();
  if (n == 0) return {out};
  set_device(out, "clamp");
  Indexer<2> ix = make_indexer<2>(x.shape(), {&out, &x}, "clamp");
  double lo = a.f("min", -INFINITY), hi = a.f("max", INFINITY);
  CUDA_DISPATCH_FLOAT(x.dtype(), "clamp", {
    clamp_kernel<scalar_t><<<grid_for(n), kThreads, 0, current_stream()>>>(static_cast<scalar_t*>(out.raw_data()),
                                                      static_cast<const scalar_t*>(x.raw_data()), n, ix, lo, hi);
  });
  check_launch("clamp");
  return {out};
}

Tensors where_cuda(const Tensors& in, const Attrs&) {
  const Tensor& c = in[0];
  const Tensor& a = in[1];
  const Tensor& b = in[2];
  Shape shape = broadcast_shapes(broadcast_shapes(c.shape(), a.shape(), "where"), b.shape(), "where");
  Tensor out = Tensor::empty(shape, a.dtype(), a.device());
  int64_t n = out.numel();
  if (n == 0) return {out};
  set_device(out, "where");
  Indexer<4> ix = make_indexer<4>(shape, {&out, &c, &a, &b}, "where");
  CUDA_DISPATCH_ALL(a.dtype(), "where", {
    where_kernel<scalar_t><<<grid_for(n), kThreads, 0, current_stream()>>>(
        static_cast<scalar_t*>(out.raw_data()), c.data<bool>(), static_cast<const scalar_t*>(a.raw_data()),
        static_cast<const scalar_t*>(b.raw_data()), n, ix);
  });
  check_launch("where");
  return {out};
}

}  // namespace

LS_REGISTER(unary_cuda) {
  const std::pair<const char*, Un> ops[] = {
      {"neg", Un::Neg}, {"exp", Un::Exp}, {"log", Un::Log}, {"sqrt", Un::Sqrt},
      {"rsqrt", Un::Rsqrt}, {"tanh", Un::Tanh}, {"sigmoid", Un::Sigmoid}, {"abs", Un::Abs},
      {"sign", Un::Sign}, {"relu", Un::Relu}, {"sin", Un::Sin}, {"cos", Un::Cos}};
  for (auto& [name, op] : ops) register_kernel(name, "cuda", unary_entry(op, name));
  register_kernel("clamp", "cuda", clamp_cuda);
  register_kernel("where", "cuda", where_cuda);
}

}  // namespace ls::cuda
