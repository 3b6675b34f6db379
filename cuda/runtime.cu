// CUDA runtime glue installed into the core's CudaHooks when the module loads: device count,
// the caching allocators (device and pinned host), copies, streams, events and synchronisation.
// Every CUDA error becomes an ls::RuntimeError naming the call. The runtime is linked
// statically, so a machine without a driver still imports the module and reports
// cuda_available() == false.
//
// Streams: each thread has a current stream per device (stream.cuh), the legacy default stream
// until it sets another. Every kernel, copy and memset of an op is queued on it, so work on one
// stream runs in order and work on different streams may overlap; ordering across streams is
// the caller's, through events (Stream.wait_stream / wait_event in llmscratch.cuda). Streams
// made here are non-blocking: they do not synchronise implicitly with the legacy default stream.
//
// Caching allocator: cudaMalloc and cudaFree synchronise the device and cost tens of
// microseconds, so freed blocks are kept per device in a size-ordered pool and handed out again.
// Requests round up to 512 B (below 1 MiB) or 2 MiB (above); a cached block serves a request
// of at least half its size. A block remembers the stream it was allocated on and is handed out
// again only for allocations on that same stream: work queued on one stream runs in order, so
// a block freed while its kernels are still queued can go to the next allocation on that stream
// without a synchronisation, while another stream could overtake that work. A tensor used on a
// stream other than the one it was allocated on must be kept alive by the caller until that
// work is ordered back (e.g. by wait_stream); there is no record_stream. When cudaMalloc fails,
// the pool is returned to the driver and the allocation retried once.
//
// Every host wait here (a blocking copy, synchronize, a Stream/Event synchronize or a query that
// finds the work done) then raises an index fault recorded by a kernel since the last one
// (index_fault.cuh). In sync debug mode "error" the waits throw instead of waiting.
//
// Pinned host memory (Tensor.pin_memory): page-locked blocks from cudaHostAlloc, cached by size
// like the device pool because cudaHostAlloc costs milliseconds. A non_blocking copy from a
// block records an event on the copying stream; a freed block is handed out again only once
// all its recorded events have completed, so a refill can never overwrite data a queued copy
// has yet to read.
#include <cuda_runtime.h>

#include <atomic>
#include <cstdio>
#include <functional>
#include <map>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "cuda_check.cuh"
#include "core/storage.h"

namespace ls::cuda {

namespace {
// Indexed by device; nullptr is the legacy default stream.
thread_local std::vector<cudaStream_t> t_current;
}  // namespace

cudaStream_t current_stream(int device) {
  return device >= 0 && size_t(device) < t_current.size() ? t_current[device] : nullptr;
}

cudaStream_t current_stream() {
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) {
    cudaGetLastError();
    return nullptr;
  }
  return current_stream(device);
}

void set_current_stream(int device, cudaStream_t stream) {
  if (size_t(device) >= t_current.size()) t_current.resize(device + 1, nullptr);
  t_current[device] = stream;
}

namespace {
void* stream_create(int device, int priority) {
  cudaStream_t s;
  check(cudaSetDevice(device), "cudaSetDevice");
  check(cudaStreamCreateWithPriority(&s, cudaStreamNonBlocking, priority), "cudaStreamCreateWithPriority");
  return s;
}

void stream_priority_range(int* least, int* greatest) {
  check(cudaDeviceGetStreamPriorityRange(least, greatest), "cudaDeviceGetStreamPriorityRange");
}

void* event_create(int device, bool timing) {
  cudaEvent_t e;
  check(cudaSetDevice(device), "cudaSetDevice");
  check(cudaEventCreateWithFlags(&e, timing ? cudaEventDefault : cudaEventDisableTiming),
        "cudaEventCreate");
  return e;
}

struct SideStreamState {
  cudaStream_t stream = nullptr;
  cudaEvent_t forked = nullptr, done = nullptr;
};
// Per thread, so two threads' forks and joins never record into each other's events. Never
// destroyed: a destructor at thread or process exit could run after the runtime's own teardown,
// so a thread's stream and two events live until the process ends (a program that starts many
// short-lived threads running this op keeps one of each per thread).
thread_local std::vector<SideStreamState> t_side;

SideStreamState& side_stream(int device) {
  if (size_t(device) >= t_side.size()) t_side.resize(device + 1);
  SideStreamState& s = t_side[device];
  if (!s.stream) {
    int least = 0, greatest = 0;
    stream_priority_range(&least, &greatest);
    s.stream = static_cast<cudaStream_t>(stream_create(device, greatest));
    s.forked = static_cast<cudaEvent_t>(event_create(device, false));
    s.done = static_cast<cudaEvent_t>(event_create(device, false));
  }
  return s;
}

int selected_device() {
  int device = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  return device;
}
}  // namespace

