// Factories on the GPU: full, arange, linspace and the Philox draws rand, randn, randint.
// linspace's elements come from the __host__ __device__ linspace_at of cpp/ops/linspace.h that
// the CPU kernel calls (explicit fused multiply-adds): the same values bit for bit.
// Element i of a random draw is computed from (seed, offset, i) by the __host__ __device__
// functions of core/philox.h that the CPU kernels call (rand: k 2^-d with the dtype's d
// significand bits; randn: float32 Box-Muller, float64 math for float64; randint: 32 or 64 bits
// % range), so the GPU produces the numbers the CPU produces for the same seed and shape (bitwise
// for rand and randint; randn within the last-bit differences of the device's log/sin/cos).
// One thread per element; out (N,) contiguous of any dtype.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

#include "core/philox.h"
#include "core/registry.h"
#include "cuda_check.cuh"
#include "ops/linspace.h"

namespace ls::cuda {

namespace {

template <typename T> __device__ __forceinline__ T from_f64(double v) { return T(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f64(double v) { return __double2bfloat16(v); }
template <> __device__ __forceinline__ __half from_f64(double v) { return __double2half(v); }
template <> __device__ __forceinline__ bool from_f64(double v) { return v != 0.0; }
// randint's int64 values: integer dtypes take them exactly (beyond 2^53), floats round them.
template <typename T> __device__ __forceinline__ T from_i64(int64_t v) {
  if constexpr (std::is_integral_v<T>) return T(v);  // bool: v != 0
  else return from_f64<T>(double(v));
}

enum class Fill { Constant, Arange, Linspace, Uniform, Normal, Integer };

struct FillArgs {
  Fill kind;
  double a, b;  // constant: a; arange: start a, step b; linspace: start a, step b, end c
  double c;
  bool in_float;  // linspace: float math (ls::linspace_in_float)
  uint64_t seed, offset;
  int digits;       // uniform: the dtype's significand bits (digits_of); normal: 53 = float64 math
  int64_t low;      // integer: [low, low + range); linspace: steps
  uint64_t range;
};

template <typename T>
__global__ void fill_kernel(T* out, int64_t n, FillArgs f) {
  int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  if (f.kind == Fill::Integer) {
    out[i] = from_i64<T>(philox_randint_at(f.seed, f.offset, uint64_t(i), f.low, f.range));
    return;
  }
  double v;
  switch (f.kind) {
    case Fill::Constant: v = f.a; break;
    case Fill::Arange: v = f.a + double(i) * f.b; break;
    case Fill::Linspace:
      v = f.in_float ? double(linspace_at<float>(float(f.a), float(f.c), float(f.b), f.low, i))
                     : linspace_at<double>(f.a, f.c, f.b, f.low, i);
      break;
    case Fill::Uniform: v = philox_rand_at(f.seed, f.offset, uint64_t(i), f.digits); break;
    default:
      v = f.digits == 53 ? philox_normal64_at(f.seed, f.offset, uint64_t(i))
                         : double(philox_normal_at(f.seed, f.offset, uint64_t(i)));
      break;
  }
  out[i] = from_f64<T>(v);
}

void launch_fill(const Tensor& out, const FillArgs& f, const char* op) {
  int64_t n = out.numel();
  if (n == 0) return;
  constexpr int kThreads = 256;
  unsigned grid = blocks_for(n, kThreads);
  check(cudaSetDevice(out.device().index), op);
  switch (out.dtype()) {
    case DType::Float32: fill_kernel<<<grid, kThreads, 0, current_stream()>>>(out.data<float>(), n, f); break;
    case DType::Float64: fill_kernel<<<grid, kThreads, 0, current_stream()>>>(out.data<double>(), n, f); break;
    case DType::BFloat16: fill_kernel<<<grid, kThreads, 0, current_stream()>>>(static_cast<__nv_bfloat16*>(out.raw_data()), n, f); break;
    case DType::Float16: fill_kernel<<<grid, kThreads, 0, current_stream()>>>(static_cast<__half*>(out.raw_data()), n, f); break;
    case DType::Int32: fill_kernel<<<grid, kThreads, 0, current_stream()>>>(out.data<int32_t>(), n, f); break;
    case DType::Int64: fill_kernel<<<grid, kThreads, 0, current_stream()>>>(out.data<int64_t>(), n, f); break;
    case DType::Bool: fill_kernel<<<grid, kThreads, 0, current_stream()>>>(out.data<bool>(), n, f); break;
    case DType::UInt8: fill_kernel<<<grid, kThreads, 0, current_stream()>>>(out.data<uint8_t>(), n, f); break;
  }
  check_launch(op);
}

// Entry: validate, allocate, launch.
Kernel fill_entry(Fill kind, const char* op) {
  return [kind, op](const Tensors&, const Attrs& a) {
    Tensor out = Tensor::empty(a.ints("shape"), DType(a.i("dtype")), Device::parse(a.s("device", "cuda")));
    FillArgs f{kind, 0, 0, 0, false, uint64_t(a.i("seed", 0)), uint64_t(a.i("offset", 0)),
               digits_of(out.dtype()), 0, 0};
    switch (kind) {
      case Fill::Constant: f.a = a.f("value", 0.0); break;
      case Fill::Arange: f.a = a.f("start", 0.0); f.b = a.f("step", 1.0); break;
      case Fill::Linspace:
        f.a = a.f("start", 0.0); f.b = a.f("step", 0.0); f.c = a.f("end", 0.0);
        f.low = a.i("steps");
        f.in_float = linspace_in_float(out.dtype());
        break;
      case Fill::Integer:
        f.low = a.i("low");
        f.range = uint64_t(a.i("high")) - uint64_t(f.low);  // high > low: no int64 overflow
        break;
      default: break;
    }
    if ((kind == Fill::Uniform || kind == Fill::Normal) && !is_floating(out.dtype()))
      throw TypeError(::ls::cat(op, ": dtype must be floating, got ", dtype_name(out.dtype())));
    launch_fill(out, f, op);
    return Tensors{out};
  };
}

}  // namespace

LS_REGISTER(creation_cuda) {
  register_kernel("full", "cuda", fill_entry(Fill::Constant, "full"));
  register_kernel("arange", "cuda", fill_entry(Fill::Arange, "arange"));
  register_kernel("linspace", "cuda", fill_entry(Fill::Linspace, "linspace"));
  register_kernel("rand", "cuda", fill_entry(Fill::Uniform, "rand"));
  register_kernel("randn", "cuda", fill_entry(Fill::Normal, "randn"));
  register_kernel("randint", "cuda", fill_entry(Fill::Integer, "randint"));
}

}  // namespace ls::cuda
