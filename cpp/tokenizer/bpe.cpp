#include "tokenizer/bpe.h"

#include <algorithm>
#include <cstdio>
#include <limits>
#include <memory>
#include <mutex>
#include <queue>

#include "core/error.h"
#include "core/parallel.h"

namespace ls::tok {

namespace {
constexpr uint32_t kNoRank = std::numeric_limits<uint32_t>::max();
inline uint64_t key(uint32_t a, uint32_t b) { return uint64_t(a) << 32 | b; }
constexpr size_t kParallelChunk = 1 << 20;  // bytes per task when a long text is split
constexpr size_t kLongPiece = 128;          // longer pieces merge through a heap
}  // namespace

BPE::BPE(std::vector<std::string> tokens, std::vector<std::pair<std::string, uint32_t>> specials,
         Pattern pattern)
    : pattern_(pattern), tokens_(std::move(tokens)), specials_(std::move(specials)) {
  LS_CHECK(tokens_.size() < kNoRank, ValueError, "tokenizer: too many tokens");
  std::fill(std::begin(byte_rank_), std::end(byte_rank_), kNoRank);
  rank_of_.reserve(tokens_.size() * 2);
  for (uint32_t r = 0; r < tokens_.size(); ++r) {
    const std::string& t = tokens_[r];
    LS_CHECK(!t.empty(), ValueError, "tokenizer: token of rank ", r, " is empty");
    bool fresh = rank_of_.emplace(std::string_view(t), r).second;
    LS_CHECK(fresh, ValueError, "tokenizer: token of rank ", r, " repeats an earlier token");
    if (t.size() == 1) byte_rank_[uint8_t(t[0])] = r;
  }
  for (int b = 0; b < 256; ++b)
    LS_CHECK(byte_rank_[b] != kNoRank, ValueError, "tokenizer: byte ", b, " has no token");
  for (uint32_t r = 0; r < tokens_.size(); ++r) {
    std::string_view t(tokens_[r]);
    for (size_t k = 1; k < t.size(); ++k) {
      auto l = rank_of_.find(t.substr(0, k)), rr = rank_of_.find(t.substr(k));
      if (l != rank_of_.end() && rr != rank_of_.end()) merge_.emplace(key(l->second, rr->second), r);
    }
  }
  for (auto& [s, id] : specials_) {
    LS_CHECK(!s.empty(), ValueError, "tokenizer: a special token is empty");
    LS_CHECK(id >= tokens_.size(), ValueError, "tokenizer: special token '", s, "' has id ", id,
             ", which is an ordinary token's rank (< ", tokens_.size(), ")");
    LS_CHECK(special_of_.emplace(id, std::string_view(s)).second, ValueError,
             "tokenizer: two special tokens share id ", id);
  }
}

size_t BPE::vocab_size() const {
  size_t v = tokens_.size();
  for (auto& [s, id] : specials_) v = std::max<size_t>(v, size_t(id) + 1);
  return v;
}

void BPE::encode_piece(const uint8_t* p, size_t n, std::vector<uint32_t>& out) const {
  if (n == 1) {
    out.push_back(byte_rank_[p[0]]);
    return;
  }
  auto whole = rank_of_.find(std::string_view(reinterpret_cast<const char*>(p), n));
  if (whole != rank_of_.end()) {
    out.push_back(whole->second);
    return;
  }
  if (n > kLongPiece) {
    encode_long_piece(p, n, out);
    return;
  }
  // parts[i]: current token ids; pr[i]: rank of merging parts[i] with parts[i+1].
  thread_local std::vector<uint32_t> parts, pr;
  parts.resize(n);
  pr.resize(n);
  for (size_t i = 0; i < n; ++i) parts[i] = byte_rank_[p[i]];
  auto pair_rank = [&](uint32_t a, uint32_t b) {
    auto it = merge_.find(key(a, b));
    return it == merge_.end() ? kNoRank : it->second;
  };
  size_t m = n;
  for (size_t i = 0; i + 1 < m; ++i) pr[i] = pair_rank(parts[i], parts[i + 1]);
  pr[m - 1] = kNoRank;
  while (m > 1) {
    uint32_t best = kNoRank;
    size_t at = 0;
    for (size_t i = 0; i + 1 < m; ++i)
      if (pr[i] < best) best = pr[i], at = i;
    if (best == kNoRank) break;
    parts[at] = best;
    // remove parts[at + 1]
    for (size_t i = at + 1; i + 1 < m; ++i) parts[i] = parts[i + 1], pr[i] = pr[i + 1];
    --m;
    pr[m - 1] = kNoRank;
    if (at + 1 < m) pr[at] = pair_rank(parts[at], parts[at + 1]);
    else pr[at] = kNoRank;
    if (at > 0) pr[at - 1] = pair_rank(parts[at - 1], parts[at]);
  }
  out.insert(out.end(), parts.begin(), parts.begin() + m);
}

// The same merges for a long piece (a long word, a run of spaces) in O(n log n): a doubly linked
// list of parts and a min-heap of (rank, position) over adjacent pairs; entries made stale by an
// earlier merge are skipped when popped. Positions grow along the list, so the smallest
// (rank, position) is the leftmost lowest-ranked pair, as in the quadratic scan.
void BPE::encode_long_piece(const uint8_t* p, size_t n, std::vector<uint32_t>& out) const {
  struct Cand {
    uint32_t rank, pos, left, right;
    bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::vector<uint32_t> tok(n), next(n), prev(n);
  std::vector<Cand> heap;
  heap.reserve(n);
  for (size_t i = 0; i < n; ++i) tok[i] = byte_rank_[p[i]], next[i] = uint32_t(i + 1), prev[i] = uint32_t(i - 1);
  const uint32_t end = uint32_t(n);
  auto push = [&](uint32_t i) {
    if (i == end || next[i] == end) return;
    auto it = merge_.find(key(tok[i], tok[next[i]]));
    if (it == merge_.end()) return;
    heap.push_back({it->second, i, tok[i], tok[next[i]]});
    std::push_heap(heap.begin(), heap.end(), std::greater<Cand>());
  };
  std::vector<bool> alive(n, true);
  for (uint32_t i = 0; i + 1 < n; ++i) push(i);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), std::greater<Cand>());
    Cand c = heap.back();
    heap.pop_back();
    uint32_t i = c.pos;
    if (!alive[i] || next[i] == end || tok[i] != c.left || tok[next[i]] != c.right) continue;
    uint32_t j = next[i];
    tok[i] = c.rank;
    alive[j] = false;
    next[i] = next[j];
    if (next[j] != end) prev[next[j]] = i;
    push(i);
    if (i != 0) push(prev[i]);
  }
  for (uint32_t i = 0; i != end; i = next[i]) out.push_back(tok[i]);
}

