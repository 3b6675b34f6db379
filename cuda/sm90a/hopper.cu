// Host side of cuda/sm90a/hopper.cuh: the tensor-map encoder and the device check.
#include "hopper.cuh"
#include "sm90a.h"

#include <atomic>
#include <cstdlib>
#include <cstring>

namespace ls::cuda::sm90a {

namespace {

using EncodeTiled = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*,
                                 const cuuint64_t*, const cuuint64_t*, const cuuint32_t*,
                                 const cuuint32_t*, CUtensorMapInterleave, CUtensorMapSwizzle,
                                 CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

// The driver's tensor-map encoder, looked up once (the runtime is linked statically, the driver
// library is not linked at all).
EncodeTiled encoder() {
  static EncodeTiled fn = [] {
    void* p = nullptr;
    cudaDriverEntryPointQueryResult q;
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault,
                                         &q) != cudaSuccess ||
        q != cudaDriverEntryPointSuccess) {
      cudaGetLastError();
      return EncodeTiled(nullptr);
    }
    return reinterpret_cast<EncodeTiled>(p);
  }();
  return fn;
}

}  // namespace

bool make_map(CUtensorMap* map, bool bf16, const void* ptr, int64_t inner, int64_t outer,
              int64_t ld, int64_t batch, int64_t batch_stride, uint32_t box_outer) {
  cuuint64_t dims[3] = {cuuint64_t(inner), cuuint64_t(outer), cuuint64_t(batch)};
  // A single matrix gets a batch stride the encoder accepts; it is never stepped.
  if (batch == 1) batch_stride = ld * outer;
  cuuint64_t strides[2] = {cuuint64_t(ld) * 2, cuuint64_t(batch_stride) * 2};
  cuuint32_t box[3] = {64, box_outer, 1}, elem[3] = {1, 1, 1};
  CUresult r = encoder()(map, bf16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
                         3, const_cast<void*>(ptr), dims, strides, box, elem,
                         CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                         CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return r == CUDA_SUCCESS;
}

bool head_strides_ok(const HeadStrides& s) {
  return s.b % 8 == 0 && s.h % 8 == 0 && s.row % 8 == 0 && s.b > 0 && s.h > 0 && s.row > 0;
}

bool make_head_map(CUtensorMap* map, bool bf16, const void* ptr, int64_t HS, int64_t rows,
                   int64_t heads, int64_t B, const HeadStrides& s, uint32_t box_rows) {
  if (!head_strides_ok(s)) return false;
  cuuint64_t dims[4] = {cuuint64_t(HS), cuuint64_t(rows), cuuint64_t(heads), cuuint64_t(B)};
  cuuint64_t strides[3] = {cuuint64_t(s.row) * 2, cuuint64_t(s.h) * 2, cuuint64_t(s.b) * 2};
  cuuint32_t box[4] = {64, box_rows, 1, 1}, elem[4] = {1, 1, 1, 1};
  CUresult r = encoder()(map, bf16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
                         4, const_cast<void*>(ptr), dims, strides, box, elem,
                         CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                         CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return r == CUDA_SUCCESS;
}

bool chosen(const char* choice) {
  const char* want = std::getenv(choice);
  if (want && std::strcmp(want, "mma") == 0) return false;
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return available(device);
}

bool available(int device) {
  static std::atomic<int> state[64];  // 0 unknown, 1 yes, 2 no
  int s = state[device & 63].load();
  if (s == 0) {
    int major = 0, minor = 0;
    bool ok = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) == cudaSuccess &&
              cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) == cudaSuccess &&
              major == 9 && minor == 0 && encoder() != nullptr;
    cudaGetLastError();
    s = ok ? 1 : 2;
    state[device & 63].store(s);
  }
  return s == 1;
}

}  // namespace ls::cuda::sm90a
