#include "storage.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <new>

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
}  // namespace

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
    size_t rounded = (nbytes + kCpuAlignment - 1) / kCpuAlignment * kCpuAlignment;
    void* p = std::aligned_alloc(kCpuAlignment, rounded ? rounded : kCpuAlignment);
    if (!p) throw std::bad_alloc();
    return std::make_shared<Storage>(p, nbytes, device, [](void* q) { std::free(q); });
  }
  const CudaHooks& cuda = require_cuda("allocate");
  LS_CHECK(device.index < cuda.device_count(), ValueError, "device ", device.str(),
           " does not exist (", cuda.device_count(), " CUDA devices)");
  int idx = device.index;
  void* p = nbytes ? cuda.malloc(nbytes, idx) : nullptr;
  return std::make_shared<Storage>(p, nbytes, device, [idx](void* q) { g_cuda->free(q, idx); });
}

}  // namespace ls
