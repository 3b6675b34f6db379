// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11), the
// counter-based generator behind every random op. The stream is defined per element so that any
// device can reproduce it:
//   a draw of n values with generator state (seed, offset) gives element i the 32-bit word
//   w(i) = philox(counter = {offset + i / 4, 0, 0, 0}, key = {seed lo, seed hi})[i % 4]
//   and advances offset by ceil(n / 4), whatever the dtype.
//   An element that needs 64 bits takes w(i) as its high half and, as its low half,
//   w'(i) = philox(counter = {offset + i / 4, 0, 1, 0}, key)[i % 4] (counter word 2 = 1: blocks
//   no draw's w uses), so W(i) = w(i) 2^32 + w'(i) and its top 32 bits are the 32-bit stream.
//   uniform  of d significand bits (torch's numeric_limits<T>::digits, the values k 2^-d):
//            float32 d = 24: u(w) = (w >> 8) 2^-24; bfloat16 d = 8, float16 d = 11:
//            (w >> (32 - d)) 2^-d; float64 d = 53: (W >> 11) 2^-53. Always in [0, 1) and exact
//            in the dtype, so never rounded up to 1; a narrower rand is the float32 one rounded
//            down to its grid.
//   normal   element i pairs lanes (0,1) or (2,3) of its block with Box-Muller:
//            r = sqrt(-2 ln(1 - u(a))), lane even: r cos(2 pi u(b)), lane odd: r sin(2 pi u(b))
//            in float32 math on 24-bit uniforms (16-bit dtypes round that), and in float64 math
//            on 53-bit uniforms (W of the same lanes) for float64.
//   integer  in [low, low + range): low + w(i) % range when range <= 2^32, else
//            low + W(i) % range (torch's random() / random64() % range, with its bias below
//            range / 2^32 resp. range / 2^64 of a value's probability).
#pragma once
#include <cmath>
#include <cstdint>

#include "dtype.h"
#include "host_device.h"

namespace ls {

struct Philox4 { uint32_t v[4]; };

// Counter {counter lo, counter hi, c2, 0}, key {seed lo, seed hi}.
LS_HD Philox4 philox4x32_10(uint64_t counter, uint64_t seed, uint32_t c2 = 0) {
  uint32_t c0 = uint32_t(counter), c1 = uint32_t(counter >> 32), c3 = 0;
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
// The uniform of d <= 32 significand bits, and of 53 bits from a 64-bit word.
LS_HD double philox_uniform_digits(uint32_t x, int d) {
  return double(x >> (32 - d)) * (1.0 / double(uint64_t(1) << d));
}
LS_HD double philox_uniform53(uint64_t x) { return double(x >> 11) * (1.0 / 9007199254740992.0); }
LS_HD uint64_t philox_join(uint32_t hi, uint32_t lo) { return (uint64_t(hi) << 32) | lo; }

// Element i of a draw starting at `offset`: w(i), and W(i) for the 64-bit values.
LS_HD uint32_t philox_bits(uint64_t seed, uint64_t offset, uint64_t i) {
  return philox4x32_10(offset + i / 4, seed).v[i % 4];
}
LS_HD uint64_t philox_bits64(uint64_t seed, uint64_t offset, uint64_t i) {
  return philox_join(philox_bits(seed, offset, i), philox4x32_10(offset + i / 4, seed, 1).v[i % 4]);
}
LS_HD float philox_uniform_at(uint64_t seed, uint64_t offset, uint64_t i) {
  return philox_uniform(philox_bits(seed, offset, i));
}
// rand of a float dtype with d significand bits (digits_of below): 8, 11, 24 or 53.
LS_HD double philox_rand_at(uint64_t seed, uint64_t offset, uint64_t i, int d) {
  return d > 32 ? philox_uniform53(philox_bits64(seed, offset, i))
                : philox_uniform_digits(philox_bits(seed, offset, i), d);
}
LS_HD float philox_normal_at(uint64_t seed, uint64_t offset, uint64_t i) {
  Philox4 r = philox4x32_10(offset + i / 4, seed);
  int lane = int(i % 4), pair = lane & ~1;
  float u1 = philox_uniform(r.v[pair]), u2 = philox_uniform(r.v[pair + 1]);
  float rad = sqrtf(-2.0f * logf(1.0f - u1));
  float ang = 6.283185307179586f * u2;
  return (lane & 1) ? rad * sinf(ang) : rad * cosf(ang);
}
LS_HD double philox_normal64_at(uint64_t seed, uint64_t offset, uint64_t i) {
  Philox4 hi = philox4x32_10(offset + i / 4, seed), lo = philox4x32_10(offset + i / 4, seed, 1);
  int lane = int(i % 4), pair = lane & ~1;
  double u1 = philox_uniform53(philox_join(hi.v[pair], lo.v[pair]));
  double u2 = philox_uniform53(philox_join(hi.v[pair + 1], lo.v[pair + 1]));
  double rad = sqrt(-2.0 * log(1.0 - u1));  // 1 - u1 is exact and >= 2^-53
  double ang = 6.283185307179586 * u2;
  return (lane & 1) ? rad * sin(ang) : rad * cos(ang);
}
// randint's value in [low, low + range), range >= 1 (the int64 sum wraps back into range).
LS_HD int64_t philox_randint_at(uint64_t seed, uint64_t offset, uint64_t i, int64_t low,
                                uint64_t range) {
  uint64_t r = range <= (uint64_t(1) << 32) ? philox_bits(seed, offset, i) % range
                                            : philox_bits64(seed, offset, i) % range;
  return int64_t(uint64_t(low) + r);
}

// The significand bits d of a float dtype's uniform (numeric_limits<T>::digits); 0 otherwise.
inline int digits_of(DType d) {
  switch (d) {
    case DType::Float32: return 24;
    case DType::Float64: return 53;
    case DType::BFloat16: return 8;
    case DType::Float16: return 11;
    default: return 0;
  }
}

// The global generator: manual_seed sets seed and resets offset; each draw reserves blocks.
struct GeneratorState { uint64_t seed, offset; };
void manual_seed(uint64_t seed);
GeneratorState generator_state();
void set_generator_state(GeneratorState s);
// Reserve the counters for n values; returns (seed, offset of the first block).
GeneratorState reserve_random(uint64_t n);

}  // namespace ls
