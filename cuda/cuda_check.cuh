// Error checking shared by the CUDA kernels: every launch and runtime call is checked and a
// failure becomes an ls::RuntimeError naming the op.
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <map>
#include <mutex>
#include <utility>

#include "core/error.h"
#include "index_fault.cuh"
#include "stream.cuh"

namespace ls::cuda {

inline void check(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return;
  // A failed runtime call (out of memory, a bad device) also leaves the runtime's last error
  // set: cleared here (sticky faults stay), or the next launch's check would raise it again.
  cudaGetLastError();
  throw RuntimeError(cat(what, ": CUDA error: ", cudaGetErrorString(err)));
}

// After a <<<...>>> launch: configuration errors show up here, faults at the next sync.
inline void check_launch(const char* op) { check(cudaGetLastError(), op); }

// Called before every wait of the host for the device: throws a RuntimeError naming `what` while
// the sync debug mode is "error" (llmscratch.cuda.set_sync_debug_mode). After the wait, the
// caller raises any pending index fault (index_fault.cuh).
void guard_host_wait(const char* what);

// A small device -> host read that the host needs now (an output's size): ordered after the
// work queued on the current stream, and waiting for that stream only, not the device.
inline void read_to_host(void* dst, const void* src, size_t nbytes, const char* op) {
  guard_host_wait(op);
  cudaStream_t s = current_stream();
  check(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDeviceToHost, s), op);
  check(cudaStreamSynchronize(s), op);
  raise_index_fault();
}

inline unsigned blocks_for(int64_t n, int threads) {
  return unsigned((n + threads - 1) / threads);
}

// Blocks of `threads` for a grid-stride loop over n items: a thread per item up to 2^20 blocks
// (the loop strides over the rest), and at least one block.
inline unsigned grid_stride_blocks(int64_t n, int threads) {
  return unsigned(std::clamp<int64_t>((n + threads - 1) / threads, 1, int64_t(1) << 20));
}

// The multiprocessor count of device dev, read once per device (the grids sized to fill the GPU).
inline int sm_count(int dev, const char* op) {
  static std::atomic<int> counts[64];
  int n = counts[dev & 63].load();
  if (n == 0) {
    check(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev), op);
    counts[dev & 63].store(n);
  }
  return n;
}

// Programmatic dependent launch (compute capability 9.0+). launch_early queues a kernel that the
// GPU may start while the kernel before it on the stream still runs, so that its launch (a few
// microseconds between two short kernels) hides under that kernel. Such a kernel calls
// wait_for_prior_grids() before it touches anything that earlier work writes: it returns once the
// kernel before has finished and its writes are visible. The kernel before calls
// allow_early_launch() to let it start before its own blocks end. Both calls exist only in code
// compiled for compute capability 9.0+: a kernel built for an older target (which an H100 runs
// JIT-compiled from its PTX) has no wait, so launch_early launches it plainly, as on an older GPU.
__device__ __forceinline__ void wait_for_prior_grids() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void allow_early_launch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Whether kernel may launch early on device dev: the device is 9.0+ and the kernel's code was
// compiled for a 9.0+ target (its waits are in it). Read once per kernel and device.
inline bool early_launch_ok(const void* kernel, int dev, const char* op) {
  static std::mutex m;
  static std::map<std::pair<const void*, int>, bool> known;
  std::lock_guard<std::mutex> lock(m);
  auto it = known.find({kernel, dev});
  if (it != known.end()) return it->second;
  int major = 0;
  check(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev), op);
  cudaFuncAttributes attr;
  check(cudaFuncGetAttributes(&attr, kernel), op);
  return known[{kernel, dev}] = major >= 9 && attr.ptxVersion >= 90;
}

template <typename... Params, typename... Args>
void launch_early(void (*kernel)(Params...), unsigned blocks, int threads, cudaStream_t stream, int dev,
                  const char* op, Args... args) {
  const bool early = early_launch_ok(reinterpret_cast<const void*>(kernel), dev, op);
  cudaLaunchAttribute early_attr;
  early_attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  early_attr.val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(blocks);
  config.blockDim = dim3(unsigned(threads));
  config.stream = stream;
  config.attrs = &early_attr;
  config.numAttrs = early ? 1 : 0;
  check(cudaLaunchKernelEx(&config, kernel, Params(args)...), op);
}

// Dynamic shared memory above 48 KB must be allowed once per kernel and device: configured, a
// static of the kernel's launcher, holds a bit per device already done.
template <typename Kernel>
void allow_smem(Kernel kernel, int bytes, std::atomic<uint64_t>& configured, int dev, const char* op) {
  const uint64_t bit = uint64_t(1) << (dev & 63);
  if (!(configured.load() & bit)) {
    check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes), op);
    configured.fetch_or(bit);
  }
}

}  // namespace ls::cuda
