#include "philox.h"

#include <mutex>

namespace ls {

namespace {
std::mutex g_mutex;
GeneratorState g_state{0x5EED, 0};
}  // namespace

void manual_seed(uint64_t seed) {
  std::lock_guard<std::mutex> l(g_mutex);
  g_state = {seed, 0};
}
GeneratorState generator_state() {
  std::lock_guard<std::mutex> l(g_mutex);
  return g_state;
}
void set_generator_state(GeneratorState s) {
  std::lock_guard<std::mutex> l(g_mutex);
  g_state = s;
}
GeneratorState reserve_random(uint64_t n) {
  std::lock_guard<std::mutex> l(g_mutex);
  GeneratorState s = g_state;
  g_state.offset += (n + 3) / 4;
  return s;
}

}  // namespace ls
