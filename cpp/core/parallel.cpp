#include "parallel.h"

#include <algorithm>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace ls {

namespace {

class Pool {
 public:
  explicit Pool(int n) { resize(n); }
  ~Pool() { stop(); }

  int size() const { return int(workers_.size()) + 1; }

  void resize(int n) {
    stop();
    done_ = false;
    // New workers must not mistake the last finished job for a fresh one.
    const uint64_t gen = generation_;
    for (int i = 0; i < n - 1; ++i) workers_.emplace_back([this, i, gen] { loop(i, gen); });
  }

  // Runs job(worker) for worker in [0, size()); worker 0 is the caller.
  void run(int parts, const std::function<void(int)>& job) {
    std::unique_lock<std::mutex> lock(m_);
    job_ = &job;
    parts_ = parts;
    pending_ = parts - 1;
    error_ = nullptr;
    ++generation_;
    lock.unlock();
    cv_.notify_all();
    try {
      job(0);
    } catch (...) {
      std::lock_guard<std::mutex> g(m_);
      if (!error_) error_ = std::current_exception();
    }
    lock.lock();
    done_cv_.wait(lock, [this] { return pending_ == 0; });
    job_ = nullptr;
    if (error_) std::rethrow_exception(error_);
  }

 private:
  void loop(int i, uint64_t seen) {
    for (;;) {
      std::unique_lock<std::mutex> lock(m_);
      cv_.wait(lock, [&] { return done_ || generation_ != seen; });
      if (done_) return;
      seen = generation_;
      if (i + 1 >= parts_) continue;
      const std::function<void(int)>* job = job_;
      lock.unlock();
      try {
        (*job)(i + 1);
      } catch (...) {
        std::lock_guard<std::mutex> g(m_);
        if (!error_) error_ = std::current_exception();
      }
      lock.lock();
      if (--pending_ == 0) done_cv_.notify_one();
    }
  }

  void stop() {
    {
      std::lock_guard<std::mutex> g(m_);
      done_ = true;
    }
    cv_.notify_all();
    for (auto& w : workers_) w.join();
    workers_.clear();
  }

  std::vector<std::thread> workers_;
  std::mutex m_;
  std::condition_variable cv_, done_cv_;
  const std::function<void(int)>* job_ = nullptr;
  int parts_ = 0, pending_ = 0;
  uint64_t generation_ = 0;
  bool done_ = false;
  std::exception_ptr error_;
};

int default_threads() {
  if (const char* env = std::getenv("LLMSCRATCH_NUM_THREADS")) {
    int n = std::atoi(env);
    if (n > 0) return n;
  }
  return std::max(1u, std::thread::hardware_concurrency());
}

Pool& pool() {
  static Pool p(default_threads());
  return p;
}

thread_local bool t_inside_parallel = false;
std::mutex g_run_mutex;  // one parallel region at a time

}  // namespace

int num_threads() { return pool().size(); }
void set_num_threads(int n) { pool().resize(std::max(1, n)); }

void parallel_for(int64_t begin, int64_t end, int64_t grain,
                  const std::function<void(int64_t, int64_t)>& fn) {
  int64_t n = end - begin;
  if (n <= 0) return;
  grain = std::max<int64_t>(grain, 1);
  int parts = int(std::min<int64_t>(num_threads(), (n + grain - 1) / grain));
  if (parts <= 1 || t_inside_parallel) {
    fn(begin, end);
    return;
  }
  std::lock_guard<std::mutex> lock(g_run_mutex);
  int64_t chunk = (n + parts - 1) / parts;
  pool().run(parts, [&](int part) {
    // Reset however fn leaves (a kernel that raises, e.g. an integer division by zero): left set,
    // every later parallel_for of this thread would run serially.
    struct Inside {
      Inside() { t_inside_parallel = true; }
      ~Inside() { t_inside_parallel = false; }
    } inside;
    int64_t b = begin + part * chunk, e = std::min(end, b + chunk);
    if (b < e) fn(b, e);
  });
}

}  // namespace ls