void BPE::encode_range(const uint8_t* s, size_t n, size_t b, size_t e,
                       std::vector<uint32_t>& out) const {
  for_each_piece(pattern_, s, n, b, e, [&](size_t pb, size_t pe) { encode_piece(s + pb, pe - pb, out); });
}

std::vector<uint32_t> BPE::encode_ordinary(std::string_view text, bool parallel) const {
  const uint8_t* s = reinterpret_cast<const uint8_t*>(text.data());
  size_t n = text.size();
  std::vector<uint32_t> out;
  if (!parallel || n < 2 * kParallelChunk || num_threads() <= 1) {
    out.reserve(n / 3);
    encode_range(s, n, 0, n, out);
    return out;
  }
  std::vector<size_t> cuts{0};
  while (cuts.back() < n) cuts.push_back(safe_cut(s, n, cuts.back() + kParallelChunk));
  size_t parts = cuts.size() - 1;
  std::vector<std::vector<uint32_t>> res(parts);
  parallel_for(0, int64_t(parts), 1, [&](int64_t b, int64_t e) {
    for (int64_t k = b; k < e; ++k) {
      res[k].reserve((cuts[k + 1] - cuts[k]) / 3);
      encode_range(s, n, cuts[k], cuts[k + 1], res[k]);
    }
  });
  size_t total = 0;
  for (auto& r : res) total += r.size();
  out.reserve(total);
  for (auto& r : res) out.insert(out.end(), r.begin(), r.end());
  return out;
}