SideStream::SideStream() : device_(selected_device()) {
  SideStreamState& s = side_stream(device_);
  check(cudaEventRecord(s.forked, current_stream(device_)), "cudaEventRecord");
  check(cudaStreamWaitEvent(s.stream, s.forked, 0), "cudaStreamWaitEvent");
  stream_ = s.stream;
}

void SideStream::join() {
  joined_ = true;
  SideStreamState& s = side_stream(device_);
  check(cudaEventRecord(s.done, s.stream), "cudaEventRecord");
  check(cudaStreamWaitEvent(current_stream(device_), s.done, 0), "cudaStreamWaitEvent");
}

SideStream::~SideStream() {
  if (joined_) return;
  try {
    join();
  } catch (...) {  // already unwinding from a CUDA error
  }
}

namespace {
std::atomic<int> g_sync_debug_mode{0};  // 0 default, 2 error (llmscratch.cuda.set_sync_debug_mode)
}  // namespace

void guard_host_wait(const char* what) {
  if (g_sync_debug_mode.load(std::memory_order_relaxed) == 2)
    throw RuntimeError(cat(what, ": the host would wait for the GPU here, and the sync debug mode "
                                 "is \"error\" (llmscratch.cuda.set_sync_debug_mode)"));
}

namespace {

// Asked once: the count is fixed for the process (the runtime reads CUDA_VISIBLE_DEVICES when it
// starts), and every registry call and allocation on a CUDA device checks its index against it
// (3565 queries in one GPT-2 training step's profile at 0313abe,
// bench/results/nvidia-h100-0313abe). A child forked after the first query inherits the count,
// and then fails at its first CUDA call (CUDA does not survive a fork) rather than here.
int device_count() {
  static const int n = [] {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess) {
      cudaGetLastError();  // no driver / no device: clear the sticky error, report none
      return 0;
    }
    return count;
  }();
  return n;
}

