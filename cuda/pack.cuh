// Two floats rounded into one 32-bit register of two 16-bit values, lo in the low half (the lower
// column): the register layout of a tensor-core A fragment (mma.sync and wgmma alike) and of a
// paired 16-bit store. Shared by cuda/attention.cu and the sm_90a kernels of cuda/sm90a/.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

namespace ls::cuda {

template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  static_assert(std::is_same_v<T, __nv_bfloat16> || std::is_same_v<T, __half>);
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  } else {
    __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  }
}

}  // namespace ls::cuda
