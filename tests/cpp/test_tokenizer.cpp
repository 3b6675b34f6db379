// The pre-tokenizers on hand-picked cases (checked against Python's `regex` with the same
// patterns), BPE encode/decode on a small trained vocabulary, training determinism, and the
// llm.c shard format (round trip, corrupted files rejected with a message).
#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/parallel.h"
#include "data/shard.h"
#include "tokenizer/bpe.h"
#include "tokenizer/pretokenize.h"
#include "tokenizer/unicode.h"

using namespace ls;
using namespace ls::tok;

namespace {

std::vector<std::string> pieces(Pattern p, const std::string& s) {
  std::vector<std::string> out;
  const uint8_t* b = reinterpret_cast<const uint8_t*>(s.data());
  for_each_piece(p, b, s.size(), 0, s.size(), [&](size_t i, size_t j) { out.push_back(s.substr(i, j - i)); });
  return out;
}

using V = std::vector<std::string>;

}  // namespace

TEST(TokenizerUnicode, Classes) {
  EXPECT_EQ(classify('a'), kLetter);
  EXPECT_EQ(classify('7'), kNumber);
  EXPECT_EQ(classify(' '), kSpace);
  EXPECT_EQ(classify('!'), kOther);
  EXPECT_EQ(classify(0x65E5), kLetter);   // 日
  EXPECT_EQ(classify(0x0661), kNumber);   // Arabic-Indic one
  EXPECT_EQ(classify(0x00BD), kNumber);   // ½ (No)
  EXPECT_EQ(classify(0x2160), kNumber);   // Ⅰ (Nl)
  EXPECT_EQ(classify(0x0301), kOther);    // combining acute (Mn)
  EXPECT_EQ(classify(0x3000), kSpace);
  EXPECT_EQ(classify(0x1C), kOther);      // not White_Space
  EXPECT_EQ(classify(0x1F600), kOther);   // emoji
}

TEST(TokenizerUnicode, DecodeInvalid) {
  const uint8_t bad[] = {0xC3, 0x28, 0xE2, 0x82, 0xF0, 0x9F, 0x98, 0x80};
  EXPECT_EQ(decode_utf8(bad, 8, 0).len, 1u);
  EXPECT_EQ(decode_utf8(bad, 8, 2).len, 1u);
  EXPECT_EQ(decode_utf8(bad, 8, 4).cp, 0x1F600u);
  EXPECT_EQ(decode_utf8(bad, 8, 4).len, 4u);
}

TEST(TokenizerSplit, Gpt2) {
  EXPECT_EQ(pieces(Pattern::GPT2, "Hello world, it's   a test!\n\n  foo"),
            (V{"Hello", " world", ",", " it", "'s", "  ", " a", " test", "!", "\n\n ", " foo"}));
  EXPECT_EQ(pieces(Pattern::GPT2, "I'M 12345 x  "), (V{"I", "'", "M", " 12345", " x", "  "}));
  EXPECT_EQ(pieces(Pattern::GPT2, "a\tb"), (V{"a", "\t", "b"}));
}

TEST(TokenizerSplit, Cl100k) {
  EXPECT_EQ(pieces(Pattern::CL100K, "Hello world, it's   a test!\n\n  foo"),
            (V{"Hello", " world", ",", " it", "'s", "  ", " a", " test", "!\n\n", " ", " foo"}));
  EXPECT_EQ(pieces(Pattern::CL100K, "a\tb"), (V{"a", "\tb"}));
  EXPECT_EQ(pieces(Pattern::CL100K, "I'M 12345 x  "), (V{"I", "'M", " ", "123", "45", " x", "  "}));
  EXPECT_EQ(pieces(Pattern::CL100K, "we'LL \xC5\xBF'\xC5\xBF"), (V{"we", "'LL", " \xC5\xBF", "'\xC5\xBF"}));
  EXPECT_EQ(pieces(Pattern::CL100K, "x \n \n  y"), (V{"x", " \n \n", " ", " y"}));
  EXPECT_EQ(pieces(Pattern::CL100K, " !"), (V{" !"}));
  // the current cl100k keeps a trailing run with a newline whole (\s++$); the original cuts it
  EXPECT_EQ(pieces(Pattern::CL100K, "x \n "), (V{"x", " \n "}));
  EXPECT_EQ(pieces(Pattern::CL100K_ORIGINAL, "x \n "), (V{"x", " \n", " "}));
  EXPECT_EQ(pieces(Pattern::CL100K_ORIGINAL, "we'LL x \n \n  y"), (V{"we", "'LL", " x", " \n \n", " ", " y"}));
}

TEST(TokenizerSplit, InvalidBytesAreOther) {
  std::string s = "ab\xFF\xFEz";
  EXPECT_EQ(pieces(Pattern::GPT2, s), (V{"ab", "\xFF\xFE", "z"}));
  EXPECT_EQ(pieces(Pattern::CL100K, s), (V{"ab", "\xFF\xFE", "z"}));
}

