// Elementwise binary ops on the GPU with numpy broadcasting: add sub mul div pow maximum minimum
// floor_divide remainder and the comparisons eq ne lt le gt ge (bool output). Both operands arrive
// in one dtype (the registry wrappers promote first); 16-bit floats compute in float32.
// Integer pow is exact and wraps (cpp/ops/int_pow.h, shared with the CPU).
// floor_divide and remainder (cpp/ops/floor_div.h, every dtype but bool): an integer zero divisor
// is not refused here, as a device-side check could raise only after a sync; a // 0 and a % 0
// give 0 (numpy's value; torch's CUDA kernels leave it to the hardware's division).
// Dense floating-point operands go through vec_map.cuh (16-byte packs per thread). A dense
// operand against one row repeated over the leading dims (a bias (C,) on (N, C), a position table
// (T, C) on (B, T, C)) has its own kernel: each thread keeps its packs of the row in registers and
// walks the rows, as the per-element index arithmetic held a GPT-2 bias add to about a quarter of
// the copy bandwidth. Otherwise one thread per output element, and the Indexer maps it to the two
// (possibly broadcast, strided) input elements.
#include "core/registry.h"
#include "elementwise.cuh"
#include "ops/floor_div.h"
#include "ops/int_pow.h"
#include "vec_map.cuh"

