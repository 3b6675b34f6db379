// matmul on the GPU with torch semantics for operands of two or more dims (the public matmul in
// cpp/ops/matmul.cpp promotes 1-D operands before the registry call and squeezes after):
//   A (..., M, K) @ B (..., K, N) -> C (..., M, N),   C[z, m, n] = sum_k A[z, m, k] B[z, k, n]
// with the batch dims "..." broadcast, plus an optional bias (N,) on every row (a Linear layer):
// the wgmma kernel adds it in its epilogue (3.0 ms of separate bias adds in a GPT-2 training
// step before), the other kernels after the GEMM. The backward (declared in cpp/ops/matmul.cpp)
// calls matmul on transposed views, dA = g B^T and dB = A^T g, so column-major operands are the
// common case and are read in place.
//
// bf16 / fp16 on Hopper (compute capability 9.0, built with sm_90a): the TMA + wgmma kernel of
//   cuda/sm90a/matmul_wgmma.cu, for every operand layout whose bases and strides the copy engine
//   accepts and whose batch is one stride per operand; everything else, and every other GPU,
//   takes the mma.sync kernel below. LLMSCRATCH_GEMM=mma forces the latter.
// bf16 / fp16 elsewhere: a tensor-core GEMM with fp32 accumulation, output rounded to the input
//   dtype.
//   - Block tile 128 (M) x 256 (N) x 64 (K), 8 warps as 2 x 4, each warp owns 64 x 64 of C:
//     4 x 8 mma.sync.m16n8k16 per 16-wide K step, fed by ldmatrix.x4 (ldmatrix.trans for an
//     operand whose rows, not K, are contiguous in memory). The fragments are double-buffered in
//     registers: the ldmatrix of the next K step is issued before the mma of this one. When that
//     tile would leave SMs idle (fewer tiles than SMs), a 128 x 128 tile (4 warps of 64 x 64,
//     two blocks per SM) runs instead.
//   - Shared memory is filled by 16-byte cp.async in a 4-stage ring (192 KB per block; 3 stages,
//     96 KB, for the small tile), so three k-tiles are in flight while the warps multiply the
//     fourth, with one barrier per k-tile. Each tile is stored in 16-byte chunks with an XOR
//     swizzle of the chunk index, so the 8 row addresses of one ldmatrix phase, and the 8 chunks
//     one cp.async phase writes, fall in 8 distinct bank groups.
//   - Both layouts of each operand are template parameters: A with K contiguous (row-major) or
//     M contiguous (a transposed view), B with N contiguous (row-major) or K contiguous.
//     cp.async needs 16-byte aligned sources, so an operand whose other stride is not a multiple
//     of 8 elements, whose base is misaligned, or which has no unit stride at all is first copied
//     into a buffer with K contiguous and a padded leading dimension (an O(MK) copy for an
//     O(MNK) product).
//   - Tails in M, N and K: every cp.async carries a source size, 0..16 bytes, and the rest of
//     the chunk is zero-filled, so tails need no separate path and nothing past a row is read.
//   - Blocks are numbered in groups of 8 tile rows so that blocks running together share their
//     A and B tiles in L2.
// fp32 / fp64: a tiled SIMT kernel (64 x 64 tile of C per block, K steps of 16 through shared
//   memory, 4 x 4 outputs per thread) on arbitrary strides, accumulating in the input type
//   (no TF32), so fp32 matches the CPU to rounding.
// Batch: blockIdx.z walks the broadcast batch; each operand's batch offset comes from its own
//   batch strides (0 where broadcast). A batched A against a 2-D B whose batch folds into rows
//   is one GEMM with M' = batch * M, as on the CPU.
// The block-level GEMMs (loaders, mainloop, epilogue) live in cuda/gemm_tile.cuh, shared with the
// grouped GEMM of cuda/moe.cu; this file picks tiles, layouts and launches.
// Limits: M, N, K below 2^31 each.
#include <algorithm>
#include <atomic>
#include <type_traits>

