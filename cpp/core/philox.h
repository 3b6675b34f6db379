// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11), the
// counter-based generator behind every random op. The stream is defined per element so that any
// device can reproduce it:
//   a draw of n values with generator state (seed, offset) gives element i the output
//   philox(counter = {offset + i / 4, 0, 0, 0}, key = {seed lo, seed hi})[i % 4]
//   and advances offset by ceil(n / 4).
//   uniform  u(x) = (x >> 8) * 2^-24, in [0, 1)
//   normal   element i pairs lanes (0,1) or (2,3) of its block with Box-Muller:
//            r = sqrt(-2 ln(1 - u(a))), lane even: r cos(2 pi u(b)), lane odd: r sin(2 pi u(b))
#pragma once
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define LS_HD __host__ __device__ __forceinline__
#else
#define LS_HD inline
#endif

namespace ls {

struct Philox4 { uint32_t v[4]; };

LS_HD Philox4 philox4x32_10(uint64_t counter, uint64_t seed) {
  uint32_t c0 = uint32_t(counter), c1 = uint32_t(counter >> 32), c2 = 0, c3 = 0;
  uint32_t k0 = uint32_t(seed), k1 = uint32_t(seed >> 32);
  for (int r = 0; r < 10; ++r) {
    uint64_t p0 = uint64_t(0xD2511F53u) * c0, p1 = uint64_t(0xCD9E8D57u) * c2;
    uint32_t n0 = uint32_t(p1 >> 32) ^ c1 ^ k0, n2 = uint32_t(p0 >> 32) ^ c3 ^ k1;
    c1 = uint32_t(p1);
    c3 = uint32_t(p0);
    c0 = n0;
    c2 = n2;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return Philox4{{c0, c1, c2, c3}};
}

LS_HD float philox_uniform(uint32_t x) { return float(x >> 8) * (1.0f / 16777216.0f); }

// Element i of a draw starting at `offset`.
LS_HD uint32_t philox_bits(uint64_t seed, uint64_t offset, uint64_t i) {
  return philox4x32_10(offset + i / 4, seed).v[i % 4];
}
LS_HD float philox_uniform_at(uint64_t seed, uint64_t offset, uint64_t i) {
  return philox_uniform(philox_bits(seed, offset, i));
}
LS_HD float philox_normal_at(uint64_t seed, uint64_t offset, uint64_t i) {
  Philox4 r = philox4x32_10(offset + i / 4, seed);
  int lane = int(i % 4), pair = lane & ~1;
  float u1 = philox_uniform(r.v[pair]), u2 = philox_uniform(r.v[pair + 1]);
  float rad = sqrtf(-2.0f * logf(1.0f - u1));
  float ang = 6.283185307179586f * u2;
  return (lane & 1) ? rad * sinf(ang) : rad * cosf(ang);
}

// The global generator: manual_seed sets seed and resets offset; each draw reserves blocks.
struct GeneratorState { uint64_t seed, offset; };
void manual_seed(uint64_t seed);
GeneratorState generator_state();
void set_generator_state(GeneratorState s);
// Reserve the counters for n values; returns (seed, offset of the first block).
GeneratorState reserve_random(uint64_t n);

}  // namespace ls
