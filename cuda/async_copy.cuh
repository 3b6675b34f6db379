// Asynchronous global -> shared copies (cp.async, sm_80+): the data lands in shared memory
// without passing through registers, so a thread can keep many loads in flight at a low register
// count. Used by the GEMM tiles (gemm_tile.cuh) and the attention tiles (attention.cu);
// the sm_90a kernels take smem_addr from here too.
#pragma once
#include <cstdint>

namespace ls::cuda {

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return uint32_t(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared of which the first `bytes` are read and the rest zero-filled (0: none
// read). The "memory" clobbers keep the compiler from moving shared-memory accesses across the
// copies and the waits.
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, int bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(bytes) : "memory");
}
// A bool would convert to 1 byte: say how many bytes (valid ? 16 : 0).
void cp_async16(uint32_t dst, const void* src, bool) = delete;
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
// Waits until at most N of this thread's committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

}  // namespace ls::cuda
