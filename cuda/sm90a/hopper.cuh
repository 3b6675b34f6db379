// Hopper building blocks shared by the sm_90a kernels of this folder: mbarriers, the bulk tensor
// copy (TMA) and its tensor maps, wgmma shared-memory descriptors, and the fences around wgmma.
#pragma once
#include <cuda.h>  // CUtensorMap and its encoder's types; the encoder itself comes from the driver
#include <cuda_runtime.h>

#include <cstdint>

#include "../async_copy.cuh"  // smem_addr
#include "sm90a.h"

namespace ls::cuda::sm90a {

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)

__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(count));
}

__device__ __forceinline__ void mbar_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes)
               : "memory");
}

__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(bar) : "memory");
}

__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
  asm volatile(
      "{\n"
      ".reg .pred done;\n"
      "wait_%=:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra wait_%=;\n"
      "}\n" ::"r"(bar),
      "r"(parity)
      : "memory");
}

// Barrier `id` (1..15; 0 is __syncthreads') among `threads` threads, e.g. one warpgroup's 128.
__device__ __forceinline__ void named_barrier_sync(int id, int threads) {
  asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(threads) : "memory");
}

// One box of a 3-D tensor map (inner, outer, batch) into shared memory, completing on `bar`.
__device__ __forceinline__ void tma_load(uint32_t dst, const CUtensorMap* map, int inner, int outer,
                                         int z, uint32_t bar) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%2, %3, %4}], [%5];" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(inner), "r"(outer), "r"(z), "r"(bar)
      : "memory");
}

// One box of a 4-D tensor map (inner, rows, heads, batch): the attention tensors' (HS, rows,
// heads, B) maps, whose heads and batch need not fold into one stride.
__device__ __forceinline__ void tma_load(uint32_t dst, const CUtensorMap* map, int inner, int row,
                                         int head, int b, uint32_t bar) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%2, %3, %4, %5}], [%6];" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(inner), "r"(row), "r"(head), "r"(b), "r"(bar)
      : "memory");
}

// A wgmma shared-memory descriptor: start address, leading and stride byte offsets (all >> 4),
// 128-byte swizzle.
__device__ __forceinline__ uint64_t descriptor(uint32_t addr, uint32_t lbo, uint32_t sbo) {
  return uint64_t((addr & 0x3FFFF) >> 4) | (uint64_t(lbo >> 4) << 16) |
         (uint64_t(sbo >> 4) << 32) | (uint64_t(1) << 62);
}

// wgmma accumulator operands: d[i .. i + 7] (or 64 of them) as "+f" asm operands of an array d.
#define LS_ACC8(i)                                                                            \
  "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), \
      "+f"(d[i + 6]), "+f"(d[i + 7])
#define LS_ACC64(i)                                                                           \
  LS_ACC8(i), LS_ACC8(i + 8), LS_ACC8(i + 16), LS_ACC8(i + 24), LS_ACC8(i + 32),              \
      LS_ACC8(i + 40), LS_ACC8(i + 48), LS_ACC8(i + 56)

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() {
  asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
}
// Wait until at most N committed wgmma groups of this warpgroup are still running.
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(N) : "memory");
}
__device__ __forceinline__ void wgmma_wait_all() { wgmma_wait<0>(); }

#endif  // sm_90a device code

// ---- host side ----

// A 3-D view (inner, outer, batch) of 16-bit elements for the copy engine, boxes of
// 64 (128 bytes) x box_outer x 1, 128-byte swizzle, zero fill outside the tensor. Strides in
// elements. False when the driver cannot encode it (alignment, sizes).
bool make_map(CUtensorMap* map, bool bf16, const void* ptr, int64_t inner, int64_t outer,
              int64_t ld, int64_t batch, int64_t batch_stride, uint32_t box_outer);

// A (B, heads, rows, HS) attention tensor with strides s (elements) as a 4-D map (HS, rows,
// heads, B), boxes of 64 x box_rows x 1 x 1, otherwise as make_map.
bool make_head_map(CUtensorMap* map, bool bf16, const void* ptr, int64_t HS, int64_t rows,
                   int64_t heads, int64_t B, const HeadStrides& s, uint32_t box_rows);

}  // namespace ls::cuda::sm90a
