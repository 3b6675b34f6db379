#include "tokenizer/pretokenize.h"

#include "core/error.h"
#include "tokenizer/unicode.h"

namespace ls::tok {

const char* const kGpt2PatStr =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
const char* const kCl100kPatStr =
    R"('(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s)";
const char* const kCl100kOriginalPatStr =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

Pattern parse_pattern(const std::string& name) {
  if (name == "gpt2") return Pattern::GPT2;
  if (name == "cl100k") return Pattern::CL100K;
  if (name == "cl100k_original") return Pattern::CL100K_ORIGINAL;
  throw ValueError(cat("tokenizer: unknown pattern '", name,
                       "' (expected 'gpt2', 'cl100k' or 'cl100k_original')"));
}
const char* pattern_name(Pattern p) {
  return p == Pattern::GPT2 ? "gpt2" : p == Pattern::CL100K ? "cl100k" : "cl100k_original";
}
const char* pattern_regex(Pattern p) {
  return p == Pattern::GPT2 ? kGpt2PatStr : p == Pattern::CL100K ? kCl100kPatStr : kCl100kOriginalPatStr;
}

namespace {

struct Ch {
  uint32_t cp, len;
  CharClass cls;
};

inline Ch at(const uint8_t* s, size_t n, size_t i) {
  if (s[i] < 0x80) return {s[i], 1, CharClass(kAsciiClass[s[i]])};
  CodePoint c = decode_utf8(s, n, i);
  return {c.cp, c.len, classify(c.cp)};
}

// End of the run of characters of class k starting at i.
inline size_t run_of(const uint8_t* s, size_t n, size_t i, CharClass k) {
  while (i < n) {
    Ch c = at(s, n, i);
    if (c.cls != k) break;
    i += c.len;
  }
  return i;
}

// \s+(?!\S)|\s+ at i (s[i] is white space); for cl100k first \s*[\r\n]+, and before that
// (tiktoken's current cl100k) \s++$: a run that reaches the end of the text is one piece.
inline size_t whitespace(const uint8_t* s, size_t n, size_t i, bool newline_rule, bool end_rule) {
  size_t k = i, last = i, after_newline = 0;
  while (k < n) {
    Ch c = at(s, n, k);
    if (c.cls != kSpace) break;
    if (c.cp == '\r' || c.cp == '\n') after_newline = k + 1;
    last = k;
    k += c.len;
  }
  if (end_rule && k == n) return n;
  // \s*[\r\n]+ : \s* backs off to the last newline of the run, [\r\n]+ takes it.
  if (newline_rule && after_newline) return after_newline;
  if (k == n) return n;           // \s+(?!\S) at the end of the text
  if (last > i) return last;      // \s+(?!\S) backs off one character before the \S
  return k;                       // \s+
}

// Lower-case ASCII letter for the case-insensitive contractions; U+017F (long s) folds to 's'.
inline uint32_t fold(uint32_t cp) {
  if (cp >= 'A' && cp <= 'Z') return cp + 32;
  if (cp == 0x17F) return 's';
  return cp;
}

size_t gpt2_next(const uint8_t* s, size_t n, size_t i) {
  if (s[i] == '\'' && i + 1 < n) {
    uint8_t a = s[i + 1];
    if (a == 's' || a == 't' || a == 'm' || a == 'd') return i + 2;
    if (i + 2 < n) {
      uint8_t b = s[i + 2];
      if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return i + 3;
    }
  }
  Ch c = at(s, n, i);
  if (c.cp == ' ' && i + 1 < n) {  // ' ?X+' with the space
    Ch d = at(s, n, i + 1);
    if (d.cls != kSpace) return run_of(s, n, i + 1 + d.len, d.cls);
  }
  if (c.cls != kSpace) return run_of(s, n, i + c.len, c.cls);
  return whitespace(s, n, i, false, false);
}

size_t cl100k_next(const uint8_t* s, size_t n, size_t i, bool end_rule) {
  Ch c = at(s, n, i);
  if (c.cp == '\'' && i + 1 < n) {  // (?i:'s|'t|'re|'ve|'m|'ll|'d)
    Ch a = at(s, n, i + 1);
    uint32_t fa = fold(a.cp);
    if (fa == 's' || fa == 't' || fa == 'm' || fa == 'd') return i + 1 + a.len;
    if ((fa == 'r' || fa == 'v' || fa == 'l') && i + 1 + a.len < n) {
      Ch b = at(s, n, i + 1 + a.len);
      uint32_t fb = fold(b.cp);
      if ((fa != 'l' && fb == 'e') || (fa == 'l' && fb == 'l')) return i + 1 + a.len + b.len;
    }
  }
  // [^\r\n\p{L}\p{N}]?\p{L}+
  if (c.cls == kLetter) return run_of(s, n, i + c.len, kLetter);
  if (c.cls != kNumber && c.cp != '\r' && c.cp != '\n' && i + c.len < n) {
    Ch d = at(s, n, i + c.len);
    if (d.cls == kLetter) return run_of(s, n, i + c.len + d.len, kLetter);
  }
  // \p{N}{1,3}
  if (c.cls == kNumber) {
    size_t j = i + c.len;
    for (int k = 1; k < 3 && j < n; ++k) {
      Ch d = at(s, n, j);
      if (d.cls != kNumber) break;
      j += d.len;
    }
    return j;
  }
  //  ?[^\s\p{L}\p{N}]+[\r\n]*
  size_t j = 0;
  bool other = false;
  if (c.cls == kOther) {
    j = i + c.len;
    other = true;
  } else if (c.cp == ' ' && i + 1 < n) {
    Ch d = at(s, n, i + 1);
    if (d.cls == kOther) {
      j = i + 1 + d.len;
      other = true;
    }
  }
  if (other) {
    j = run_of(s, n, j, kOther);
    while (j < n && (s[j] == '\r' || s[j] == '\n')) ++j;
    return j;
  }
  return whitespace(s, n, i, true, end_rule);
}

}  // namespace

size_t next_piece(Pattern p, const uint8_t* s, size_t n, size_t i) {
  return p == Pattern::GPT2 ? gpt2_next(s, n, i) : cl100k_next(s, n, i, p == Pattern::CL100K);
}

size_t safe_cut(const uint8_t* s, size_t n, size_t pos) {
  for (size_t i = pos; i + 1 < n; ++i) {
    if (s[i] != '\n') continue;
    if (at(s, n, i + 1).cls == kLetter) return i + 1;
  }
  return n;
}

}  // namespace ls::tok
