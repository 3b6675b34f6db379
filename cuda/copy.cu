// Copies on the GPU: contiguous (strided -> dense), cast (any dtype to any dtype), copy_
// (broadcast a source into a strided destination, casting) and fill_. One kernel does all of
// them: out[i] = convert(in[offset(i)]) over the output's elements, both sides strided.
#include "core/registry.h"
#include "elementwise.cuh"
#include "ops/ops.h"

namespace ls::cuda {

namespace {

template <typename To, typename From>
__global__ void copy_kernel(To* __restrict__ out, const From* __restrict__ in, int64_t n,
                            Indexer<2> ix, bool dense) {
  if (dense) {
    for_each_dense<From>(n, [&](int64_t i) { return in[i]; },
                         [&](int64_t i, From v) { out[i] = convert<To>(v); });
  } else {
    for_each_strided(n, ix, [&](const int64_t (&off)[2]) { out[off[0]] = convert<To>(in[off[1]]); });
  }
}

// A same-dtype copy whose innermost dim is contiguous on both sides (a dense copy, a permute that
// keeps the last dim, e.g. (B, T, NH, HS) -> (B, NH, T, HS), or a slice) moves 16-byte vectors:
// the indexer is rescaled to count vectors, so its division runs once per 16 bytes. Returns false
// when the layout or alignment does not allow it.
bool copy_vectors(const Tensor& dst, const Tensor& src, Indexer<2> ix) {
  const int64_t es = int64_t(itemsize(dst.dtype())), w = 16 / es;
  const int d = ix.nd - 1;
  if (d < 0 || dst.dtype() != src.dtype() || w <= 1 || ix.stride[0][d] != 1 || ix.stride[1][d] != 1 ||
      ix.size[d] % w != 0 || !aligned16(dst) || !aligned16(src))
    return false;
  for (int k = 0; k < 2; ++k)
    for (int e = 0; e < d; ++e)
      if (ix.stride[k][e] % w != 0) return false;
  ix.size[d] /= w;
  for (int k = 0; k < 2; ++k)
    for (int e = 0; e < d; ++e) ix.stride[k][e] /= w;
  const int64_t n = dst.numel() / w;
  copy_kernel<uint4, uint4><<<grid_for(n), kThreads, 0, current_stream()>>>(static_cast<uint4*>(dst.raw_data()),
                                                       static_cast<const uint4*>(src.raw_data()), n,
                                                       ix, is_dense(ix));
  return true;
}

// Rows whose elements are contiguous on both sides but whose row strides rule out 16-byte
// vectors (a row of odd length, e.g. a 50257-wide logits row copied into a padded buffer): each
// block walks whole rows, so the index arithmetic runs once per row instead of once per element.
// outer indexes the rows (the indexer without its last dim); L is the row length.
template <typename To, typename From>
__global__ void copy_rows_kernel(To* __restrict__ out, const From* __restrict__ in, int64_t rows, int64_t L,
                                 Indexer<2> outer) {
  constexpr int kU = 8;  // elements per thread in flight
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    int64_t off[2];
    outer.offsets(r, off);
    To* o = out + off[0];
    const From* s = in + off[1];
    for (int64_t c0 = threadIdx.x; c0 < L; c0 += kU * blockDim.x) {
      From v[kU];
#pragma unroll
      for (int u = 0; u < kU; ++u)
        if (c0 + u * blockDim.x < L) v[u] = s[c0 + u * blockDim.x];
#pragma unroll
      for (int u = 0; u < kU; ++u)
        if (c0 + u * blockDim.x < L) o[c0 + u * blockDim.x] = convert<To>(v[u]);
    }
  }
}

// Bytes [4 WO + sh / 8, + 16) of the 32 bytes a, b (WO + 4 <= 7 words in).
template <int WO>
__device__ __forceinline__ uint4 shifted(const uint4& a, const uint4& b, uint32_t sh) {
  const uint32_t w[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
  return make_uint4(__funnelshift_r(w[WO], w[WO + 1], sh), __funnelshift_r(w[WO + 1], w[WO + 2], sh),
                    __funnelshift_r(w[WO + 2], w[WO + 3], sh), __funnelshift_r(w[WO + 3], w[WO + 4], sh));
}

// Rows as above, for a same-dtype copy whose destination rows start 16-byte aligned while the source
// rows do not (into a padded buffer): each thread stores 16-byte chunks of the destination row,
// each built from the two aligned 16-byte source chunks that cover it, shifted by the row's
// misalignment (one funnel shift per word); the row's last partial chunk goes byte by byte. Two
// 16-bit elements per lane and instruction left the row copy at about 2 TB/s on the H100.
// outer indexes the rows in elements of es bytes; row_bytes = L * es.
__global__ void copy_rows_to_aligned_kernel(unsigned char* __restrict__ out, const unsigned char* __restrict__ in,
                                            int64_t rows, int64_t row_bytes, int64_t es, Indexer<2> outer) {
  constexpr int kU = 4;  // chunks per thread in flight
  const int64_t chunks = row_bytes / 16;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    int64_t off[2];
    outer.offsets(r, off);
    uint4* o = reinterpret_cast<uint4*>(out + off[0] * es);
    const unsigned char* s = in + off[1] * es;
    const int mis = int(reinterpret_cast<uintptr_t>(s) % 16);  // bytes past the aligned chunk
    const uint4* sa = reinterpret_cast<const uint4*>(s - mis);
    const int wo = mis / 4;
    const uint32_t sh = uint32_t(mis % 4) * 8;
    for (int64_t j0 = threadIdx.x; j0 < chunks; j0 += kU * blockDim.x) {
      uint4 a[kU], b[kU];
#pragma unroll
      for (int u = 0; u < kU; ++u) {
        const int64_t j = j0 + u * blockDim.x;
        if (j < chunks) {
          a[u] = sa[j];
          if (mis) b[u] = sa[j + 1];  // holds bytes of this chunk: inside the allocation
        }
      }
#pragma unroll
      for (int u = 0; u < kU; ++u) {
        const int64_t j = j0 + u * blockDim.x;
        if (j >= chunks) break;
        if (!mis) {
          o[j] = a[u];
          continue;
        }
        switch (wo) {  // the same for the whole row
          case 0: o[j] = shifted<0>(a[u], b[u], sh); break;
          case 1: o[j] = shifted<1>(a[u], b[u], sh); break;
          case 2: o[j] = shifted<2>(a[u], b[u], sh); break;
          default: o[j] = shifted<3>(a[u], b[u], sh); break;
        }
      }
    }
    for (int64_t t = chunks * 16 + threadIdx.x; t < row_bytes; t += blockDim.x)  // the tail
      reinterpret_cast<unsigned char*>(o)[t] = s[t];
  }
}

// The rows kernels when the innermost dim is contiguous on both sides and long enough to fill a
// block; false otherwise.
bool copy_rows(const Tensor& dst, const Tensor& src, Indexer<2> ix, const char* op) {
  const int d = ix.nd - 1;
  if (d < 1 || ix.stride[0][d] != 1 || ix.stride[1][d] != 1 || ix.size[d] < 256) return false;
  const int64_t L = ix.size[d], rows = dst.numel() / L;
  ix.nd = d;  // the row index: every dim but the last
  const unsigned blocks = unsigned(std::min<int64_t>(rows, 4096));
  const int64_t es = int64_t(itemsize(dst.dtype()));
  bool aligned_dst = dst.dtype() == src.dtype() && aligned16(dst);
  for (int e = 0; e < d; ++e) aligned_dst &= ix.stride[0][e] * es % 16 == 0;
  if (aligned_dst) {
    copy_rows_to_aligned_kernel<<<blocks, kThreads, 0, current_stream()>>>(
        static_cast<unsigned char*>(dst.raw_data()), static_cast<const unsigned char*>(src.raw_data()), rows,
        L * es, es, ix);
    return true;
  }
  CUDA_DISPATCH_ALL(dst.dtype(), op, {
    using To = scalar_t;
    CUDA_DISPATCH_ALL(src.dtype(), op, {
      copy_rows_kernel<To, scalar_t><<<blocks, kThreads, 0, current_stream()>>>(
          static_cast<To*>(dst.raw_data()), static_cast<const scalar_t*>(src.raw_data()), rows, L, ix);
    });
  });
  return true;
}

// dst[...] = convert(src[...]), src broadcast to dst's shape.
void copy_strided(const Tensor& dst, const Tensor& src, const char* op) {
  int64_t n = dst.numel();
  if (n == 0) return;
  set_device(dst, op);
  Indexer<2> ix = make_indexer<2>(dst.shape(), {&dst, &src}, op);
  if (copy_vectors(dst, src, ix)) {  // dense copies too: 2-byte loads held bf16 copies to 78%
    check_launch(op);
    return;
  }
  const bool dense = is_dense(ix);
  if (!dense && copy_rows(dst, src, ix, op)) {
    check_launch(op);
    return;
  }
  CUDA_DISPATCH_ALL(dst.dtype(), op, {
    using To = scalar_t;
    CUDA_DISPATCH_ALL(src.dtype(), op, {
      copy_kernel<To, scalar_t><<<grid_for(n), kThreads, 0, current_stream()>>>(static_cast<To*>(dst.raw_data()),
                                                           static_cast<const scalar_t*>(src.raw_data()), n, ix, dense);
    });
  });
  check_launch(op);
}

Tensors contiguous_cuda(const Tensors& in, const Attrs& a) {
  const Tensor& x = in[0];
  if (x.is_contiguous() && !a.b("force_copy", false)) return {x};
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  copy_strided(out, x, "contiguous");
  return {out};
}

Tensors cast_cuda(const Tensors& in, const Attrs& a) {
  Tensor out = Tensor::empty(in[0].shape(), DType(a.i("dtype")), in[0].device());
  copy_strided(out, in[0], "cast");
  return {out};
}

Tensors copy_inplace_cuda(const Tensors& in, const Attrs&) {
  copy_strided(in[0], in[1], "copy_");
  return {};
}

Tensors fill_inplace_cuda(const Tensors& in, const Attrs& a) {
  Tensor v = ops::full({}, a.f("value", 0.0), in[0].dtype(), in[0].device());
  copy_strided(in[0], v, "fill_");
  return {};
}

}  // namespace

LS_REGISTER(copy_cuda) {
  register_kernel("contiguous", "cuda", contiguous_cuda);
  register_kernel("cast", "cuda", cast_cuda);
  register_kernel("copy_", "cuda", copy_inplace_cuda);
  register_kernel("fill_", "cuda", fill_inplace_cuda);
}

}  // namespace ls::cuda
