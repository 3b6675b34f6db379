// CUDA runtime glue: device count, allocation and copies, installed into the core's CudaHooks
// when the module loads. Every CUDA error becomes an ls::RuntimeError naming the call.
// The runtime is linked statically, so a machine without a driver still imports the module and
// simply reports cuda_available() == false.
#include <cuda_runtime.h>

#include "core/error.h"
#include "core/storage.h"

namespace ls::cuda {

namespace {

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw RuntimeError(cat("CUDA error in ", what, ": ", cudaGetErrorString(err)));
}

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // no driver / no device: clear the sticky error, report none
    return 0;
  }
  return n;
}

void* malloc_on(size_t nbytes, int device) {
  check(cudaSetDevice(device), "cudaSetDevice");
  void* p = nullptr;
  check(cudaMalloc(&p, nbytes), "cudaMalloc");
  return p;
}

void free_on(void* p, int device) {
  if (!p) return;
  cudaSetDevice(device);
  cudaFree(p);  // errors at teardown are not actionable
}

void memcpy_on(void* dst, const void* src, size_t nbytes, int kind, int device) {
  static const cudaMemcpyKind kinds[] = {cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost,
                                         cudaMemcpyDeviceToDevice};
  check(cudaSetDevice(device), "cudaSetDevice");
  check(cudaMemcpy(dst, src, nbytes, kinds[kind]), "cudaMemcpy");
}

void synchronize_on(int device) {
  check(cudaSetDevice(device), "cudaSetDevice");
  check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
}

const CudaHooks kHooks{device_count, malloc_on, free_on, memcpy_on, synchronize_on};

struct Install {
  Install() { set_cuda_hooks(&kHooks); }
} install;

}  // namespace

}  // namespace ls::cuda
