// Unicode classes and UTF-8 decoding for pre-tokenization. The classes are those the GPT-2 and
// cl100k patterns use: \p{L}, \p{N} (tables generated into unicode_tables.h) and \s (the
// Unicode White_Space property, as the Rust regex crate under tiktoken defines it).
#pragma once
#include <cstddef>
#include <cstdint>

namespace ls::tok {

enum CharClass : uint8_t { kOther = 0, kLetter = 1, kNumber = 2, kSpace = 3 };

struct CodePoint {
  uint32_t cp;   // the code point; an invalid UTF-8 byte b decodes to 0xDC00 + b (class kOther)
  uint32_t len;  // bytes it takes in the text (1..4)
};

// Decodes the code point starting at s[i] (i < n). Invalid or truncated sequences take one byte.
inline CodePoint decode_utf8(const uint8_t* s, size_t n, size_t i) {
  uint8_t b0 = s[i];
  if (b0 < 0x80) return {b0, 1};
  auto cont = [&](size_t k) { return i + k < n && (s[i + k] & 0xC0) == 0x80; };
  if (b0 >= 0xC2 && b0 < 0xE0 && cont(1)) return {uint32_t(b0 & 0x1F) << 6 | (s[i + 1] & 0x3F), 2};
  if (b0 >= 0xE0 && b0 < 0xF0 && cont(1) && cont(2)) {
    uint32_t cp = uint32_t(b0 & 0x0F) << 12 | uint32_t(s[i + 1] & 0x3F) << 6 | (s[i + 2] & 0x3F);
    if (cp >= 0x800 && (cp < 0xD800 || cp > 0xDFFF)) return {cp, 3};
  } else if (b0 >= 0xF0 && b0 < 0xF5 && cont(1) && cont(2) && cont(3)) {
    uint32_t cp = uint32_t(b0 & 0x07) << 18 | uint32_t(s[i + 1] & 0x3F) << 12 |
                  uint32_t(s[i + 2] & 0x3F) << 6 | (s[i + 3] & 0x3F);
    if (cp >= 0x10000 && cp <= 0x10FFFF) return {cp, 4};
  }
  return {0xDC00u + b0, 1};
}

CharClass classify_slow(uint32_t cp);  // binary search in the generated tables

extern const uint8_t kAsciiClass[128];

inline CharClass classify(uint32_t cp) {
  return cp < 128 ? CharClass(kAsciiClass[cp]) : classify_slow(cp);
}

}  // namespace ls::tok
