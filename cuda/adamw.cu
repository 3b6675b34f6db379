// Fused multi-tensor AdamW step and the global gradient norm on the GPU; the math, inputs and
// attrs of the CPU reference cpp/optim/adamw.cpp:
//   adamw_step [params (P), grads (P), exp_avg (P), exp_avg_sq (P), model copies (P, attr
//   has_model_copy), grad_scale (0-d, attr has_grad_scale)], in place, per element:
//     g = grad * grad_scale;  p -= lr wd p;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
//     p -= lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps);  copy = cast(p)
//   params/exp_avg/exp_avg_sq float32 (or float64); grads of the parameter's dtype or, for float32,
//   bfloat16/float16; model copies bfloat16/float16.
//   global_norm [tensors...] (any floating dtypes) -> 0-d sqrt(sum of all squares), float32 (float64
//   when a tensor is float64).
//
// One launch for all tensors: the host cuts every tensor into chunks of a fixed number of
// elements and hands the kernel a table (pointers, sizes, the first block of each tensor, an
// element-type code, an alignment flag) as a __grid_constant__ kernel parameter. Kernel
// parameters may be 32 KB on sm_70+ with CUDA 12.1+, so the table needs no host-to-device copy,
// no allocation and no synchronisation; up to kMaxTensors tensors go in one launch (more are
// split over several). Block b finds its tensor by binary search over the first-block column
// and updates its chunk; the per-tensor type code selects the instantiation (uniform per block,
// so it costs no divergence). Aligned tensors move 4 elements per load (16 bytes of float32),
// two groups in flight per thread; the rest (and every tail) goes element by element.
// grad_scale stays on the device: the kernel reads it (as float64) once per block.
//
// global_norm: the same chunk table; each block writes the float64 sum of squares of its chunk,
// then one block adds the partials in a fixed order and writes sqrt as float32: deterministic,
// no atomics, no host round trip.
#include "core/registry.h"
#include "ops/ops.h"
#include "vec_map.cuh"

