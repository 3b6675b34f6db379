// The calling thread's current CUDA stream, per device: every launcher passes it as the fourth
// <<<grid, block, smem, stream>>> argument, and the copies, memsets and CUB calls of the ops are
// ordered on it. Until a thread chooses another stream (llmscratch.cuda.set_stream / the
// `with llmscratch.cuda.stream(s)` block), it is the legacy default stream (nullptr), so code
// that never touches streams runs exactly as before: one queue per device, in order.
#pragma once
#include <cuda_runtime.h>

namespace ls::cuda {

// The current stream of this thread on `device`.
cudaStream_t current_stream(int device);
// The current stream of this thread on the device this thread has selected (cudaSetDevice),
// which is the device of the op's tensors once its entry has called set_device.
cudaStream_t current_stream();
void set_current_stream(int device, cudaStream_t stream);

// A side stream for an op whose short, latency-bound steps (a small sort) can run beside its
// bandwidth-bound kernels. Constructing one orders this thread's high-priority stream on the
// selected device after everything queued so far on the current stream; join() (or the
// destructor, if an error unwinds first) orders the current stream after everything queued on
// the side stream since. An op joins before it returns, so its temporaries (allocated for the
// current stream) are never reused while the side stream still reads them. High priority: the
// block scheduler gives the side stream's few blocks the next free slots, instead of queueing
// them behind a big grid. One side stream per thread and device serves the ops of all its
// streams: two user streams' ops that fork queue their side work in the order they were issued.
class SideStream {
 public:
  SideStream();
  ~SideStream();
  SideStream(const SideStream&) = delete;
  SideStream& operator=(const SideStream&) = delete;
  cudaStream_t get() const { return stream_; }
  void join();

 private:
  int device_;
  cudaStream_t stream_;
  bool joined_ = false;
};

}  // namespace ls::cuda
