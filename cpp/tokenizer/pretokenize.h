// Pre-tokenization: splits text into the pieces that BPE then encodes one by one, by hand-written
// matchers equivalent to the two regular expressions tiktoken uses (leftmost-first alternation,
// greedy quantifiers with backtracking, as a backtracking regex engine applies them):
//
// GPT-2:  's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//         (tiktoken's r50k/gpt2 pattern; its current possessive spelling splits identically)
// cl100k: '(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|
//         \s++$|\s*[\r\n]|\s+(?!\S)|\s          (cl100k_base as tiktoken ships it now)
// cl100k_original: (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
//         ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+   (its first published form)
// The two cl100k forms differ only in \s++$: a white-space run holding a newline at the very
// end of the text is one piece in the current form and is cut after its last newline in the
// original one. The case-insensitive contractions also match U+017F (long s), which case-folds
// to 's', as both regex engines do.
//
// The matchers work on UTF-8 bytes; an invalid byte counts as one character of no class
// ([^\s\p{L}\p{N}]). Every piece is non-empty and the pieces tile the text.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace ls::tok {

enum class Pattern { GPT2, CL100K, CL100K_ORIGINAL };

extern const char* const kGpt2PatStr;
extern const char* const kCl100kPatStr;
extern const char* const kCl100kOriginalPatStr;

Pattern parse_pattern(const std::string& name);  // "gpt2", "cl100k", "cl100k_original"
const char* pattern_name(Pattern p);
const char* pattern_regex(Pattern p);

// End of the piece that starts at byte i (i < n). Lookahead sees the whole text [0, n).
size_t next_piece(Pattern p, const uint8_t* s, size_t n, size_t i);

// Splits s[begin, end) into pieces and calls fn(piece_begin, piece_end) for each. `end` must be
// a piece boundary of the whole text (see safe_cut) unless it is n.
template <typename Fn>
void for_each_piece(Pattern p, const uint8_t* s, size_t n, size_t begin, size_t end, Fn&& fn) {
  size_t i = begin;
  while (i < end) {
    size_t j = next_piece(p, s, n, i);
    fn(i, j);
    i = j;
  }
}

// The first position >= pos where no piece can straddle the cut, for either pattern: right after
// a '\n' that is followed by a letter (piece boundaries there do not depend on anything to the
// left). Returns n when there is none. Used to split long texts across threads.
size_t safe_cut(const uint8_t* s, size_t n, size_t pos);

}  // namespace ls::tok
