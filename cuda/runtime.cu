// CUDA runtime glue installed into the core's CudaHooks when the module loads: device count,
// the caching allocator, copies and synchronisation. Every CUDA error becomes an
// ls::RuntimeError naming the call. The runtime is linked statically, so a machine without a
// driver still imports the module and reports cuda_available() == false.
//
// Caching allocator: cudaMalloc and cudaFree synchronise the device and cost tens of
// microseconds, so freed blocks are kept per device in a size-ordered pool and handed out again.
// Requests round up to 512 B (below 1 MiB) or 2 MiB (above); a cached block serves a request
// of at least half its size. All kernels run on the default stream, in order, so a block freed
// by one kernel can be given to the next without a synchronisation. When cudaMalloc fails, the
// pool is returned to the driver and the allocation retried once.
#include <cuda_runtime.h>

#include <cstdio>
#include <map>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "cuda_check.cuh"
#include "core/storage.h"

namespace ls::cuda {

namespace {

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // no driver / no device: clear the sticky error, report none
    return 0;
  }
  return n;
}

class CachingAllocator {
 public:
  void* allocate(size_t nbytes, int device) {
    size_t size = round(nbytes);
    std::lock_guard<std::mutex> lock(m_);
    Pool& pool = pool_for(device);
    auto it = pool.free.lower_bound(size);
    void* p = nullptr;
    if (it != pool.free.end() && it->first <= 2 * size) {
      size = it->first;
      p = it->second;
      pool.free.erase(it);
      pool.cached -= size;
    } else {
      check(cudaSetDevice(device), "cudaSetDevice");
      if (cudaMalloc(&p, size) != cudaSuccess) {
        cudaGetLastError();
        release(pool, device);
        check(cudaMalloc(&p, size), "cudaMalloc");
      }
      ++pool.mallocs;
      pool.reserved += size;
    }
    pool.live[p] = size;
    pool.allocated += size;
    pool.peak = std::max(pool.peak, pool.allocated);
    return p;
  }

  void free(void* p, int device) {
    if (!p) return;
    std::lock_guard<std::mutex> lock(m_);
    Pool& pool = pool_for(device);
    auto it = pool.live.find(p);
    if (it == pool.live.end()) return;
    pool.allocated -= it->second;
    pool.cached += it->second;
    pool.free.emplace(it->second, p);
    pool.live.erase(it);
  }

  void reset_peak(int device) {
    std::lock_guard<std::mutex> lock(m_);
    Pool& pool = pool_for(device);
    pool.peak = pool.allocated;
  }

  void stats(int device, int64_t out[5]) {
    std::lock_guard<std::mutex> lock(m_);
    Pool& pool = pool_for(device);
    out[0] = int64_t(pool.allocated);
    out[1] = int64_t(pool.reserved);
    out[2] = int64_t(pool.peak);
    out[3] = pool.mallocs;
    out[4] = pool.frees;
  }

  void empty_cache() {
    std::lock_guard<std::mutex> lock(m_);
    for (size_t d = 0; d < pools_.size(); ++d) release(pools_[d], int(d));
  }

 private:
  struct Pool {
    std::multimap<size_t, void*> free;
    std::unordered_map<void*, size_t> live;
    size_t allocated = 0, reserved = 0, peak = 0, cached = 0;
    int64_t mallocs = 0, frees = 0;
  };

  static size_t round(size_t n) {
    const size_t small = 512, large = size_t(2) << 20;
    if (n == 0) return small;
    return n < (size_t(1) << 20) ? (n + small - 1) / small * small : (n + large - 1) / large * large;
  }

  Pool& pool_for(int device) {
    if (device >= int(pools_.size())) pools_.resize(device + 1);
    return pools_[device];
  }

  void release(Pool& pool, int device) {
    cudaSetDevice(device);
    for (auto& kv : pool.free) {
      cudaFree(kv.second);
      pool.reserved -= kv.first;
      ++pool.frees;
    }
    pool.free.clear();
    pool.cached = 0;
  }

  std::mutex m_;
  std::vector<Pool> pools_;
};

// Never destroyed: tensors freed during interpreter shutdown still return their blocks.
CachingAllocator& allocator() {
  static CachingAllocator* a = new CachingAllocator();
  return *a;
}

void* malloc_on(size_t nbytes, int device) { return allocator().allocate(nbytes, device); }
void free_on(void* p, int device) { allocator().free(p, device); }
void memory_stats(int device, int64_t out[5]) { allocator().stats(device, out); }
void empty_cache() { allocator().empty_cache(); }
void reset_peak(int device) { allocator().reset_peak(device); }

void device_name(int device, char* out, int size) {
  cudaDeviceProp prop;
  check(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
  snprintf(out, size, "%s", prop.name);
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

const CudaHooks kHooks{device_count, malloc_on, free_on, memcpy_on, synchronize_on, memory_stats,
                       empty_cache, reset_peak, device_name};

struct Install {
  Install() { set_cuda_hooks(&kHooks); }
} install;

}  // namespace

}  // namespace ls::cuda
