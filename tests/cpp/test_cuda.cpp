// The CUDA runtime and a few kernels from C++: the caching allocator (reuse without cudaMalloc in
// steady state, per-stream reuse, empty_cache), and matmul, softmax, layer_norm and attention on
// the GPU against the CPU kernels on the same values. Every test skips without a CUDA device, so
// the suite also runs on machines without one (and in builds without CUDA, where
// cuda_available() is false).
#include "test_util.h"

namespace ls::test {

namespace {

constexpr int kDev = 0;

// {allocated, reserved, peak allocated, cudaMalloc calls, cudaFree calls} of device 0.
std::vector<int64_t> stats() {
  int64_t s[5];
  cuda_hooks()->memory_stats(kDev, s);
  return {s[0], s[1], s[2], s[3], s[4]};
}

Device gpu() { return Device{DeviceType::CUDA, kDev}; }

// The GPU result of f next to the CPU one on the same (dtype-rounded) values, compared in
// float64 by relative Frobenius error.
double rel_err(const Tensor& got, const Tensor& ref) {
  std::vector<double> g = values(ops::to_device(ops::to_dtype(got, DType::Float64), Device{}));
  std::vector<double> r = values(ops::to_dtype(ref, DType::Float64));
  double num = 0, den = 0;
  for (size_t i = 0; i < g.size(); ++i) {
    if (std::isnan(g[i])) return INFINITY;
    num += (g[i] - r[i]) * (g[i] - r[i]);
    den += r[i] * r[i];
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

}  // namespace

class Cuda : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  }
};

TEST_F(Cuda, SteadyStateAllocationsMakeNoCudaMalloc) {
  auto step = [] {  // the allocation pattern of a small training step, repeated
    for (int64_t n : {int64_t(1) << 10, int64_t(3) << 20, int64_t(77777), int64_t(1) << 24}) {
      Tensor a = Tensor::empty({n}, DType::Float32, gpu());
      Tensor b = Tensor::empty({n / 2 + 1}, DType::BFloat16, gpu());
    }
  };
  step();
  cuda_hooks()->synchronize(kDev);
  const int64_t mallocs = stats()[3];
  for (int i = 0; i < 10; ++i) step();
  cuda_hooks()->synchronize(kDev);
  EXPECT_EQ(stats()[3], mallocs) << "a repeated step asked cudaMalloc for memory";
}

TEST_F(Cuda, StatsCountAllocatedAndPeak) {
  cuda_hooks()->synchronize(kDev);
  const int64_t before = stats()[0];
  cuda_hooks()->reset_peak(kDev);
  {
    Tensor a = Tensor::empty({1 << 20}, DType::Float32, gpu());  // 4 MiB
    EXPECT_GE(stats()[0] - before, 4 << 20);
  }
  EXPECT_EQ(stats()[0], before);
  EXPECT_GE(stats()[2] - before, 4 << 20);  // the peak remembers the block
}

TEST_F(Cuda, EmptyCacheReturnsFreeBlocks) {
  { Tensor a = Tensor::empty({1 << 22}, DType::Float32, gpu()); }
  cuda_hooks()->synchronize(kDev);
  EXPECT_GT(stats()[1], stats()[0]);  // the freed block is cached
  cuda_hooks()->empty_cache();
  EXPECT_EQ(stats()[1], stats()[0]);
}

TEST_F(Cuda, FreedBlocksAreReusedOnTheirOwnStreamOnly) {
  const CudaHooks& h = *cuda_hooks();
  void* side = h.stream_create(kDev, 0);
  void* const before = h.current_stream(kDev);
  const Shape shape{1 << 20};
  h.set_stream(kDev, side);
  const void* on_side = nullptr;
  {
    Tensor a = Tensor::empty(shape, DType::Float32, gpu());
    on_side = a.raw_data();
  }
  h.set_stream(kDev, before);
  {
    // the side stream's free block could still be in use by work queued there
    Tensor b = Tensor::empty(shape, DType::Float32, gpu());
    EXPECT_NE(b.raw_data(), on_side);
  }
  h.set_stream(kDev, side);
  {
    Tensor c = Tensor::empty(shape, DType::Float32, gpu());
    EXPECT_EQ(c.raw_data(), on_side);  // on its own stream the block comes back
  }
  h.set_stream(kDev, before);
  h.stream_destroy(kDev, side);
}

TEST_F(Cuda, MatmulMatchesCpu) {
  for (DType dt : {DType::Float32, DType::BFloat16})
    for (Shape s : {Shape{37, 53, 29}, Shape{256, 136, 264}, Shape{1000, 1000, 600}}) {
      Tensor a = ops::to_dtype(random({s[0], s[1]}), dt), b = ops::to_dtype(random({s[1], s[2]}), dt);
      Tensor ref = ops::matmul(ops::to_dtype(a, DType::Float64), ops::to_dtype(b, DType::Float64));
      Tensor got = ops::matmul(ops::to_device(a, gpu()), ops::to_device(b, gpu()));
      EXPECT_EQ(got.dtype(), dt);
      EXPECT_LT(rel_err(got, ref), dt == DType::Float32 ? 1e-5 : 1e-2)
          << dtype_name(dt) << " " << shape_str(s);
    }
}

TEST_F(Cuda, SoftmaxAndLayerNormMatchCpu) {
  for (DType dt : {DType::Float32, DType::BFloat16}) {
    Tensor x = ops::to_dtype(ops::mul_scalar(random({129, 1000}), 3.0), dt);
    Tensor w = ops::to_dtype(random({1000}), dt), b = ops::to_dtype(random({1000}), dt);
    Tensor x64 = ops::to_dtype(x, DType::Float64);
    const double tol = dt == DType::Float32 ? 1e-5 : 1e-2;
    EXPECT_LT(rel_err(ops::softmax(ops::to_device(x, gpu()), 1), ops::softmax(x64, 1)), tol);
    Tensor ln = ops::layer_norm(ops::to_device(x, gpu()), ops::to_device(w, gpu()),
                                ops::to_device(b, gpu()), 1e-5);
    Tensor ln_ref = ops::layer_norm(x64, ops::to_dtype(w, DType::Float64),
                                    ops::to_dtype(b, DType::Float64), 1e-5);
    EXPECT_LT(rel_err(ln, ln_ref), tol) << dtype_name(dt);
  }
}

TEST_F(Cuda, CausalAttentionMatchesCpu) {
  // bf16, HS 128, GQA, a tail in T: the tensor-core kernels (wgmma on Hopper)
  const int64_t B = 2, NH = 4, NKV = 2, T = 200, HS = 128;
  Tensor q = ops::to_dtype(random({B, NH, T, HS}), DType::BFloat16);
  Tensor k = ops::to_dtype(random({B, NKV, T, HS}), DType::BFloat16);
  Tensor v = ops::to_dtype(random({B, NKV, T, HS}), DType::BFloat16);
  const double scale = 1.0 / std::sqrt(double(HS));
  Tensors got = ops::attention(ops::to_device(q, gpu()), ops::to_device(k, gpu()),
                               ops::to_device(v, gpu()), Tensor(), true, scale);
  Tensors ref = ops::attention(ops::to_dtype(q, DType::Float32), ops::to_dtype(k, DType::Float32),
                               ops::to_dtype(v, DType::Float32), Tensor(), true, scale);
  EXPECT_LT(rel_err(got[0], ref[0]), 2e-2);
  EXPECT_LT(rel_err(got[1], ref[1]), 1e-3);  // lse is float32 on both sides
}

}  // namespace ls::test
