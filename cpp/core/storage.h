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
  bool pinned = false;  // CPU memory page-locked by cudaHostAlloc (Tensor.pin_memory)

  Storage(void* d, size_t n, Device dev, std::function<void(void*)> del, bool pin = false)
      : data(d), nbytes(n), device(dev), deleter(std::move(del)), pinned(pin) {}
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  ~Storage() { if (deleter) deleter(data); }
};

// nbytes of fresh, uninitialised memory on `device` (64-byte aligned on the CPU).
std::shared_ptr<Storage> allocate_storage(size_t nbytes, Device device);

// nbytes of page-locked CPU memory from the CUDA pinned-host cache: host<->device copies from it
// can be asynchronous. Throws when CUDA is unusable.
std::shared_ptr<Storage> allocate_pinned_storage(size_t nbytes);

// The CPU allocator caches large blocks for reuse; this returns them to the system.
void cpu_empty_cache();
size_t cpu_cached_bytes();

// Test aid: while enabled, every CPU allocation is surrounded by guard bytes that are checked
// when it is freed; a kernel writing out of bounds shows up in guard_violations().
void set_cpu_guard_bytes(bool on);
int64_t guard_violations();

// What the CUDA part of the build provides. Set by cuda/runtime.cu at load time when CUDA is
// compiled in; a null table means "built without CUDA". Streams and events travel as opaque
// pointers (cudaStream_t / cudaEvent_t) so that the core compiles without CUDA headers; the null
// stream is the legacy default stream. "Current stream" is the calling thread's, per device.
struct CudaHooks {
  int (*device_count)();
  void* (*malloc)(size_t nbytes, int device);  // a block for the current stream of device
  void (*free)(void* p, int device);
  // kind: 0 host->device, 1 device->host, 2 device->device; queued on device's current stream.
  // Unless non_blocking, returns once the copy is done.
  void (*memcpy)(void* dst, const void* src, size_t nbytes, int kind, int device, bool non_blocking);
  void (*synchronize)(int device);
  // Caching allocator: {allocated, reserved, peak allocated, cudaMalloc calls, cudaFree calls}
  void (*memory_stats)(int device, int64_t out[5]);
  void (*empty_cache)();                                // device and pinned host caches
  void (*reset_peak)(int device);                       // peak allocated := allocated now
  void (*device_name)(int device, char* out, int size);  // e.g. "NVIDIA H100 80GB HBM3"
  // Pinned host blocks; host_record: a copy reading `block` is queued on device's current
  // stream, so the block is not handed out again before that copy has finished.
  void* (*host_alloc)(size_t nbytes);
  void (*host_free)(void* block);
  void (*host_record)(void* block, int device);
  void* (*current_stream)(int device);
  void (*set_stream)(int device, void* stream);
  void* (*stream_create)(int device, int priority);
  void (*stream_destroy)(int device, void* stream);  // after its queued work has finished
  void (*stream_synchronize)(int device, void* stream);
  bool (*stream_query)(int device, void* stream);    // true when all its work has finished
  void (*stream_priority_range)(int* least, int* greatest);
  void* (*event_create)(int device, bool timing);
  void (*event_destroy)(void* event);
  void (*event_record)(void* event, int device, void* stream);
  void (*stream_wait_event)(int device, void* stream, void* event);
  void (*event_synchronize)(void* event);
  bool (*event_query)(void* event);
  float (*event_elapsed_ms)(void* start, void* end);
  // 0: the host may wait for the device; 2 ("error"): every wait (a blocking copy, a
  // synchronize) throws instead, naming the call, to find the waits in a training step.
  void (*set_sync_debug_mode)(int mode);
  int (*sync_debug_mode)();
};
const CudaHooks* cuda_hooks();          // nullptr without CUDA
void set_cuda_hooks(const CudaHooks* h);
bool cuda_available();                  // compiled in and at least one device present
int cuda_device_count();
const CudaHooks& require_cuda(const char* what);  // throws when CUDA is unusable

}  // namespace ls