#include "core/registry.h"
#include "elementwise.cuh"
#include "gemm_tile.cuh"
#include "ops/op_args.h"
#include "ops/ops.h"
#ifdef LLMSCRATCH_SM90A
#include "sm90a/sm90a.h"
#endif

namespace ls::cuda {

namespace {

using namespace gemm;

// ---- batch indexing shared by both kernels ----

constexpr int kMaxBatchDims = 6;

// The output's batch dims (merged where possible) with each operand's strides; z is the flat
// batch index of the output.
struct BatchIndex {
  int nd;
  int64_t size[kMaxBatchDims];
  int64_t sa[kMaxBatchDims], sb[kMaxBatchDims];

  __device__ __forceinline__ void offsets(int64_t z, int64_t& oa, int64_t& ob) const {
    oa = 0;
    ob = 0;
    for (int d = nd - 1; d >= 0; --d) {
      int64_t i = z % size[d];
      z /= size[d];
      oa += i * sa[d];
      ob += i * sb[d];
    }
  }
};

// One GEMM problem (or a batch of them). A(m, k) at a[m * a_rs + k * a_ks], B(k, n) at
// b[k * b_ks + n * b_ns], C(m, n) of batch z at c[z * c_batch + m * ldc + n].
template <typename T>
struct GemmArgs {
  const T* a;
  const T* b;
  T* c;
  int M, N, K;
  int64_t a_rs, a_ks, b_ks, b_ns;
  int64_t ldc, c_batch;
  BatchIndex batch;
  int64_t z0;  // the launch covers batches z0 + blockIdx.z
  const T* bias;  // (N,) added to every row by the wgmma kernel's epilogue, or null
};

// ---- tensor-core kernel (bf16, fp16): the block tile of cuda/gemm_tile.cuh ----

template <typename T, typename C, bool A_KMAJOR, bool B_KMAJOR>
__global__ void __launch_bounds__(C::kThreads, C::kMinBlocks) mma_gemm_kernel(GemmArgs<T> p) {
  constexpr int kBM = C::kBM, kBN = C::kBN;
  extern __shared__ __align__(128) unsigned char smem[];

  // Tile order: groups of kGroupM tile rows, column by column inside a group.
  const int tiles_m = (p.M + kBM - 1) / kBM, tiles_n = (p.N + kBN - 1) / kBN;
  const int pid = blockIdx.x, per_group = kGroupM * tiles_n;
  const int first_m = (pid / per_group) * kGroupM, group_rows = min(tiles_m - first_m, kGroupM);
  const int tm = first_m + (pid % per_group) % group_rows, tn = (pid % per_group) / group_rows;

  int64_t z = p.z0 + blockIdx.z, oa, ob;
  p.batch.offsets(z, oa, ob);
  T* c = p.c + z * p.c_batch;  // c points at C[z, 0, 0]
  const bool paired = (p.ldc % 2 == 0) && (p.c_batch % 2 == 0);
  mma_block_tile<T, C, A_KMAJOR, B_KMAJOR>(p.a + oa, A_KMAJOR ? p.a_rs : p.a_ks, p.b + ob,
                                           B_KMAJOR ? p.b_ns : p.b_ks, p.M, p.N, p.K, tm * kBM,
                                           tn * kBN, c, p.ldc, paired, smem);
}

// ---- SIMT kernel (fp32, fp64): the block tile of cuda/gemm_tile.cuh ----

template <typename T>
__global__ void __launch_bounds__(kSThreads) simt_gemm_kernel(GemmArgs<T> p) {
  const int m0 = blockIdx.x * kSM, n0 = blockIdx.y * kSN;  // M on x: folded batches make M long
  int64_t z = p.z0 + blockIdx.z, oa, ob;
  p.batch.offsets(z, oa, ob);
  // a points at A[z, 0, 0], b at B[z, 0, 0], c at C[z, 0, 0]
  simt_block_tile<T>(p.a + oa, p.a_rs, p.a_ks, p.b + ob, p.b_ks, p.b_ns, p.M, p.N, p.K, m0, n0,
                     p.c + z * p.c_batch, p.ldc);
}

// ---- launchers ----

constexpr int64_t kMaxGridZ = 65535;

template <typename T, typename C, bool A_KMAJOR, bool B_KMAJOR>
void launch_mma(GemmArgs<T> p, int64_t nbatch, int dev) {
  auto kernel = mma_gemm_kernel<T, C, A_KMAJOR, B_KMAJOR>;
  static std::atomic<uint64_t> configured{0};
  allow_smem(kernel, C::kSmemBytes, configured, dev, "matmul");
  int64_t tiles = int64_t((p.M + C::kBM - 1) / C::kBM) * ((p.N + C::kBN - 1) / C::kBN);
  for (int64_t z0 = 0; z0 < nbatch; z0 += kMaxGridZ) {
    p.z0 = z0;
    dim3 grid(unsigned(tiles), 1, unsigned(std::min(kMaxGridZ, nbatch - z0)));
    kernel<<<grid, C::kThreads, C::kSmemBytes, current_stream()>>>(p);
    check_launch("matmul");
  }
}

// The big tile unless it leaves SMs idle: then the small one, two blocks per SM.
template <typename T, bool A_KMAJOR, bool B_KMAJOR>
void launch_mma(GemmArgs<T> p, int64_t nbatch) {
  int dev = 0;
  check(cudaGetDevice(&dev), "matmul");
  int64_t big = nbatch * ((p.M + BigTile::kBM - 1) / BigTile::kBM) *
                ((p.N + BigTile::kBN - 1) / BigTile::kBN);
  if (big >= sm_count(dev, "matmul"))
    launch_mma<T, BigTile, A_KMAJOR, B_KMAJOR>(p, nbatch, dev);
  else
    launch_mma<T, SmallTile, A_KMAJOR, B_KMAJOR>(p, nbatch, dev);
}

template <typename T>
void launch_simt(GemmArgs<T> p, int64_t nbatch) {
  LS_CHECK((p.N + kSN - 1) / kSN <= 65535, ValueError, "matmul: the float32/float64 CUDA kernel "
           "takes N up to ", 65535 * kSN, ", got ", p.N);
  for (int64_t z0 = 0; z0 < nbatch; z0 += kMaxGridZ) {
    p.z0 = z0;
    dim3 grid(unsigned((p.M + kSM - 1) / kSM), unsigned((p.N + kSN - 1) / kSN),
              unsigned(std::min(kMaxGridZ, nbatch - z0)));
    simt_gemm_kernel<T><<<grid, kSThreads, 0, current_stream()>>>(p);
    check_launch("matmul");
  }
}

// ---- entry ----

// Which of an R x K operand's dims is contiguous, for the cp.async path: (r, k) at r*rs + k*ks.
// K contiguous (kmajor) needs rs to keep 16-byte alignment; R contiguous needs ks to. A dim of
// size 1 has no stride to honour.
enum class Major { K, R, None };

Major classify(int64_t rs, int64_t ks, int64_t R, int64_t K) {
  if ((ks == 1 || K == 1) && (R == 1 || rs % 8 == 0)) return Major::K;
  if ((rs == 1 || R == 1) && (K == 1 || ks % 8 == 0)) return Major::R;
  return Major::None;
}

// (rs, ks) of operand x: A (..., M, K) has R = M; B (..., K, N) has R = N.
void operand_strides(const Tensor& x, bool is_b, int64_t& R, int64_t& K, int64_t& rs, int64_t& ks) {
  int64_t nd = x.dim();
  int64_t r_dim = is_b ? nd - 1 : nd - 2, k_dim = is_b ? nd - 2 : nd - 1;
  R = x.shape()[r_dim];
  K = x.shape()[k_dim];
  rs = x.strides()[r_dim];
  ks = x.strides()[k_dim];
}

bool cp_async_ready(const Tensor& x, bool is_b) {
  int64_t R, K, rs, ks;
  operand_strides(x, is_b, R, K, rs, ks);
  if (classify(rs, ks, R, K) == Major::None) return false;
  if (!aligned16(x)) return false;
  for (int64_t d = 0; d < x.dim() - 2; ++d)
    if (x.shape()[d] > 1 && x.strides()[d] % 8 != 0) return false;
  return true;
}

// x itself when the tensor-core kernel can read it in place; else a copy into a buffer whose
// rows are padded to a multiple of 8 elements (the padding is never read: tails are
// zero-filled). The copy keeps the dim that is contiguous in x contiguous, so it streams rows (a
// (V, N) logits gradient of odd V read as its transpose took 5 ms to transpose and 1 ms to pad);
// an operand with no unit stride is laid out with K contiguous.
Tensor for_tensor_cores(const Tensor& x, bool is_b) {
  if (cp_async_ready(x, is_b)) return x;
  const int64_t nd = x.dim();
  // the dim to keep contiguous: x's last dim, its second-last, or K
  int64_t inner = x.strides()[nd - 1] == 1 ? nd - 1 : x.strides()[nd - 2] == 1 ? nd - 2 : (is_b ? nd - 2 : nd - 1);
  const int64_t outer = inner == nd - 1 ? nd - 2 : nd - 1;
  Shape shape(x.shape().begin(), x.shape().end() - 2);
  shape.push_back(x.shape()[outer]);
  shape.push_back((x.shape()[inner] + 7) / 8 * 8);
  Tensor buf = Tensor::empty(shape, x.dtype(), x.device());
  Tensor view = ops::slice(buf, -1, 0, x.shape()[inner]);  // x's dims (outer, inner)
  if (inner == nd - 1) {
    ops::copy_(view, x);
    return view;
  }
  ops::copy_(view, ops::transpose(x, -1, -2));  // both sides walk x's memory order
  return ops::transpose(view, -1, -2);
}

using ops::fold_rows;  // the CPU kernel's rule (cpp/ops/matmul.cpp)

// Batch dims of the output with each operand's strides (0 where it broadcasts), adjacent dims
// merged when both operands allow it.
void batch_dims(const Shape& batch, const Tensor& a, const Tensor& b, std::vector<int64_t>& size,
                std::vector<int64_t>& sa, std::vector<int64_t>& sb) {
  int64_t nb = int64_t(batch.size());
  auto stride_of = [&](const Tensor& x, int64_t d) {  // d indexes the output's batch dims
    int64_t xd = d - (nb - (x.dim() - 2));
    return xd < 0 || x.shape()[xd] == 1 ? int64_t(0) : x.strides()[xd];
  };
  for (int64_t d = 0; d < nb; ++d) {
    if (batch[d] == 1) continue;
    int64_t s_a = stride_of(a, d), s_b = stride_of(b, d);
    if (!size.empty() && sa.back() == s_a * batch[d] && sb.back() == s_b * batch[d]) {
      size.back() *= batch[d];  // the previous dim steps exactly over this one in both
      sa.back() = s_a;
      sb.back() = s_b;
    } else {
      size.push_back(batch[d]);
      sa.push_back(s_a);
      sb.push_back(s_b);
    }
  }
}

#ifdef LLMSCRATCH_SM90A
// The wgmma kernel of cuda/sm90a/ on compute capability 9.0, unless LLMSCRATCH_GEMM=mma asks for
// the mma.sync kernel. False when it is not chosen or declines the operands (the copy engine's
// alignment rules, or batch dims that do not fold into one stride per operand).
template <typename T>
bool try_wgmma(const GemmArgs<T>& p, int64_t nbatch, bool ak, bool bk) {
  if (p.batch.nd > 1 || nbatch > 65535 || !sm90a::chosen("LLMSCRATCH_GEMM")) return false;
  // A stride of a size-1 dim is never stepped; the copy engine still wants it aligned.
  auto ld = [](int64_t stride, int64_t outer, int64_t inner) {
    return outer == 1 ? (inner + 7) / 8 * 8 : stride;
  };
  sm90a::GemmProblem g{};
  g.bf16 = std::is_same_v<T, __nv_bfloat16>;
  g.a = p.a;
  g.a_kmajor = ak;
  g.lda = ak ? ld(p.a_rs, p.M, p.K) : ld(p.a_ks, p.K, p.M);
  g.b = p.b;
  g.b_kmajor = bk;
  g.ldb = bk ? ld(p.b_ns, p.N, p.K) : ld(p.b_ks, p.K, p.N);
  g.c = p.c;
  g.bias = p.bias;
  g.ldc = p.ldc;
  g.c_batch = p.c_batch;
  g.c_padded = true;  // matmul_cuda allocates C, with rows of ops::matmul_row_stride
  g.M = p.M;
  g.N = p.N;
  g.K = p.K;
  g.batch = int(nbatch);
  g.a_batch = p.batch.nd == 1 ? p.batch.sa[0] : 0;
  g.b_batch = p.batch.nd == 1 ? p.batch.sb[0] : 0;
  int dev = 0;
  check(cudaGetDevice(&dev), "matmul");
  g.sms = sm_count(dev, "matmul");
  g.splits = sm90a::gemm_splits(g);
  Tensor partials;  // split-K's workspace, freed to the stream-ordered cache after the launch
  if (g.splits > 1) {
    partials = Tensor::empty({int64_t(g.splits) * g.M * g.N}, DType::Float32, Device{DeviceType::CUDA, dev});
    g.partials = partials.data<float>();
  }
  if (!sm90a::gemm(g, current_stream())) return false;
  check_launch("matmul");
  return true;
}
#endif

// Runs the GEMM; true when p.bias was added too (the wgmma kernel's epilogue), false when the
// caller still has to add it.
template <typename T>
bool run_gemm(GemmArgs<T> p, int64_t nbatch, Major am, Major bm) {
  if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
    launch_simt<T>(p, nbatch);
  } else {
    bool ak = am == Major::K, bk = bm == Major::K;
#ifdef LLMSCRATCH_SM90A
    if (try_wgmma<T>(p, nbatch, ak, bk)) return true;
#endif
    if (ak && bk) launch_mma<T, true, true>(p, nbatch);
    else if (ak) launch_mma<T, true, false>(p, nbatch);
    else if (bk) launch_mma<T, false, true>(p, nbatch);
    else launch_mma<T, false, false>(p, nbatch);
  }
  return false;
}

Tensors matmul_cuda(const Tensors& in, const Attrs&) {
  const Shape batch = ops::check_matmul_kernel_args(in, "CUDA");
  const Tensor& a0 = in[0];
  const Tensor& b0 = in[1];
  int64_t M = a0.size(-2), K = a0.size(-1), N = b0.size(-1);
  const Tensor bias = in.size() > 2 && in[2].defined() ? ops::contiguous(in[2]) : Tensor();
  Shape out_shape = batch;
  out_shape.push_back(M);
  out_shape.push_back(N);
  // Rows padded as ops::matmul_row_stride says (GPT-2's logits): ldc = the row stride.
  Tensor out = ops::matmul_output(out_shape, a0.dtype(), a0.device());
  const int64_t ldc = out.strides()[out.dim() - 2];
  if (out.numel() == 0) return {out};
  set_device(out, "matmul");
  // A bias the GEMM did not add in its epilogue, added after (into out's own padded rows where
  // it has them, which the add's new tensor would not keep).
  auto add_bias = [&]() -> Tensors {
    if (!bias.defined()) return {out};
    Tensor sum = ops::add(out, bias);
    if (ldc == N) return {sum};
    ops::copy_(out, sum);
    return {out};
  };
  if (K == 0) {
    ops::fill_(out, 0.0);
    return add_bias();
  }
  const int64_t kMaxDim = (int64_t(1) << 31) - BigTile::kBN;
  LS_CHECK(M < kMaxDim && N < kMaxDim && K < kMaxDim, ValueError, "matmul: the CUDA kernel "
           "takes M, N, K below 2^31, got ", M, ", ", N, ", ", K);

  const bool tensor_cores = a0.dtype() == DType::BFloat16 || a0.dtype() == DType::Float16;
  Tensor a = tensor_cores ? for_tensor_cores(a0, false) : a0;
  Tensor b = tensor_cores ? for_tensor_cores(b0, true) : b0;
  int64_t bR, bK, b_ns, b_ks;
  operand_strides(b, true, bR, bK, b_ns, b_ks);
  Major bm = classify(b_ns, b_ks, N, K);

  bool bias_added = false;
  CUDA_DISPATCH_FLOAT(a.dtype(), "matmul", {
    using T = scalar_t;
    GemmArgs<T> p{};
    p.bias = bias.defined() ? static_cast<const T*>(bias.raw_data()) : nullptr;
    p.a = static_cast<const T*>(a.raw_data());
    p.b = static_cast<const T*>(b.raw_data());
    p.c = static_cast<T*>(out.raw_data());
    p.N = int(N);
    p.K = int(K);
    p.b_ks = b_ks;
    p.b_ns = b_ns;
    p.ldc = ldc;
    int64_t rows, rs;
    // (..., M, K) @ (K, N) with a foldable batch: one GEMM over batch * M rows.
    if (b.dim() == 2 && fold_rows(a, rows, rs) && rows < kMaxDim &&
        (!tensor_cores || classify(rs, a.strides().back(), rows, K) != Major::None)) {
      p.M = int(rows);
      p.a_rs = rs;
      p.a_ks = a.strides().back();
      p.c_batch = 0;
      p.batch.nd = 0;
      bias_added = run_gemm<T>(p, 1, classify(rs, p.a_ks, rows, K), bm);
      return bias_added ? Tensors{out} : add_bias();
    }
    p.M = int(M);
    p.a_rs = a.strides()[a.dim() - 2];
    p.a_ks = a.strides()[a.dim() - 1];
    p.c_batch = M * ldc;
    Major am = classify(p.a_rs, p.a_ks, M, K);
    std::vector<int64_t> size, sa, sb;
    batch_dims(batch, a, b, size, sa, sb);
    int64_t nbatch = shape_numel(batch);
    if (int64_t(size.size()) <= kMaxBatchDims) {
      p.batch.nd = int(size.size());
      for (size_t d = 0; d < size.size(); ++d) {
        p.batch.size[d] = size[d];
        p.batch.sa[d] = sa[d];
        p.batch.sb[d] = sb[d];
      }
      bias_added = run_gemm<T>(p, nbatch, am, bm);
    } else {  // too many unmergeable batch dims for the kernel: one launch per matrix
      const T* pa = p.a;
      const T* pb = p.b;
      T* pc = p.c;
      p.batch.nd = 0;
      for (int64_t z = 0; z < nbatch; ++z) {
        int64_t oa = 0, ob = 0, rem = z;
        for (int64_t d = int64_t(size.size()) - 1; d >= 0; --d) {
          oa += (rem % size[d]) * sa[d];
          ob += (rem % size[d]) * sb[d];
          rem /= size[d];
        }
        p.a = pa + oa;
        p.b = pb + ob;
        p.c = pc + z * p.c_batch;
        bias_added = run_gemm<T>(p, 1, am, bm);  // the same path for every matrix
      }
    }
  });
  return bias_added ? Tensors{out} : add_bias();
}

}  // namespace

LS_REGISTER(matmul_cuda) {
  register_kernel("matmul", "cuda", matmul_cuda,
                  {DType::Float32, DType::Float64, DType::BFloat16, DType::Float16});
}

}  // namespace ls::cuda
