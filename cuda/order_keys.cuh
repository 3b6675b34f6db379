// The value order of sort and topk on the GPU (the CUDA twin of cpp/ops/ordering.h): every value
// becomes an unsigned "order key" whose unsigned comparison is the wanted order, and an Item pairs
// the key with the element's position so that (key, position) is a strict total order. Sorting
// Items ascending therefore gives exactly the stable result of the CPU sort, in both directions.
//   floats: the sign-magnitude bits are flipped into an unsigned ramp; -0.0 is keyed as +0.0 (they
//           compare equal on the CPU, so their order is decided by position) and every NaN as one
//           positive quiet NaN above +inf (NaN is the largest value, as in torch);
//   bfloat16/float16: keyed through float32 (exact);  signed ints: the sign bit flipped;
//   descending: the key's bits inverted (ties still go to the lower position).
#pragma once
#include <cstdint>
#include <type_traits>

#include "elementwise.cuh"

namespace ls::cuda {

template <typename T> struct KeyOf { using type = uint32_t; };
template <> struct KeyOf<double> { using type = uint64_t; };
template <> struct KeyOf<int64_t> { using type = uint64_t; };
template <typename T> using key_t = typename KeyOf<T>::type;

template <typename T>
__device__ __forceinline__ key_t<T> order_key(T v, bool descending) {
  using K = key_t<T>;
  K k;
  if constexpr (std::is_same_v<T, double>) {
    uint64_t b = v != v ? 0x7FF8000000000000ull : (v == 0.0 ? 0ull : uint64_t(__double_as_longlong(v)));
    k = (b >> 63) ? ~b : (b | (1ull << 63));
  } else if constexpr (std::is_same_v<T, float> || std::is_same_v<T, __nv_bfloat16> ||
                       std::is_same_v<T, __half>) {
    float f = convert<float>(v);
    uint32_t b = f != f ? 0x7FC00000u : (f == 0.0f ? 0u : __float_as_uint(f));
    k = (b >> 31) ? ~b : (b | 0x80000000u);
  } else if constexpr (std::is_same_v<T, int32_t>) {
    k = uint32_t(v) ^ 0x80000000u;
  } else if constexpr (std::is_same_v<T, int64_t>) {
    k = uint64_t(v) ^ (1ull << 63);
  } else {  // uint8, bool
    k = K(v);
  }
  return descending ? K(~k) : k;
}

template <typename K>
struct Item {
  K key;
  uint32_t pos;  // position in the row: rows hold fewer than 2^32 elements
};

template <typename K>
__device__ __forceinline__ bool item_less(const Item<K>& a, const Item<K>& b) {
  return a.key < b.key || (a.key == b.key && a.pos < b.pos);
}

// Greater than every real item (a real position is below 2^32 - 1): pads rows and empty slots.
template <typename K>
__device__ __forceinline__ Item<K> item_sentinel() {
  return Item<K>{K(~K(0)), 0xFFFFFFFFu};
}

// One compare-exchange of a bitonic network (sort.cu, topk.cu): after it, a before b when up.
template <typename K>
__device__ __forceinline__ void compare_exchange(Item<K>& a, Item<K>& b, bool up) {
  if (item_less(b, a) == up) {
    Item<K> t = a;
    a = b;
    b = t;
  }
}

// Stages k = k_first .. k_last (powers of two) of a bitonic network over the block's s[0, tile)
// in shared memory, the first stage from stride j_first, the others from k / 2, down to stride 1;
// a pair sorts ascending where bit k of its first Item's position in its padded row of P (a
// power of two >= k_last; base: s[0]'s position) is clear, so all of the last stage k = P. The
// whole network over one padded row: k_first = 2, k_last = P = tile, j_first = 1, base = 0.
// Every thread of the block calls it.
template <typename K>
__device__ __forceinline__ void bitonic_stages(Item<K>* s, int tile, int64_t base, int64_t P, int64_t k_first,
                                               int64_t k_last, int64_t j_first) {
  for (int64_t k = k_first; k <= k_last; k <<= 1) {
    // strides below tile in 32 bits: a stage past the tile (k > tile) starts from j_first < tile
    for (int j = int(k == k_first ? j_first : k >> 1); j > 0; j >>= 1) {
      for (int q = threadIdx.x; q < tile / 2; q += blockDim.x) {
        // the q-th pair: i = 2 j (q / j) + q % j, without a division (j a power of two); i and
        // i + j differ in bit j only: the same row
        const int i = ((q & ~(j - 1)) << 1) | (q & (j - 1));
        compare_exchange(s[i], s[i + j], k >= P || ((base + i) & k) == 0);  // (base + i) % P has bit k of base + i
      }
      __syncthreads();
    }
  }
}

}  // namespace ls::cuda
