// The host side of index_fault.cuh: one fault record per device, created on first use and kept
// for the life of the process (like the CUDA context), and the check that turns a recorded fault
// into an IndexError after each host wait.
#include <atomic>
#include <mutex>
#include <new>
#include <set>
#include <string>

#include "cuda_check.cuh"
#include "index_fault.cuh"
#include "ops/op_args.h"

namespace ls::cuda {

namespace {

constexpr int kMaxDevices = 64;

struct FaultSlot {
  int32_t* claim = nullptr;            // device memory
  IndexFault* host = nullptr;          // the record, as the host addresses it
  IndexFault* device = nullptr;        // the same record, as kernels address it
};

std::mutex g_mutex;
FaultSlot g_slots[kMaxDevices];
std::atomic<int> g_devices{0};  // slots [0, g_devices) may exist: the raise loop's bound

const FaultSlot& slot(int device) {
  LS_CHECK(device >= 0 && device < kMaxDevices, RuntimeError, "index check: device ", device,
           " is beyond the ", kMaxDevices, " supported");
  std::lock_guard<std::mutex> lock(g_mutex);
  FaultSlot& s = g_slots[device];
  if (!s.host) {
    void* host = nullptr;
    check(cudaHostAlloc(&host, sizeof(IndexFault), cudaHostAllocMapped | cudaHostAllocPortable),
          "index check: cudaHostAlloc");
    IndexFault* rec = new (host) IndexFault{};
    rec->written = 0;
    void* dev_rec = nullptr;
    check(cudaHostGetDevicePointer(&dev_rec, host, 0), "index check: cudaHostGetDevicePointer");
    void* claim = nullptr;
    check(cudaMalloc(&claim, sizeof(int32_t)), "index check: cudaMalloc");
    check(cudaMemset(claim, 0, sizeof(int32_t)), "index check: cudaMemset");
    s.claim = static_cast<int32_t*>(claim);
    s.device = static_cast<IndexFault*>(dev_rec);
    s.host = rec;
    if (g_devices.load() <= device) g_devices.store(device + 1);
  }
  return s;
}

std::string fault_message(const IndexFault& f) {
  const char* when = " (found on the GPU; CUDA index checks raise at the next synchronisation)";
  return ops::bad_value_message(f.kind, f.op, f.value, f.position, f.bound, f.extra) + when;
}

}  // namespace

FaultSite fault_site(const char* op, FaultKind kind, int64_t bound, int64_t extra) {
  int device = 0;
  check(cudaGetDevice(&device), op);
  const FaultSlot& s = slot(device);
  return {s.claim, s.device, op, kind, bound, extra};
}

const char* lasting_op_name(const std::string& op) {
  static std::mutex names_mutex;
  static std::set<std::string> names;  // nodes never move: their c_str() stays valid
  std::lock_guard<std::mutex> lock(names_mutex);
  return names.insert(op).first->c_str();
}

void raise_index_fault() {
  const int n = g_devices.load();
  for (int d = 0; d < n; ++d) {
    {
      std::lock_guard<std::mutex> lock(g_mutex);
      IndexFault* rec = g_slots[d].host;
      if (!rec || rec->written == 0) continue;
      std::atomic_thread_fence(std::memory_order_acquire);  // the fields after the flag
      IndexFault f;
      f.kind = rec->kind;
      f.op = rec->op;
      f.value = rec->value;
      f.position = rec->position;
      f.bound = rec->bound;
      f.extra = rec->extra;
      rec->written = 0;
      // Reopen the claim for the next fault, on this thread's stream of that device.
      int current = 0;
      check(cudaGetDevice(&current), "index check");
      check(cudaSetDevice(d), "index check");
      cudaStream_t s = current_stream(d);
      check(cudaMemsetAsync(g_slots[d].claim, 0, sizeof(int32_t), s), "index check: cudaMemsetAsync");
      check(cudaStreamSynchronize(s), "index check: cudaStreamSynchronize");
      check(cudaSetDevice(current), "index check");
      throw IndexError(fault_message(f));
    }
  }
}

}  // namespace ls::cuda
