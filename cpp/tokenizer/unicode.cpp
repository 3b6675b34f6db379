#include "tokenizer/unicode.h"

#include <algorithm>
#include <iterator>

#include "tokenizer/unicode_tables.h"

namespace ls::tok {

namespace {

// The White_Space property (PropList.txt): 25 code points, stable across Unicode versions.
constexpr CodeRange kSpaceRanges[] = {{0x9, 0xD},       {0x20, 0x20},     {0x85, 0x85},
                                      {0xA0, 0xA0},     {0x1680, 0x1680}, {0x2000, 0x200A},
                                      {0x2028, 0x2029}, {0x202F, 0x202F}, {0x205F, 0x205F},
                                      {0x3000, 0x3000}};

template <size_t N>
bool in_ranges(const CodeRange (&r)[N], uint32_t cp) {
  auto it = std::upper_bound(std::begin(r), std::end(r), cp,
                             [](uint32_t c, const CodeRange& x) { return c < x.lo; });
  return it != std::begin(r) && cp <= std::prev(it)->hi;
}

struct AsciiTable {
  uint8_t v[128];
  constexpr AsciiTable() : v() {
    for (int c = 0; c < 128; ++c) {
      uint8_t k = kOther;
      if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) k = kLetter;
      else if (c >= '0' && c <= '9') k = kNumber;
      else if ((c >= 0x9 && c <= 0xD) || c == ' ') k = kSpace;
      v[c] = k;
    }
  }
};
constexpr AsciiTable kAscii;

}  // namespace

const uint8_t kAsciiClass[128] = {
#define R(i) kAscii.v[i]
#define R8(i) R(i), R(i + 1), R(i + 2), R(i + 3), R(i + 4), R(i + 5), R(i + 6), R(i + 7)
    R8(0),  R8(8),  R8(16), R8(24), R8(32), R8(40),  R8(48),  R8(56),
    R8(64), R8(72), R8(80), R8(88), R8(96), R8(104), R8(112), R8(120)
#undef R8
#undef R
};

CharClass classify_slow(uint32_t cp) {
  if (cp >= 0xDC00 && cp <= 0xDCFF) return kOther;  // an invalid byte (see decode_utf8)
  if (in_ranges(kLetterRanges, cp)) return kLetter;
  if (in_ranges(kNumberRanges, cp)) return kNumber;
  if (in_ranges(kSpaceRanges, cp)) return kSpace;
  return kOther;
}

}  // namespace ls::tok