namespace ls::cuda {

namespace {

enum class Bin { Add, Sub, Mul, Div, Pow, Max, Min, FloorDiv, Mod, Eq, Ne, Lt, Le, Gt, Ge };

template <typename A>
__device__ __forceinline__ A apply(Bin op, A x, A y) {  // every op but FloorDiv and Mod
  switch (op) {
    case Bin::Add: return x + y;
    case Bin::Sub: return x - y;
    case Bin::Mul: return x * y;
    case Bin::Div: return x / y;
    case Bin::Pow:
      if constexpr (std::is_floating_point_v<A>) return A(pow(x, y));
      else return int_math::ipow(x, y);  // exact and wrapping, as the CPU's (ops/int_pow.h)
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

// floor_divide and remainder in a kernel of their own (one thread per element, as binary_kernel):
// as cases of apply's switch, their code went into every add and mul kernel (the bf16 row
// broadcast 71 -> 76 registers, the float64 one 54 -> 88), and they are no training op.
template <bool kFloorDiv, typename T>
__global__ void floor_kernel(T* __restrict__ out, const T* __restrict__ a, const T* __restrict__ b,
                             int64_t n, Indexer<3> ix, bool dense) {
  using A = acc_t<T>;
  auto f = [](A x, A y) {
    return convert<T>(kFloorDiv ? floor_math::floor_divide(x, y) : floor_math::remainder(x, y));
  };
  if (dense) {
    for_each_dense<Pair<A>>(
        n, [&](int64_t i) { return Pair<A>{convert<A>(a[i]), convert<A>(b[i])}; },
        [&](int64_t i, Pair<A> v) { out[i] = f(v.x, v.y); });
  } else {
    for_each_strided(n, ix, [&](const int64_t (&off)[3]) {
      out[off[0]] = f(convert<A>(a[off[1]]), convert<A>(b[off[2]]));
    });
  }
}

// out (R, P) = op(a, b), one operand dense (R, P) and the other a row (P,) read for every r.
// Thread x owns pack c of the row (W elements, held in registers) and rows blockIdx.y + k *
// gridDim.y, kRows of them loaded before any is computed to keep loads in flight.
template <int W, bool kRowIsB, typename T>
__global__ void row_broadcast_kernel(Bin op, T* __restrict__ out, const T* __restrict__ dense,
                                     const T* __restrict__ row, int64_t R, int64_t row_packs) {
  using P = Pack<T, W>;
  using A = acc_t<T>;
  constexpr int kRows = 4;
  const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= row_packs) return;
  const P rp = reinterpret_cast<const P*>(row)[c];
  A rv[W];
#pragma unroll
  for (int j = 0; j < W; ++j) rv[j] = convert<A>(rp.v[j]);
  const int64_t step = gridDim.y;
  for (int64_t r0 = blockIdx.y; r0 < R; r0 += kRows * step) {
    P d[kRows];
#pragma unroll
    for (int u = 0; u < kRows; ++u)
      if (r0 + u * step < R) d[u] = reinterpret_cast<const P*>(dense)[(r0 + u * step) * row_packs + c];
#pragma unroll
    for (int u = 0; u < kRows; ++u) {
      if (r0 + u * step >= R) break;
      P o;
#pragma unroll
      for (int j = 0; j < W; ++j) {
        const A x = convert<A>(d[u].v[j]);
        o.v[j] = convert<T>(kRowIsB ? apply<A>(op, x, rv[j]) : apply<A>(op, rv[j], x));
      }
      reinterpret_cast<P*>(out)[(r0 + u * step) * row_packs + c] = o;
    }
  }
}

// The row-broadcast kernel when the merged indexer is (R, P) with out and one operand dense and
// the other of strides (0, 1); false otherwise.
bool try_row_broadcast(Bin op, const Tensor& out, const Tensor& a, const Tensor& b, const Indexer<3>& ix,
                       const char* name) {
  if (ix.nd != 2 || ix.stride[0][0] != ix.size[1] || ix.stride[0][1] != 1) return false;
  const bool dense_a = ix.stride[1][0] == ix.size[1] && ix.stride[1][1] == 1;
  const bool dense_b = ix.stride[2][0] == ix.size[1] && ix.stride[2][1] == 1;
  const bool row_a = ix.stride[1][0] == 0 && ix.stride[1][1] == 1;
  const bool row_b = ix.stride[2][0] == 0 && ix.stride[2][1] == 1;
  if (!(dense_a && row_b) && !(row_a && dense_b)) return false;
  const int64_t R = ix.size[0], Pn = ix.size[1];
  CUDA_DISPATCH_FLOAT(out.dtype(), name, {
    using T = scalar_t;
    constexpr int V = kVec<T>;
    const T* dense = cptr<T>(row_b ? a : b);
    const T* row = cptr<T>(row_b ? b : a);
    T* o = mptr<T>(out);
    const bool packs = vectorizable<T>(Pn, {dense, row, o});
    const int W = packs ? V : 1;
    const int64_t row_packs = Pn / W;
    const int threads = int(std::min<int64_t>(kThreads, (row_packs + 31) / 32 * 32));
    dim3 grid(unsigned((row_packs + threads - 1) / threads), 1);
    // about 2048 blocks in all, enough to fill every SM several times over
    grid.y = unsigned(std::min<int64_t>({R, 65535, std::max<int64_t>(1, 2048 / int64_t(grid.x))}));
    auto go = [&](auto kernel) { kernel<<<grid, threads, 0, current_stream()>>>(op, o, dense, row, R, row_packs); };
    if (packs) row_b ? go(row_broadcast_kernel<V, true, T>) : go(row_broadcast_kernel<V, false, T>);
    else row_b ? go(row_broadcast_kernel<1, true, T>) : go(row_broadcast_kernel<1, false, T>);
  });
  check_launch(name);
  return true;
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
    if (op == Bin::FloorDiv || op == Bin::Mod) {
      CUDA_DISPATCH_ALL(a.dtype(), name, {
        auto go = [&](auto kernel) {
          kernel<<<grid_for(n), kThreads, 0, current_stream()>>>(mptr<scalar_t>(out), cptr<scalar_t>(a),
                                                                 cptr<scalar_t>(b), n, ix, dense);
        };
        op == Bin::FloorDiv ? go(floor_kernel<true, scalar_t>) : go(floor_kernel<false, scalar_t>);
      });
      check_launch(name);
      return Tensors{out};
    }
    if (dense && !compare && is_floating(a.dtype())) {
      CUDA_DISPATCH_FLOAT(a.dtype(), name, {
        launch_map(BinaryMap{op}, MapArgs<scalar_t, 2, 1>{{cptr<scalar_t>(a), cptr<scalar_t>(b)},
                                                          {mptr<scalar_t>(out)}}, n, name);
      });
      return Tensors{out};
    }
    if (!compare && is_floating(a.dtype()) && try_row_broadcast(op, out, a, b, ix, name)) return Tensors{out};
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
  const std::vector<DType> no_bool = {DType::Float32, DType::Float64, DType::BFloat16, DType::Float16,
                                      DType::Int32,   DType::Int64,   DType::UInt8};
  register_kernel("floor_divide", "cuda", binary_entry(Bin::FloorDiv, "floor_divide"), no_bool);
  register_kernel("remainder", "cuda", binary_entry(Bin::Mod, "remainder"), no_bool);
}

}  // namespace ls::cuda