namespace ls::cuda {

namespace {

constexpr int kMaxTensors = 320;
constexpr int kStepThreads = 256;
constexpr int kStepUnroll = 2;
// elements per block: four rounds of the unrolled loop, so a block's setup (finding its tensor,
// reading the table) is spread over enough work
constexpr int64_t kStepChunk = int64_t(kStepThreads) * 4 * kStepUnroll * 4;

struct NoCopy {};  // the copy type when there are no model copies

// Element types per tensor: code = grad kind * 3 + copy kind for float32 parameters
// (kind 0: float32 / no copy, 1: bfloat16, 2: float16); kDoubleCode for float64 parameters.
constexpr uint8_t kDoubleCode = 9;

struct StepTable {
  void* p[kMaxTensors];
  const void* g[kMaxTensors];
  void* m[kMaxTensors];
  void* v[kMaxTensors];
  void* copy[kMaxTensors];
  int64_t n[kMaxTensors];
  int64_t first_block[kMaxTensors + 1];
  uint8_t code[kMaxTensors];
  bool aligned[kMaxTensors];
  int count;
};
static_assert(sizeof(StepTable) < 31 * 1024, "kernel parameters are limited to 32 KB");

struct Hyper { double lr, b1, b2, eps, wd, bc1, bc2; };

template <typename T>
struct HyperT {
  T lr, b1, b2, eps, wd, bc1, bc2, gs;
};

template <typename T>
__device__ __forceinline__ void adamw_update(T& p, T& m, T& v, T g, const HyperT<T>& h) {
  g *= h.gs;
  p -= h.lr * h.wd * p;
  m = h.b1 * m + (T(1) - h.b1) * g;
  v = h.b2 * v + (T(1) - h.b2) * g * g;
  p -= h.lr * (m / h.bc1) / (sqrt(v / h.bc2) + h.eps);
}

// The largest k with first_block[k] <= b (tables hold no empty tensors).
template <typename Table>
__device__ __forceinline__ int find_tensor(const Table& tab, int64_t b) {
  int lo = 0, hi = tab.count - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (tab.first_block[mid] <= b) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

// Elements [begin, end) of tensor k.
template <typename T, typename G, typename C>
__device__ void adamw_chunk(const StepTable& tab, int k, int64_t begin, int64_t end, const HyperT<T>& h) {
  T* __restrict__ p = static_cast<T*>(tab.p[k]);
  const G* __restrict__ g = static_cast<const G*>(tab.g[k]);
  T* __restrict__ m = static_cast<T*>(tab.m[k]);
  T* __restrict__ v = static_cast<T*>(tab.v[k]);
  int64_t rest = begin;
  if (tab.aligned[k]) {
    using PT = Pack<T, 4>;
    using PG = Pack<G, 4>;
    const int64_t groups = (end - begin) / 4;  // begin is a multiple of 4
    for (int64_t q0 = threadIdx.x; q0 < groups; q0 += kStepUnroll * blockDim.x) {
      PT pp[kStepUnroll], mm[kStepUnroll], vv[kStepUnroll];
      PG gg[kStepUnroll];
#pragma unroll
      for (int u = 0; u < kStepUnroll; ++u) {
        const int64_t q = q0 + u * blockDim.x, off = begin + 4 * q;
        if (q < groups) {
          pp[u] = *reinterpret_cast<const PT*>(p + off);
          gg[u] = *reinterpret_cast<const PG*>(g + off);
          mm[u] = *reinterpret_cast<const PT*>(m + off);
          vv[u] = *reinterpret_cast<const PT*>(v + off);
        }
      }
#pragma unroll
      for (int u = 0; u < kStepUnroll; ++u) {
        const int64_t q = q0 + u * blockDim.x, off = begin + 4 * q;
        if (q < groups) {
#pragma unroll
          for (int j = 0; j < 4; ++j) adamw_update(pp[u].v[j], mm[u].v[j], vv[u].v[j], convert<T>(gg[u].v[j]), h);
          *reinterpret_cast<PT*>(p + off) = pp[u];
          *reinterpret_cast<PT*>(m + off) = mm[u];
          *reinterpret_cast<PT*>(v + off) = vv[u];
          if constexpr (!std::is_same_v<C, NoCopy>) {
            Pack<C, 4> cc;
#pragma unroll
            for (int j = 0; j < 4; ++j) cc.v[j] = convert<C>(pp[u].v[j]);
            *reinterpret_cast<Pack<C, 4>*>(static_cast<C*>(tab.copy[k]) + off) = cc;
          }
        }
      }
    }
    rest = begin + 4 * groups;
  }
  for (int64_t i = rest + threadIdx.x; i < end; i += blockDim.x) {
    T pi = p[i], mi = m[i], vi = v[i];
    adamw_update(pi, mi, vi, convert<T>(g[i]), h);
    p[i] = pi;
    m[i] = mi;
    v[i] = vi;
    if constexpr (!std::is_same_v<C, NoCopy>) static_cast<C*>(tab.copy[k])[i] = convert<C>(pi);
  }
}

template <typename T>
__device__ __forceinline__ HyperT<T> hyper_as(const Hyper& h, double gs) {
  return HyperT<T>{T(h.lr), T(h.b1), T(h.b2), T(h.eps), T(h.wd), T(h.bc1), T(h.bc2), T(gs)};
}

__global__ void __launch_bounds__(kStepThreads)
adamw_kernel(const __grid_constant__ StepTable tab, Hyper h, const double* grad_scale) {
  const int64_t b = blockIdx.x;
  const int k = find_tensor(tab, b);
  const int64_t begin = (b - tab.first_block[k]) * kStepChunk;
  const int64_t end = min(tab.n[k], begin + kStepChunk);
  const double gs = grad_scale ? *grad_scale : 1.0;
  const HyperT<float> hf = hyper_as<float>(h, gs);
  switch (tab.code[k]) {
    case 0: adamw_chunk<float, float, NoCopy>(tab, k, begin, end, hf); break;
    case 1: adamw_chunk<float, float, __nv_bfloat16>(tab, k, begin, end, hf); break;
    case 2: adamw_chunk<float, float, __half>(tab, k, begin, end, hf); break;
    case 3: adamw_chunk<float, __nv_bfloat16, NoCopy>(tab, k, begin, end, hf); break;
    case 4: adamw_chunk<float, __nv_bfloat16, __nv_bfloat16>(tab, k, begin, end, hf); break;
    case 5: adamw_chunk<float, __nv_bfloat16, __half>(tab, k, begin, end, hf); break;
    case 6: adamw_chunk<float, __half, NoCopy>(tab, k, begin, end, hf); break;
    case 7: adamw_chunk<float, __half, __nv_bfloat16>(tab, k, begin, end, hf); break;
    case 8: adamw_chunk<float, __half, __half>(tab, k, begin, end, hf); break;
    default: adamw_chunk<double, double, NoCopy>(tab, k, begin, end, hyper_as<double>(h, gs)); break;
  }
}

uint8_t kind_of(DType d) { return d == DType::BFloat16 ? 1 : d == DType::Float16 ? 2 : 0; }

bool aligned_to(const Tensor& t, size_t bytes) {
  return reinterpret_cast<uintptr_t>(t.raw_data()) % bytes == 0;
}

Tensors adamw_cuda(const Tensors& in, const Attrs& a) {
  const bool has_scale = a.b("has_grad_scale", false), has_copy = a.b("has_model_copy", false);
  const size_t n = ops::check_adamw_inputs(in, has_copy, has_scale, "adamw_step");
  if (n == 0) return {};
  Hyper h{a.f("lr", 1e-3), a.f("beta1", 0.9), a.f("beta2", 0.999), a.f("eps", 1e-8),
          a.f("weight_decay", 0.0), 0, 0};
  const int64_t step = a.i("step");
  h.bc1 = 1 - std::pow(h.b1, double(step));
  h.bc2 = 1 - std::pow(h.b2, double(step));
  set_device(in[0], "adamw_step");
  // The scale as float64 on the device (a tiny device-side cast when it is not already).
  Tensor scale;
  if (has_scale) scale = ops::contiguous(ops::to_dtype(in.back(), DType::Float64));
  const double* scale_ptr = has_scale ? scale.data<double>() : nullptr;

  StepTable tab{};  // count 0, first_block[0] 0
  auto launch = [&]() {
    if (tab.count == 0) return;
    adamw_kernel<<<unsigned(tab.first_block[tab.count]), kStepThreads, 0, current_stream()>>>(tab, h, scale_ptr);
    check_launch("adamw_step");
    tab.count = 0;
  };
  for (size_t k = 0; k < n; ++k) {
    const Tensor &p = in[k], &g = in[n + k], &m = in[2 * n + k], &v = in[3 * n + k];
    const int64_t numel = p.numel();
    if (numel == 0) continue;
    const int c = tab.count;
    tab.p[c] = p.raw_data();
    tab.g[c] = g.raw_data();
    tab.m[c] = m.raw_data();
    tab.v[c] = v.raw_data();
    tab.copy[c] = has_copy ? in[4 * n + k].raw_data() : nullptr;
    tab.n[c] = numel;
    const bool dbl = p.dtype() == DType::Float64;
    tab.code[c] = dbl ? kDoubleCode : uint8_t(kind_of(g.dtype()) * 3 + (has_copy ? kind_of(in[4 * n + k].dtype()) : 0));
    const size_t wide = 4 * itemsize(p.dtype());  // one group of 4 elements, in bytes
    bool al = aligned_to(p, wide) && aligned_to(m, wide) && aligned_to(v, wide) &&
              aligned_to(g, 4 * itemsize(g.dtype()));
    if (has_copy) al = al && aligned_to(in[4 * n + k], 4 * itemsize(in[4 * n + k].dtype()));
    tab.aligned[c] = al;
    tab.first_block[c + 1] = tab.first_block[c] + (numel + kStepChunk - 1) / kStepChunk;
    ++tab.count;
    if (tab.count == kMaxTensors) launch();
  }
  launch();
  return {};
}

// ---- global_norm ----

constexpr int kMaxNormTensors = 640;
constexpr int kNormThreads = 256;
constexpr int64_t kNormChunk = 8192;  // elements per block, a multiple of every pack width

struct NormTable {
  const void* x[kMaxNormTensors];
  int64_t n[kMaxNormTensors];
  int64_t first_block[kMaxNormTensors + 1];
  uint8_t dtype[kMaxNormTensors];  // 0 float32, 1 float64, 2 bfloat16, 3 float16
  bool aligned[kMaxNormTensors];
  int count;
};
static_assert(sizeof(NormTable) < 31 * 1024, "kernel parameters are limited to 32 KB");

// Sum of squares of elements [begin, end) of x, this thread's share, in float64.
template <typename T>
__device__ double sum_squares(const void* xv, int64_t begin, int64_t end, bool aligned) {
  const T* x = static_cast<const T*>(xv);
  constexpr int W = kVec<T>;
  using P = Pack<T, W>;
  double acc0 = 0, acc1 = 0;  // two accumulators: two loads in flight
  int64_t rest = begin;
  if (aligned) {
    const int64_t packs = (end - begin) / W;
    int64_t q = threadIdx.x;
    for (; q + blockDim.x < packs; q += 2 * blockDim.x) {
      const P a = reinterpret_cast<const P*>(x + begin)[q];
      const P b = reinterpret_cast<const P*>(x + begin)[q + blockDim.x];
#pragma unroll
      for (int j = 0; j < W; ++j) {
        const double da = convert<double>(a.v[j]), db = convert<double>(b.v[j]);
        acc0 += da * da;
        acc1 += db * db;
      }
    }
    if (q < packs) {
      const P a = reinterpret_cast<const P*>(x + begin)[q];
#pragma unroll
      for (int j = 0; j < W; ++j) {
        const double da = convert<double>(a.v[j]);
        acc0 += da * da;
      }
    }
    rest = begin + packs * W;
  }
  for (int64_t i = rest + threadIdx.x; i < end; i += blockDim.x) {
    const double d = convert<double>(x[i]);
    acc0 += d * d;
  }
  return acc0 + acc1;
}

// Fixed-order block sum (valid in thread 0): a shuffle tree in each warp, then warp 0 over the
// per-warp sums. The same order on every run.
__device__ double warp_sum(double v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  return v;
}

__device__ double block_sum(double v) {
  __shared__ double warp_sums[32];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  v = warp_sum(v);
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  const int warps = (blockDim.x + 31) / 32;
  double total = 0;
  if (warp == 0) total = warp_sum(lane < warps ? warp_sums[lane] : 0.0);
  return total;
}

__global__ void __launch_bounds__(kNormThreads)
norm_partials_kernel(const __grid_constant__ NormTable tab, double* partial) {
  const int64_t b = blockIdx.x;
  const int k = find_tensor(tab, b);
  const int64_t begin = (b - tab.first_block[k]) * kNormChunk;
  const int64_t end = min(tab.n[k], begin + kNormChunk);
  double acc;
  switch (tab.dtype[k]) {
    case 0: acc = sum_squares<float>(tab.x[k], begin, end, tab.aligned[k]); break;
    case 1: acc = sum_squares<double>(tab.x[k], begin, end, tab.aligned[k]); break;
    case 2: acc = sum_squares<__nv_bfloat16>(tab.x[k], begin, end, tab.aligned[k]); break;
    default: acc = sum_squares<__half>(tab.x[k], begin, end, tab.aligned[k]); break;
  }
  const double total = block_sum(acc);
  if (threadIdx.x == 0) partial[b] = total;
}

template <typename Out>
__global__ void __launch_bounds__(1024) norm_final_kernel(const double* partial, int64_t count, Out* out) {
  double acc = 0;
  for (int64_t i = threadIdx.x; i < count; i += blockDim.x) acc += partial[i];
  const double total = block_sum(acc);
  if (threadIdx.x == 0) *out = Out(sqrt(total));
}

uint8_t norm_code(DType d) {
  switch (d) {
    case DType::Float32: return 0;
    case DType::Float64: return 1;
    case DType::BFloat16: return 2;
    default: return 3;
  }
}

Tensors global_norm_cuda(const Tensors& in, const Attrs&) {
  const DType out_dtype = ops::check_global_norm_inputs(in);
  std::vector<Tensor> xs;
  int64_t blocks = 0;
  for (size_t k = 0; k < in.size(); ++k) {
    if (in[k].numel() == 0) continue;
    xs.push_back(ops::contiguous(in[k]));
    blocks += (in[k].numel() + kNormChunk - 1) / kNormChunk;
  }
  const Device dev = in[0].device();
  Tensor out = Tensor::empty({}, out_dtype, dev);
  set_device(in[0], "global_norm");
  if (blocks == 0) {
    ops::fill_(out, 0.0);
    return {out};
  }
  Tensor partial = Tensor::empty({blocks}, DType::Float64, dev);
  double* pp = partial.data<double>();
  NormTable tab{};
  int64_t done = 0;  // partials written by earlier launches
  auto launch = [&]() {
    if (tab.count == 0) return;
    norm_partials_kernel<<<unsigned(tab.first_block[tab.count]), kNormThreads, 0, current_stream()>>>(tab, pp + done);
    check_launch("global_norm");
    done += tab.first_block[tab.count];
    tab.count = 0;
  };
  for (const Tensor& x : xs) {
    const int c = tab.count;
    tab.x[c] = x.raw_data();
    tab.n[c] = x.numel();
    tab.dtype[c] = norm_code(x.dtype());
    tab.aligned[c] = aligned16(x);
    tab.first_block[c + 1] = tab.first_block[c] + (x.numel() + kNormChunk - 1) / kNormChunk;
    ++tab.count;
    if (tab.count == kMaxNormTensors) launch();
  }
  launch();
  if (out_dtype == DType::Float64)
    norm_final_kernel<<<1, 1024, 0, current_stream()>>>(pp, blocks, out.data<double>());
  else
    norm_final_kernel<<<1, 1024, 0, current_stream()>>>(pp, blocks, out.data<float>());
  check_launch("global_norm");
  return {out};
}

}  // namespace

LS_REGISTER(adamw_cuda) {
  register_kernel("adamw_step", "cuda", adamw_cuda, {DType::Float32, DType::Float64});
  register_kernel("global_norm", "cuda", global_norm_cuda,
                  {DType::Float32, DType::Float64, DType::BFloat16, DType::Float16});
}

}  // namespace ls::cuda
