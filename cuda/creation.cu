// Factories on the GPU: full, arange and the Philox draws rand, randn, randint.
// Element i of a random draw is computed from (seed, offset, i) exactly as in core/philox.h,
// so the GPU produces the numbers the CPU produces for the same seed and shape (bitwise for
// rand and randint; randn within the last-bit differences of the device's logf/sinf/cosf).
// One thread per element; out (N,) contiguous of any dtype.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "core/philox.h"
#include "core/registry.h"
#include "cuda_check.cuh"

namespace ls::cuda {

namespace {

template <typename T> __device__ __forceinline__ T from_f64(double v) { return T(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f64(double v) { return __double2bfloat16(v); }
template <> __device__ __forceinline__ __half from_f64(double v) { return __double2half(v); }
template <> __device__ __forceinline__ bool from_f64(double v) { return v != 0.0; }

enum class Fill { Constant, Arange, Uniform, Normal, Integer };

struct FillArgs {
  Fill kind;
  double a, b;  // constant: a; arange: start a, step b; integer: low a, range b
  uint64_t seed, offset;
};

template <typename T>
__global__ void fill_kernel(T* out, int64_t n, FillArgs f) {
  int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  double v;
  switch (f.kind) {
    case Fill::Constant: v = f.a; break;
    case Fill::Arange: v = f.a + double(i) * f.b; break;
    case Fill::Uniform: v = philox_uniform_at(f.seed, f.offset, uint64_t(i)); break;
    case Fill::Normal: v = philox_normal_at(f.seed, f.offset, uint64_t(i)); break;
    default: v = f.a + double(philox_bits(f.seed, f.offset, uint64_t(i)) % uint64_t(f.b)); break;
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
    FillArgs f{kind, 0, 0, uint64_t(a.i("seed", 0)), uint64_t(a.i("offset", 0))};
    switch (kind) {
      case Fill::Constant: f.a = a.f("value", 0.0); break;
      case Fill::Arange: f.a = a.f("start", 0.0); f.b = a.f("step", 1.0); break;
      case Fill::Integer: f.a = double(a.i("low")); f.b = double(a.i("high") - a.i("low")); break;
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
  register_kernel("rand", "cuda", fill_entry(Fill::Uniform, "rand"));
  register_kernel("randn", "cuda", fill_entry(Fill::Normal, "randn"));
  register_kernel("randint", "cuda", fill_entry(Fill::Integer, "randint"));
}

}  // namespace ls::cuda
