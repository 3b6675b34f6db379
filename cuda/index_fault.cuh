// Bad indices found on the device, raised on the host at its next synchronisation.
//
// An index check that raised at once would have to wait for the GPU (a device -> host read)
// inside every op that takes indices: the cross-entropy targets, index_select, gather,
// scatter_add, one_hot. That wait would stall the host once or twice per training step. So
// these ops check on the device instead: the check kernel finds the first bad position, and
// one thread writes the op, the value, the position and the limit into this device's fault
// record. The host raises the IndexError when it next waits for the device: a copy to the host
// (tensor.item(), .numpy(), .to("cpu")), llmscratch.cuda.synchronize(), Stream/Event
// .synchronize() or a .query() that finds the work done. As with torch's device-side asserts,
// the error therefore surfaces at that later call; its message names the op that found it. The
// op's kernels never read or write out of bounds for a bad index: they skip it or write a row
// of NaN or zeros (each op's header says which), so the results of that step are not to be
// used, and the first fault since the last raise is the one reported.
//
// The record sits in mapped pinned host memory, so the host reads it without a copy. Only the
// thread that wins a claim word in device memory (one atomicCAS) writes it: device atomics on
// host memory are not portable across interconnects, plain stores followed by a system fence
// are.
#pragma once
#include <cstdint>
#include <string>

#include "ops/op_args.h"

namespace ls::cuda {

// The messages are the CPU kernels' (ops::bad_value_message), with the fault's fields.
using FaultKind = ops::IndexKind;

struct IndexFault {
  volatile int32_t written;  // 1 once the fields below are complete; the host clears it
  FaultKind kind;
  const char* op;  // a string literal of the host: the pointer is only carried, never read here
  int64_t value, position, bound, extra;
};

// What a check kernel needs to record a fault: where, and the message's fixed fields.
struct FaultSite {
  int32_t* claim;       // device memory; 0 when no fault is pending
  IndexFault* record;   // mapped host memory
  const char* op;       // must be a string literal
  FaultKind kind;
  int64_t bound, extra;
};

// The fault site of the current device for one check (creates the device's record on first use).
FaultSite fault_site(const char* op, FaultKind kind, int64_t bound, int64_t extra);

// A name that lives as long as the process (the record keeps the pointer), for an op named at
// run time (the index_check op's attr).
const char* lasting_op_name(const std::string& op);

// Throws the IndexError of a recorded fault, if any, and clears it. Called after every host wait.
void raise_index_fault();

#ifdef __CUDACC__
// One thread records (value, position) unless a fault is already pending.
__device__ inline void record_index_fault(const FaultSite& site, int64_t position, int64_t value) {
  if (atomicCAS(site.claim, 0, 1) != 0) return;
  IndexFault* r = site.record;
  r->kind = site.kind;
  r->op = site.op;
  r->value = value;
  r->position = position;
  r->bound = site.bound;
  r->extra = site.extra;
  __threadfence_system();  // the fields reach the host before the flag
  r->written = 1;
}
#endif

}  // namespace ls::cuda