TEST(TokenizerBPE, TrainEncodeDecode) {
  std::vector<std::string> texts = {"the cat sat on the mat. the cat ate the rat.", "that thing there"};
  TrainOptions opt;
  opt.vocab_size = 270;
  auto vocab = train_bpe(texts, {}, opt);
  ASSERT_EQ(vocab.size(), 270u);
  // "at" and "th" both occur 7 times: the tie goes to the smaller (left, right) = ('a', 't')
  EXPECT_EQ(vocab[256], "at");
  EXPECT_EQ(vocab[257], "th");
  EXPECT_EQ(vocab[258], " th");
  opt.vocab_size = 1000;
  EXPECT_EQ(train_bpe(texts, {}, opt).size(), 279u);  // stops when no pair is left
  opt.vocab_size = 270;
  EXPECT_EQ(train_bpe(texts, {}, opt), vocab);  // deterministic
  BPE bpe(vocab, {{"<|eot|>", 280}}, Pattern::CL100K);  // ids may leave a gap
  std::string s = "the cat sat on the mat, then \xE6\x97\xA5\xF0\x9F\x98\x80!";
  auto ids = bpe.encode_ordinary(s);
  EXPECT_LT(ids.size(), s.size());
  EXPECT_EQ(bpe.decode_bytes(ids.data(), ids.size()), s);
  auto with = bpe.encode("a<|eot|>b", {"<|eot|>"});
  EXPECT_EQ(with.size(), 3u);
  EXPECT_EQ(with[1], 280u);
  uint32_t bad = 999;
  EXPECT_THROW(bpe.decode_bytes(&bad, 1), ValueError);
}

TEST(TokenizerBPE, SameVocabulary1And2Threads) {
  // long documents are cut at safe points and counted on several threads; the merges must not
  // depend on the thread count nor on how documents are grouped
  std::string doc;
  for (int i = 0; i < 70000; ++i) doc += cat("line ", i % 97, ": the value of x", i % 13, " is ", i * 7, "\n");
  ASSERT_GT(doc.size(), size_t(2) << 20);
  TrainOptions opt;
  opt.vocab_size = 600;
  const int before = num_threads();
  set_num_threads(1);
  auto one = train_bpe({doc}, {}, opt);
  set_num_threads(2);
  auto two = train_bpe({doc}, {}, opt);
  set_num_threads(before);
  EXPECT_EQ(one, two);
  BPE bpe(one, {}, Pattern::CL100K);
  auto par = bpe.encode_ordinary(doc, true), seq = bpe.encode_ordinary(doc, false);
  EXPECT_EQ(par, seq);
}

TEST(TokenizerBPE, RejectsBadVocab) {
  std::vector<std::string> v(255);
  for (int b = 0; b < 255; ++b) v[b] = std::string(1, char(b));
  EXPECT_THROW(BPE(v, {}, Pattern::GPT2), ValueError);  // byte 255 missing
  v.push_back(std::string(1, char(255)));
  v.push_back("a");  // duplicate
  EXPECT_THROW(BPE(v, {}, Pattern::GPT2), ValueError);
}

namespace {
std::string tmp_path(const char* name) { return cat(::testing::TempDir(), "/ls_shard_", name, ".bin"); }
void write_bytes(const std::string& p, const std::string& bytes) {
  FILE* f = std::fopen(p.c_str(), "wb");
  std::fwrite(bytes.data(), 1, bytes.size(), f);
  std::fclose(f);
}
std::string read_bytes(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}
std::string message_of(const std::string& p) {
  try {
    data::read_shard_info(p);
  } catch (const ValueError& e) {
    return e.what();
  }
  return "";
}
}  // namespace

TEST(Shard, RoundTripU16AndU32) {
  std::vector<uint32_t> t = {0, 1, 50256, 65535, 7};
  std::string p = tmp_path("u16");
  auto w = data::write_shard(p, t.data(), int64_t(t.size()));
  EXPECT_EQ(w.token_bytes, 2);
  auto info = data::read_shard_info(p);
  EXPECT_EQ(info.num_tokens, 5);
  EXPECT_EQ(info.token_bytes, 2);
  std::string b = read_bytes(p);
  ASSERT_EQ(b.size(), 1024u + 10u);
  int32_t h[3];
  std::memcpy(h, b.data(), 12);
  EXPECT_EQ(h[0], 20240520);
  EXPECT_EQ(h[1], 1);
  EXPECT_EQ(h[2], 5);
  uint16_t tok3;
  std::memcpy(&tok3, b.data() + 1024 + 6, 2);
  EXPECT_EQ(tok3, 65535);
  t.push_back(100000);
  std::string p4 = tmp_path("u32");
  EXPECT_EQ(data::write_shard(p4, t.data(), int64_t(t.size())).token_bytes, 4);
  EXPECT_EQ(data::read_shard_info(p4).token_bytes, 4);
  EXPECT_THROW(data::write_shard(p4, t.data(), int64_t(t.size()), 2), ValueError);
  EXPECT_EQ(data::read_shard_info(p4).num_tokens, 6);  // the failed write left the shard alone
  std::remove(p.c_str());
  std::remove(p4.c_str());
}

TEST(Shard, CorruptedRejected) {
  std::vector<uint32_t> t(100, 3);
  std::string p = tmp_path("bad");
  data::write_shard(p, t.data(), 100);
  std::string good = read_bytes(p);
  write_bytes(p, good.substr(0, good.size() - 2));
  EXPECT_NE(message_of(p).find("truncated"), std::string::npos) << message_of(p);
  write_bytes(p, good.substr(0, 100));
  EXPECT_NE(message_of(p).find("truncated header"), std::string::npos) << message_of(p);
  std::string bad = good;
  bad[0] = 1;
  write_bytes(p, bad);
  EXPECT_NE(message_of(p).find("bad magic"), std::string::npos) << message_of(p);
  write_bytes(p, good + "xx");
  EXPECT_NE(message_of(p).find("but the file has"), std::string::npos) << message_of(p);
  std::remove(p.c_str());
  EXPECT_NE(message_of(p).find("cannot open"), std::string::npos);
}
