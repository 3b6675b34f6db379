// A small persistent thread pool: parallel_for splits [begin, end) into contiguous chunks of at
// least `grain` items, one per worker, and runs them; the calling thread takes a chunk too.
#pragma once
#include <cstdint>
#include <functional>

namespace ls {

int num_threads();
void set_num_threads(int n);  // default: hardware concurrency, or LLMSCRATCH_NUM_THREADS
void parallel_for(int64_t begin, int64_t end, int64_t grain,
                  const std::function<void(int64_t, int64_t)>& fn);

}  // namespace ls
