// A block of memory on one device, shared by every tensor that views it. Who frees it is a
// deleter: our allocators for tensors we create, the producer's DLPack deleter for imports.
#pragma once
#include <functional>
#include <memory>

#include "device.h"

namespace ls {

struct Storage {
  void* data = nullptr;
  size_t nbytes = 0;
  Device device;
  std::function<void(void*)> deleter;

  Storage(void* d, size_t n, Device dev, std::function<void(void*)> del)
      : data(d), nbytes(n), device(dev), deleter(std::move(del)) {}
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  ~Storage() { if (deleter) deleter(data); }
};

// nbytes of fresh, uninitialised memory on `device` (64-byte aligned on the CPU).
std::shared_ptr<Storage> allocate_storage(size_t nbytes, Device device);

// The CPU allocator caches large blocks for reuse; this returns them to the system.
void cpu_empty_cache();
size_t cpu_cached_bytes();

// Test aid: while enabled, every CPU allocation is surrounded by guard bytes that are checked
// when it is freed; a kernel writing out of bounds shows up in guard_violations().
void set_cpu_guard_bytes(bool on);
int64_t guard_violations();

// What the CUDA part of the build provides. Set by cuda/runtime.cu at load time when CUDA is
// compiled in; a null table means "built without CUDA".
struct CudaHooks {
  int (*device_count)();
  void* (*malloc)(size_t nbytes, int device);
  void (*free)(void* p, int device);
  // kind: 0 host->device, 1 device->host, 2 device->device
  void (*memcpy)(void* dst, const void* src, size_t nbytes, int kind, int device);
  void (*synchronize)(int device);
  // Caching allocator: {allocated, reserved, peak allocated, cudaMalloc calls, cudaFree calls}
  void (*memory_stats)(int device, int64_t out[5]);
  void (*empty_cache)();
  void (*reset_peak)(int device);                       // peak allocated := allocated now
  void (*device_name)(int device, char* out, int size);  // e.g. "NVIDIA H100 80GB HBM3"
};
const CudaHooks* cuda_hooks();          // nullptr without CUDA
void set_cuda_hooks(const CudaHooks* h);
bool cuda_available();                  // compiled in and at least one device present
int cuda_device_count();
const CudaHooks& require_cuda(const char* what);  // throws when CUDA is unusable

}  // namespace ls
