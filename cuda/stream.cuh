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

}  // namespace ls::cuda
