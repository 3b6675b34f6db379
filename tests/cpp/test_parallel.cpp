#include <gtest/gtest.h>

#include <mutex>
#include <set>
#include <stdexcept>
#include <thread>

#include "core/parallel.h"

namespace ls::test {

// The threads a parallel_for over n elements ran on.
std::set<std::thread::id> threads_used(int64_t n) {
  std::mutex m;
  std::set<std::thread::id> ids;
  parallel_for(0, n, 1, [&](int64_t, int64_t) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));  // so that no part finishes them all
    std::lock_guard<std::mutex> g(m);
    ids.insert(std::this_thread::get_id());
  });
  return ids;
}

TEST(Parallel, AKernelThatThrowsLeavesTheThreadsInUse) {
  const int prev = num_threads();
  set_num_threads(2);
  ASSERT_EQ(threads_used(2).size(), 2u);
  EXPECT_THROW(parallel_for(0, 2, 1, [](int64_t, int64_t) { throw std::runtime_error("kernel"); }),
               std::runtime_error);
  EXPECT_EQ(threads_used(2).size(), 2u);  // was 1: the caller still thought it was inside a region
  set_num_threads(prev);
}

}  // namespace ls::test
