// The kernels of cuda/sm90a/ as cuda/matmul.cu and cuda/attention.cu call them. This folder is
// compiled for sm_90a only (wgmma and setmaxnreg exist on no other target), so the interface is
// plain pointers and strides, free of the core's types.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace ls::cuda::sm90a {

// C[z] (M x N, row-major, leading dim ldc) = A[z] (M x K) @ B[z] (K x N), z < batch.
//   A (m, k) at a[z * a_batch + m * lda + k] when a_kmajor, else a[z * a_batch + k * lda + m];
//   B (k, n) at b[z * b_batch + n * ldb + k] when b_kmajor, else b[z * b_batch + k * ldb + n].
struct GemmProblem {
  bool bf16;  // else fp16
  const void* a;
  bool a_kmajor;
  int64_t lda, a_batch;
  const void* b;
  bool b_kmajor;
  int64_t ldb, b_batch;
  void* c;
  int64_t ldc, c_batch;
  bool c_padded;  // C's rows own the columns N .. ldc - 1 (padding the kernel may overwrite)
  int M, N, K;
  int batch;
  int sms;          // the device's multiprocessor count: the persistent grid's size
  int splits;       // split-K parts (gemm_splits), 1 for none
  float* partials;  // splits > 1: a workspace of splits * M * N floats
  const void* bias;  // (N,) in C's type, added to every row of C (in the epilogue), or null
};

// How many parts to split K into (1: none): for a single GEMM of fewer output tiles than SMs,
// the count that minimises an estimate of its time, partial sums' traffic included.
int gemm_splits(const GemmProblem& p);

// True when `device` runs the sm_90a kernels (compute capability 9.0).
bool available(int device);

// True when the current device runs the sm_90a kernels and the environment variable `choice`
// (LLMSCRATCH_GEMM, LLMSCRATCH_ATTENTION) does not ask for the mma.sync kernels ("mma"). Read per
// call, so tests and benchmarks can compare the two in one process.
bool chosen(const char* choice);

// Launches the GEMM on `stream` (and, with splits > 1, the sum of the partials into C) and returns
// true, or returns false without launching when the problem does not meet the copy engine's rules (16-byte aligned bases, leading dims and batch
// strides in multiples of 8 elements) so the caller takes another path. Launch errors are left
// for the caller's cudaGetLastError.
bool gemm(const GemmProblem& p, cudaStream_t stream);

// Where the rows of one (B, heads, rows, HS) attention tensor are: element (b, h, r, d) at
// b * b_stride + h * h_stride + r * row_stride + d (elements). Contiguous (B, heads, rows, HS) is
// {heads * rows * HS, rows * HS, HS}; the (B, rows, heads, HS) layout a Transformer's fused qkv
// projection gives, viewed as (B, heads, rows, HS), is {rows * heads * HS', HS, heads * HS'}.
struct HeadStrides {
  int64_t b, h, row;
};

// Attention forward (the op "attention" of cuda/attention.cu without a user mask): q (B, NH, T,
// HS), k and v (B, NKV, S, HS) and out (B, NH, T, HS), each with its own HeadStrides (multiples of
// 8 elements) and a 16-byte aligned base; lse (B, NH, T) fp32 contiguous. Launches on `stream`
// and returns true, or returns false without launching when the case is not covered (HS other
// than 64 and 128, a non-positive scale, misalignment).
struct AttentionProblem {
  bool bf16;  // else fp16
  int HS;
  const void *q, *k, *v;
  void* out;
  float* lse;
  int B, NH, NKV, T, S;
  float scale;
  bool causal;
  HeadStrides sq, sk, sv, so;
};

bool attention_forward(const AttentionProblem& a, cudaStream_t stream);

// Attention backward of the same case: dq (B, NH, T, HS), dk and dv (B, NKV, S, HS) written
// (not accumulated), from q, k, v, dout, the forward's lse and dd = rowsum(dout * out) - dlse
// (B, NH, T) fp32 contiguous; every (B, heads, rows, HS) tensor with its own HeadStrides. Returns
// false without launching when the case is not covered.
struct AttentionBackwardProblem {
  bool bf16;
  int HS;
  const void *q, *k, *v, *dout;
  const float *lse, *dd;
  void *dq, *dk, *dv;
  int B, NH, NKV, T, S;
  float scale;
  bool causal;
  HeadStrides sq, sk, sv, sdo, sdq, sdk, sdv;
};

// Whether the copy engine can read a (B, heads, rows, HS) tensor of 16-bit elements with these
// strides in place: every stride a multiple of 8 elements (16 bytes).
bool head_strides_ok(const HeadStrides& s);

bool attention_backward(const AttentionBackwardProblem& a, cudaStream_t stream);

}  // namespace ls::cuda::sm90a