std::vector<uint32_t> BPE::encode(std::string_view text, const std::vector<std::string>& allowed) const {
  std::vector<std::pair<std::string_view, uint32_t>> sp;
  for (auto& a : allowed) {
    bool found = false;
    for (auto& [s, id] : specials_)
      if (s == a) sp.emplace_back(s, id), found = true;
    LS_CHECK(found, ValueError, "tokenizer: '", a, "' is not a special token of this tokenizer");
  }
  if (sp.empty()) return encode_ordinary(text);
  std::vector<uint32_t> out;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t best = std::string_view::npos, best_len = 0;
    uint32_t best_id = 0;
    for (auto& [s, id] : sp) {  // earliest occurrence, the longest special on ties
      size_t f = text.find(s, pos);
      if (f == std::string_view::npos) continue;
      if (f < best || (f == best && s.size() > best_len)) best = f, best_len = s.size(), best_id = id;
    }
    size_t stop = best == std::string_view::npos ? text.size() : best;
    auto part = encode_ordinary(text.substr(pos, stop - pos));
    out.insert(out.end(), part.begin(), part.end());
    if (best == std::string_view::npos) break;
    out.push_back(best_id);
    pos = best + best_len;
  }
  return out;
}

std::vector<std::vector<uint32_t>> BPE::encode_batch(const std::vector<std::string>& texts,
                                                     const std::vector<std::string>& allowed) const {
  std::vector<std::vector<uint32_t>> out(texts.size());
  parallel_for(0, int64_t(texts.size()), 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) out[i] = encode(texts[i], allowed);
  });
  return out;
}

