#include "storage.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <mutex>
#include <new>
#include <unordered_map>
#include <vector>

#include "error.h"

namespace ls {

namespace {
const CudaHooks* g_cuda = nullptr;
constexpr size_t kCpuAlignment = 64;  // a cache line, and enough for any SIMD load
constexpr size_t kGuard = 64;
constexpr unsigned char kGuardByte = 0xA5;
std::atomic<bool> g_guard{false};
std::atomic<int64_t> g_violations{0};

std::shared_ptr<Storage> allocate_guarded(size_t nbytes, Device device) {
  size_t rounded = (nbytes + kCpuAlignment - 1) / kCpuAlignment * kCpuAlignment;
  auto* base = static_cast<unsigned char*>(std::aligned_alloc(kCpuAlignment, rounded + 2 * kGuard));
  if (!base) throw std::bad_alloc();
  std::memset(base, kGuardByte, kGuard);
  std::memset(base + kGuard + nbytes, kGuardByte, rounded + kGuard - nbytes);
  return std::make_shared<Storage>(base + kGuard, nbytes, device, [=](void* q) {
    auto* p = static_cast<unsigned char*>(q) - kGuard;
    for (size_t i = 0; i < kGuard; ++i)
      if (p[i] != kGuardByte) { ++g_violations; break; }
    for (size_t i = kGuard + nbytes; i < rounded + 2 * kGuard; ++i)
      if (p[i] != kGuardByte) { ++g_violations; break; }
    std::free(p);
  });
}
// Large CPU blocks are kept after use and handed out again for the same size bin. A fresh
// multi-megabyte block costs a page fault per 4 KiB page on first touch, which dominated the
// memory-bound kernels (neg over 32 MB: 27 ms on fresh memory, 4 ms on reused memory).
// Sizes from 64 KiB up round to a bin of 1/4 of their power of two (at most 25% slack); smaller
// ones go straight to malloc. At most LLMSCRATCH_CPU_CACHE_MB (default 2048) stays cached.
class CpuCache {
 public:
  static constexpr size_t kMinCached = size_t(1) << 16;

  static size_t bin(size_t n) {
    if (n < kMinCached) return (n + kCpuAlignment - 1) / kCpuAlignment * kCpuAlignment;
    size_t step = (size_t(1) << (63 - __builtin_clzll(n))) / 4;
    return (n + step - 1) / step * step;
  }

  void* get(size_t size) {
    if (size >= kMinCached) {
      std::lock_guard<std::mutex> l(m_);
      auto it = free_.find(size);
      if (it != free_.end() && !it->second.empty()) {
        void* p = it->second.back();
        it->second.pop_back();
        cached_ -= size;
        return p;
      }
    }
    void* p = std::aligned_alloc(kCpuAlignment, size ? size : kCpuAlignment);
    if (!p) {
      release();  // memory held for reuse is the first thing to give back
      p = std::aligned_alloc(kCpuAlignment, size ? size : kCpuAlignment);
      if (!p) throw std::bad_alloc();
    }
    return p;
  }

  void put(void* p, size_t size) {
    if (size >= kMinCached) {
      std::lock_guard<std::mutex> l(m_);
      if (cached_ + size <= limit_) {
        free_[size].push_back(p);
        cached_ += size;
        return;
      }
    }
    std::free(p);
  }

  void release() {
    std::lock_guard<std::mutex> l(m_);
    for (auto& kv : free_)
      for (void* p : kv.second) std::free(p);
    free_.clear();
    cached_ = 0;
  }

  size_t cached_bytes() {
    std::lock_guard<std::mutex> l(m_);
    return cached_;
  }

 private:
  static size_t limit_from_env() {
    const char* env = std::getenv("LLMSCRATCH_CPU_CACHE_MB");
    long mb = env ? std::atol(env) : 2048;
    return size_t(std::max(0L, mb)) << 20;
  }

  std::mutex m_;
  std::unordered_map<size_t, std::vector<void*>> free_;
  size_t cached_ = 0;
  size_t limit_ = limit_from_env();
};

// Never destroyed: storages released during interpreter shutdown still return their blocks.
CpuCache& cpu_cache() {
  static CpuCache* c = new CpuCache();
  return *c;
}
}  // namespace

void cpu_empty_cache() { cpu_cache().release(); }
size_t cpu_cached_bytes() { return cpu_cache().cached_bytes(); }

void set_cpu_guard_bytes(bool on) { g_guard = on; }
int64_t guard_violations() { return g_violations; }

const CudaHooks* cuda_hooks() { return g_cuda; }
void set_cuda_hooks(const CudaHooks* h) { g_cuda = h; }
int cuda_device_count() { return g_cuda ? g_cuda->device_count() : 0; }
bool cuda_available() { return cuda_device_count() > 0; }

const CudaHooks& require_cuda(const char* what) {
  LS_CHECK(g_cuda, RuntimeError, what, ": llmscratch was built without CUDA");
  LS_CHECK(g_cuda->device_count() > 0, RuntimeError, what, ": no CUDA device is available");
  return *g_cuda;
}

std::shared_ptr<Storage> allocate_storage(size_t nbytes, Device device) {
  if (device.is_cpu()) {
    if (g_guard) return allocate_guarded(nbytes, device);
    size_t size = CpuCache::bin(nbytes);
    void* p = cpu_cache().get(size);
    return std::make_shared<Storage>(p, nbytes, device, [size](void* q) { cpu_cache().put(q, size); });
  }
  const CudaHooks& cuda = require_cuda("allocate");
  LS_CHECK(device.index < cuda.device_count(), ValueError, "device ", device.str(),
           " does not exist (", cuda.device_count(), " CUDA devices)");
  int idx = device.index;
  void* p = nbytes ? cuda.malloc(nbytes, idx) : nullptr;
  return std::make_shared<Storage>(p, nbytes, device, [idx](void* q) { g_cuda->free(q, idx); });
}

std::shared_ptr<Storage> allocate_pinned_storage(size_t nbytes) {
  require_cuda("pin_memory");
  void* p = g_cuda->host_alloc(nbytes);
  return std::make_shared<Storage>(p, nbytes, Device{}, [](void* q) { g_cuda->host_free(q); }, true);
}

}  // namespace ls
