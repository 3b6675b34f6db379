// Byte-level BPE: a vocabulary of byte strings whose index is the rank (token id = rank, as in
// tiktoken), encode/decode applied exactly as tiktoken applies ranks, and training.
//
// Encoding a piece (one pre-token): if its bytes are a token, that token; otherwise start from
// one token per byte and repeatedly merge the adjacent pair whose concatenation has the lowest
// rank (the leftmost one on ties) until no adjacent concatenation is a token. A merge table
// (left id, right id) -> id lists every way a token splits into two tokens, so a pair lookup is
// one hash probe instead of hashing concatenated bytes. Pieces longer than 128 bytes use a heap
// (O(n log n)) instead of the quadratic scan; both give the same tokens.
//
// Training (train_bpe): pre-tokenize, count distinct pieces (threads over documents), then
// merge: take the most frequent adjacent pair, ties broken by the smallest (left id, right id);
// the new token's id is the next free one. Pair counts are updated incrementally from the
// pieces that contain the merged pair (an index pair -> pieces), and a lazy max-heap holds the
// candidates (stale entries are skipped when popped). Same input and settings, same vocabulary.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "tokenizer/pretokenize.h"

namespace ls::tok {

class BPE {
 public:
  // tokens[i] is the byte string of rank i; every single byte must be among them. specials map
  // a string to an id outside [0, tokens.size()).
  BPE(std::vector<std::string> tokens, std::vector<std::pair<std::string, uint32_t>> specials,
      Pattern pattern);

  Pattern pattern() const { return pattern_; }
  size_t n_ranks() const { return tokens_.size(); }
  size_t vocab_size() const;  // max id + 1 over ranks and specials
  const std::vector<std::string>& tokens() const { return tokens_; }
  const std::vector<std::pair<std::string, uint32_t>>& specials() const { return specials_; }

  // Ordinary text only (special token strings are plain text here). Long texts are split at
  // safe cuts and encoded on the thread pool.
  std::vector<uint32_t> encode_ordinary(std::string_view text, bool parallel = true) const;
  // Special tokens named in `allowed` are encoded as their ids wherever they occur.
  std::vector<uint32_t> encode(std::string_view text, const std::vector<std::string>& allowed) const;
  std::vector<std::vector<uint32_t>> encode_batch(const std::vector<std::string>& texts,
                                                  const std::vector<std::string>& allowed) const;
  // Concatenated bytes; an id that is no token raises ValueError.
  std::string decode_bytes(const uint32_t* ids, size_t n) const;

  // Appends the tokens of one piece.
  void encode_piece(const uint8_t* p, size_t n, std::vector<uint32_t>& out) const;

 private:
  void encode_long_piece(const uint8_t* p, size_t n, std::vector<uint32_t>& out) const;
  void encode_range(const uint8_t* s, size_t n, size_t b, size_t e, std::vector<uint32_t>& out) const;

  Pattern pattern_;
  std::vector<std::string> tokens_;
  std::vector<std::pair<std::string, uint32_t>> specials_;
  std::unordered_map<std::string_view, uint32_t> rank_of_;  // bytes -> rank (views into tokens_)
  std::unordered_map<uint64_t, uint32_t> merge_;            // (left << 32 | right) -> rank
  std::unordered_map<uint32_t, std::string_view> special_of_;
  uint32_t byte_rank_[256];
};

struct TrainOptions {
  size_t vocab_size = 0;  // ordinary tokens (256 bytes + merges)
  Pattern pattern = Pattern::CL100K;
};

// Trains on documents given as strings and/or file paths (read as raw bytes). Returns the token
// byte strings by rank: bytes 0..255 first (rank = byte value), then merges in order.
std::vector<std::string> train_bpe(const std::vector<std::string>& texts,
                                   const std::vector<std::string>& paths, const TrainOptions& opt);

}  // namespace ls::tok