std::string BPE::decode_bytes(const uint32_t* ids, size_t n) const {
  std::string out;
  for (size_t i = 0; i < n; ++i) {
    uint32_t id = ids[i];
    if (id < tokens_.size()) {
      out += tokens_[id];
      continue;
    }
    auto it = special_of_.find(id);
    LS_CHECK(it != special_of_.end(), ValueError, "decode: id ", id, " at position ", i,
             " is not a token (vocabulary size ", vocab_size(), ")");
    out += it->second;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// training

namespace {

bool read_file(const std::string& path, std::string& out) {
  std::unique_ptr<FILE, int (*)(FILE*)> f(std::fopen(path.c_str(), "rb"), &std::fclose);
  if (!f) return false;
  char buf[1 << 16];
  size_t got;
  while ((got = std::fread(buf, 1, sizeof buf, f.get())) > 0) out.append(buf, got);
  return !std::ferror(f.get());
}

using Counts = std::unordered_map<std::string, int64_t>;

void count_pieces(Pattern p, const std::string& text, size_t b, size_t e, Counts& c) {
  const uint8_t* s = reinterpret_cast<const uint8_t*>(text.data());
  for_each_piece(p, s, text.size(), b, e, [&](size_t pb, size_t pe) {
    ++c[std::string(text.data() + pb, pe - pb)];
  });
}

struct HeapItem {
  int64_t count;
  uint64_t pair;
  bool operator<(const HeapItem& o) const {  // max-heap: larger count, then smaller pair first
    return count != o.count ? count < o.count : pair > o.pair;
  }
};

}  // namespace

std::vector<std::string> train_bpe(const std::vector<std::string>& texts,
                                   const std::vector<std::string>& paths, const TrainOptions& opt) {
  LS_CHECK(opt.vocab_size >= 256, ValueError, "train: vocab_size must be at least 256 (+ specials), got ",
           opt.vocab_size);
  // 1. count pieces: one task per document (long documents split at safe cuts)
  struct Task { int doc; size_t b, e; };
  std::vector<std::string> file_texts(paths.size());
  parallel_for(0, int64_t(paths.size()), 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i)
      if (!read_file(paths[i], file_texts[i]))
        throw ValueError(cat("train: cannot read '", paths[i], "'"));
  });
  auto doc = [&](int i) -> const std::string& {
    return size_t(i) < texts.size() ? texts[i] : file_texts[i - texts.size()];
  };
  std::vector<Task> tasks;
  for (int i = 0; i < int(texts.size() + paths.size()); ++i) {
    const std::string& t = doc(i);
    const uint8_t* s = reinterpret_cast<const uint8_t*>(t.data());
    size_t b = 0;
    while (b < t.size()) {
      size_t e = safe_cut(s, t.size(), b + kParallelChunk);
      tasks.push_back({i, b, e});
      b = e;
    }
  }
  std::mutex mu;
  std::vector<Counts> partial;
  parallel_for(0, int64_t(tasks.size()), 1, [&](int64_t b, int64_t e) {
    Counts c;
    for (int64_t k = b; k < e; ++k) count_pieces(opt.pattern, doc(tasks[k].doc), tasks[k].b, tasks[k].e, c);
    std::lock_guard<std::mutex> g(mu);
    partial.push_back(std::move(c));
  });
  Counts counts;
  for (auto& c : partial) {
    if (counts.empty()) counts = std::move(c);
    else for (auto& [k, v] : c) counts[k] += v;
  }
  partial.clear();
  // Pieces in byte order, so word indices (and everything after) do not depend on threads.
  std::vector<std::pair<std::string, int64_t>> sorted(counts.begin(), counts.end());
  counts.clear();
  std::sort(sorted.begin(), sorted.end());

  // 2. merges
  std::vector<std::string> vocab(256);
  for (int b = 0; b < 256; ++b) vocab[b] = std::string(1, char(b));
  std::unordered_map<std::string, uint32_t> id_of;
  for (int b = 0; b < 256; ++b) id_of[vocab[b]] = b;

  std::vector<std::vector<uint32_t>> words;
  std::vector<int64_t> freq;
  words.reserve(sorted.size());
  for (auto& [w, c] : sorted) {
    if (w.size() < 2) continue;  // a single byte has no pair
    words.emplace_back(w.begin(), w.end());
    for (auto& x : words.back()) x = uint8_t(x);
    freq.push_back(c);
  }
  sorted.clear();
  sorted.shrink_to_fit();

  std::unordered_map<uint64_t, int64_t> pair_count;
  std::unordered_map<uint64_t, std::vector<uint32_t>> where;
  for (uint32_t w = 0; w < words.size(); ++w) {
    auto& wd = words[w];
    for (size_t i = 0; i + 1 < wd.size(); ++i) {
      uint64_t k = key(wd[i], wd[i + 1]);
      pair_count[k] += freq[w];
      auto& v = where[k];
      if (v.empty() || v.back() != w) v.push_back(w);
    }
  }
  std::priority_queue<HeapItem> heap;
  {
    std::vector<HeapItem> items;
    items.reserve(pair_count.size());
    for (auto& [k, c] : pair_count) items.push_back({c, k});
    heap = std::priority_queue<HeapItem>(std::less<HeapItem>(), std::move(items));
  }
  std::vector<uint32_t> seen(words.size(), 0);
  std::unordered_map<uint64_t, int64_t> delta;
  std::vector<uint32_t> merged;
  uint32_t step = 0;
  while (vocab.size() < opt.vocab_size && !heap.empty()) {
    HeapItem top = heap.top();
    heap.pop();
    auto pc = pair_count.find(top.pair);
    if (pc == pair_count.end() || pc->second != top.count || top.count <= 0) continue;  // stale
    uint32_t a = uint32_t(top.pair >> 32), b = uint32_t(top.pair);
    std::string bytes = vocab[a] + vocab[b];
    uint32_t id;
    auto existing = id_of.find(bytes);
    if (existing != id_of.end()) {
      id = existing->second;  // the same bytes reached by another split: no new token
    } else {
      id = uint32_t(vocab.size());
      vocab.push_back(bytes);
      id_of.emplace(std::move(bytes), id);
    }
    ++step;
    delta.clear();
    std::vector<uint32_t> list = std::move(where[top.pair]);
    where.erase(top.pair);
    for (uint32_t w : list) {
      if (seen[w] == step) continue;
      seen[w] = step;
      auto& wd = words[w];
      merged.clear();
      bool hit = false;
      for (size_t i = 0; i < wd.size(); ++i) {
        if (i + 1 < wd.size() && wd[i] == a && wd[i + 1] == b) {
          merged.push_back(id);
          ++i;
          hit = true;
        } else {
          merged.push_back(wd[i]);
        }
      }
      if (!hit) continue;
      const int64_t f = freq[w];
      for (size_t i = 0; i + 1 < wd.size(); ++i) delta[key(wd[i], wd[i + 1])] -= f;
      for (size_t i = 0; i + 1 < merged.size(); ++i) {
        uint64_t k = key(merged[i], merged[i + 1]);
        delta[k] += f;
        if (merged[i] == id || merged[i + 1] == id) {
          auto& v = where[k];
          if (v.empty() || v.back() != w) v.push_back(w);
        }
      }
      wd.swap(merged);
    }
    for (auto& [k, d] : delta) {
      if (d == 0) continue;
      int64_t& c = pair_count[k];
      c += d;
      if (c > 0) heap.push({c, k});
      else pair_count.erase(k);
    }
    pair_count.erase(top.pair);
  }
  return vocab;
}

}  // namespace ls::tok