class CachingAllocator {
 public:
  void* allocate(size_t nbytes, int device, cudaStream_t stream) {
    size_t size = round(nbytes);
    std::lock_guard<std::mutex> lock(m_);
    Pool& pool = pool_for(device);
    auto it = pool.free.lower_bound({stream, size});
    void* p = nullptr;
    if (it != pool.free.end() && it->first.stream == stream && it->first.size <= 2 * size) {
      size = it->first.size;
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
    pool.live[p] = {stream, size};
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
    pool.allocated -= it->second.size;
    pool.cached += it->second.size;
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
  // The stream a block was allocated on, then its size: the free list orders blocks by stream
  // first, so a lookup only ever sees the blocks of the requesting stream.
  struct Key {
    cudaStream_t stream;
    size_t size;
    bool operator<(const Key& o) const {
      return stream != o.stream ? std::less<cudaStream_t>()(stream, o.stream) : size < o.size;
    }
  };
  struct Pool {
    std::multimap<Key, void*> free;
    std::unordered_map<void*, Key> live;
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
      pool.reserved -= kv.first.size;
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

void* malloc_on(size_t nbytes, int device) {
  return allocator().allocate(nbytes, device, current_stream(device));
}
void free_on(void* p, int device) { allocator().free(p, device); }
void memory_stats(int device, int64_t out[5]) { allocator().stats(device, out); }
void reset_peak(int device) { allocator().reset_peak(device); }

void device_name(int device, char* out, int size) {
  cudaDeviceProp prop;
  check(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
  snprintf(out, size, "%s", prop.name);
}

// Page-locked host blocks. Sizes round up to a power of two (at least 4 KiB) so that blocks
// cycle through few bins, as a loader's batches of one shape do.
class HostAllocator {
 public:
  void* allocate(size_t nbytes) {
    size_t size = 4096;
    while (size < nbytes) size *= 2;
    {
      std::lock_guard<std::mutex> lock(m_);
      for (auto it = free_.lower_bound(size); it != free_.end() && it->first == size; ++it) {
        if (!idle(blocks_.at(it->second))) continue;
        void* p = it->second;
        free_.erase(it);
        return p;
      }
    }
    void* p = nullptr;
    if (cudaHostAlloc(&p, size, cudaHostAllocPortable) != cudaSuccess) {
      cudaGetLastError();
      empty_cache();
      check(cudaHostAlloc(&p, size, cudaHostAllocPortable), "cudaHostAlloc");
    }
    std::lock_guard<std::mutex> lock(m_);
    blocks_[p] = Block{size, {}};
    return p;
  }

  void free(void* p) {
    if (!p) return;
    std::lock_guard<std::mutex> lock(m_);
    auto it = blocks_.find(p);
    if (it != blocks_.end()) free_.emplace(it->second.size, p);
  }

  // A copy reading block p was queued on `stream` of `device`.
  void record(void* p, int device, cudaStream_t stream) {
    cudaEvent_t e;
    check(cudaSetDevice(device), "cudaSetDevice");
    check(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "cudaEventCreate");
    check(cudaEventRecord(e, stream), "cudaEventRecord");
    std::lock_guard<std::mutex> lock(m_);
    auto it = blocks_.find(p);
    if (it == blocks_.end()) {  // not ours: nothing can reuse it, the event is not needed
      cudaEventDestroy(e);
      return;
    }
    idle(it->second);  // a staging buffer kept for a whole run must not gather an event a copy
    it->second.uses.push_back(e);
  }

  // Frees every cached block, waiting for the copies still reading them.
  void empty_cache() {
    std::lock_guard<std::mutex> lock(m_);
    for (auto& kv : free_) {
      Block& b = blocks_.at(kv.second);
      for (cudaEvent_t e : b.uses) {
        cudaEventSynchronize(e);
        cudaEventDestroy(e);
      }
      cudaFreeHost(kv.second);
      blocks_.erase(kv.second);
    }
    free_.clear();
  }

 private:
  struct Block {
    size_t size;
    std::vector<cudaEvent_t> uses;  // events after the queued copies that read the block
  };

  // Whether every copy recorded on b has finished; finished events are dropped.
  static bool idle(Block& b) {
    auto finished = [](cudaEvent_t e) {
      const cudaError_t r = cudaEventQuery(e);
      if (r == cudaErrorNotReady) return false;
      if (r != cudaSuccess) cudaGetLastError();  // a failed copy no longer reads the block
      cudaEventDestroy(e);
      return true;
    };
    b.uses.erase(std::remove_if(b.uses.begin(), b.uses.end(), finished), b.uses.end());
    return b.uses.empty();
  }

  std::mutex m_;
  std::unordered_map<void*, Block> blocks_;  // every block held, in use or cached
  std::multimap<size_t, void*> free_;
};

HostAllocator& host_allocator() {
  static HostAllocator* a = new HostAllocator();
  return *a;
}

void* host_alloc(size_t nbytes) { return host_allocator().allocate(nbytes); }
void host_free(void* p) { host_allocator().free(p); }
void host_record(void* block, int device) {
  host_allocator().record(block, device, current_stream(device));
}

// Every copy is queued on the current stream of `device`. A blocking copy then waits for that
// stream only, so the host may read (device->host) or reuse (host->device) its buffer at once.
// A non_blocking copy returns at once; the caller keeps the host buffer alive and unchanged
// (pinned blocks do so through host_record).
void set_sync_debug_mode(int mode) { g_sync_debug_mode.store(mode); }
int sync_debug_mode() { return g_sync_debug_mode.load(); }

void memcpy_on(void* dst, const void* src, size_t nbytes, int kind, int device, bool non_blocking) {
  static const cudaMemcpyKind kinds[] = {cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost,
                                         cudaMemcpyDeviceToDevice};
  if (!non_blocking) guard_host_wait(kind == 0 ? "copy to the GPU" : kind == 1 ? "copy to the host" : "copy on the GPU");
  check(cudaSetDevice(device), "cudaSetDevice");
  cudaStream_t s = current_stream(device);
  check(cudaMemcpyAsync(dst, src, nbytes, kinds[kind], s), "cudaMemcpyAsync");
  if (non_blocking) return;
  check(cudaStreamSynchronize(s), "cudaStreamSynchronize");
  raise_index_fault();
}

void synchronize_on(int device) {
  guard_host_wait("synchronize");
  check(cudaSetDevice(device), "cudaSetDevice");
  check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
  raise_index_fault();
}

// Empties both caches: device blocks, then pinned host blocks.
void empty_caches() {
  allocator().empty_cache();
  host_allocator().empty_cache();
}

void* current_stream_on(int device) { return current_stream(device); }
void set_stream_on(int device, void* stream) {
  set_current_stream(device, static_cast<cudaStream_t>(stream));
}

// The stream's queued work is finished first, so no cached block of it can still be in use
// by the time a new stream reuses its handle.
void stream_destroy(int device, void* stream) {
  check(cudaSetDevice(device), "cudaSetDevice");
  auto s = static_cast<cudaStream_t>(stream);
  check(cudaStreamSynchronize(s), "cudaStreamSynchronize");
  check(cudaStreamDestroy(s), "cudaStreamDestroy");
}

void stream_synchronize(int device, void* stream) {
  guard_host_wait("Stream.synchronize");
  check(cudaSetDevice(device), "cudaSetDevice");
  check(cudaStreamSynchronize(static_cast<cudaStream_t>(stream)), "cudaStreamSynchronize");
  raise_index_fault();
}

bool stream_query(int device, void* stream) {
  check(cudaSetDevice(device), "cudaSetDevice");
  cudaError_t r = cudaStreamQuery(static_cast<cudaStream_t>(stream));
  if (r == cudaErrorNotReady) {
    cudaGetLastError();
    return false;
  }
  check(r, "cudaStreamQuery");
  raise_index_fault();
  return true;
}

void event_destroy(void* event) { cudaEventDestroy(static_cast<cudaEvent_t>(event)); }

void event_record(void* event, int device, void* stream) {
  check(cudaSetDevice(device), "cudaSetDevice");
  check(cudaEventRecord(static_cast<cudaEvent_t>(event), static_cast<cudaStream_t>(stream)),
        "cudaEventRecord");
}

void stream_wait_event(int device, void* stream, void* event) {
  check(cudaSetDevice(device), "cudaSetDevice");
  check(cudaStreamWaitEvent(static_cast<cudaStream_t>(stream), static_cast<cudaEvent_t>(event), 0),
        "cudaStreamWaitEvent");
}

void event_synchronize(void* event) {
  guard_host_wait("Event.synchronize");
  check(cudaEventSynchronize(static_cast<cudaEvent_t>(event)), "cudaEventSynchronize");
  raise_index_fault();
}

bool event_query(void* event) {
  cudaError_t r = cudaEventQuery(static_cast<cudaEvent_t>(event));
  if (r == cudaErrorNotReady) {
    cudaGetLastError();
    return false;
  }
  check(r, "cudaEventQuery");
  raise_index_fault();
  return true;
}

float event_elapsed_ms(void* start, void* end) {
  float ms = 0;
  check(cudaEventElapsedTime(&ms, static_cast<cudaEvent_t>(start), static_cast<cudaEvent_t>(end)),
        "cudaEventElapsedTime");
  return ms;
}

const CudaHooks kHooks{device_count, malloc_on, free_on, memcpy_on, synchronize_on, memory_stats,
                       empty_caches, reset_peak, device_name, host_alloc, host_free, host_record,
                       current_stream_on, set_stream_on, stream_create, stream_destroy,
                       stream_synchronize, stream_query, stream_priority_range, event_create,
                       event_destroy, event_record, stream_wait_event, event_synchronize,
                       event_query, event_elapsed_ms, set_sync_debug_mode, sync_debug_mode};

struct Install {
  Install() { set_cuda_hooks(&kHooks); }
} install;

}  // namespace

}  // namespace ls::cuda
