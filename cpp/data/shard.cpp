#include "data/shard.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <vector>

#include <sys/stat.h>
#include <unistd.h>

#include "core/error.h"

namespace ls::data {

ShardInfo read_shard_info(const std::string& path) {
  struct stat st;
  LS_CHECK(::stat(path.c_str(), &st) == 0, ValueError, "shard '", path, "': cannot open (",
           std::strerror(errno), ")");
  std::unique_ptr<FILE, int (*)(FILE*)> f(std::fopen(path.c_str(), "rb"), &std::fclose);
  LS_CHECK(f, ValueError, "shard '", path, "': cannot open (", std::strerror(errno), ")");
  int32_t h[kShardHeaderInts];
  size_t got = std::fread(h, 4, kShardHeaderInts, f.get());
  LS_CHECK(got == size_t(kShardHeaderInts), ValueError, "shard '", path, "': truncated header (",
           int64_t(st.st_size), " bytes, the header alone is ", kShardHeaderBytes, ")");
  ShardInfo info;
  if (h[0] == kShardMagicU16) {
    LS_CHECK(h[1] == kShardVersionU16, ValueError, "shard '", path, "': version ", h[1],
             " with magic ", h[0], " (expected ", kShardVersionU16, ")");
    info.token_bytes = 2;
  } else if (h[0] == kShardMagicU32) {
    LS_CHECK(h[1] == kShardVersionU32, ValueError, "shard '", path, "': version ", h[1],
             " with magic ", h[0], " (expected ", kShardVersionU32, ")");
    info.token_bytes = 4;
  } else {
    throw ValueError(cat("shard '", path, "': bad magic number ", h[0], " (expected ", kShardMagicU16,
                         " for uint16 tokens or ", kShardMagicU32, " for uint32)"));
  }
  info.num_tokens = h[2];
  LS_CHECK(info.num_tokens >= 0, ValueError, "shard '", path, "': negative token count ", info.num_tokens);
  int64_t expect = kShardHeaderBytes + info.num_tokens * info.token_bytes;
  LS_CHECK(int64_t(st.st_size) == expect, ValueError, "shard '", path, "': header says ",
           info.num_tokens, " tokens of ", info.token_bytes, " bytes (file of ", expect,
           " bytes) but the file has ", int64_t(st.st_size), " bytes",
           int64_t(st.st_size) < expect ? " (truncated)" : "");
  return info;
}

ShardInfo write_shard(const std::string& path, const uint32_t* tokens, int64_t n, int token_bytes) {
  LS_CHECK(n >= 0 && n <= INT32_MAX, ValueError, "write_shard: token count ", n,
           " does not fit the header's int32");
  uint32_t mx = 0;
  for (int64_t i = 0; i < n; ++i) mx = tokens[i] > mx ? tokens[i] : mx;
  if (token_bytes == 0) token_bytes = mx < 65536 ? 2 : 4;
  LS_CHECK(token_bytes == 2 || token_bytes == 4, ValueError, "write_shard: token_bytes must be 2 or 4, got ",
           token_bytes);
  LS_CHECK(token_bytes == 4 || mx < 65536, ValueError, "write_shard: token ", mx,
           " does not fit uint16 (use token_bytes=4)");
  int32_t h[kShardHeaderInts] = {};
  h[0] = token_bytes == 2 ? kShardMagicU16 : kShardMagicU32;
  h[1] = token_bytes == 2 ? kShardVersionU16 : kShardVersionU32;
  h[2] = int32_t(n);
  std::string tmp = cat(path, ".tmp.", int64_t(::getpid()));
  FILE* f = std::fopen(tmp.c_str(), "wb");
  LS_CHECK(f, ValueError, "write_shard: cannot create '", tmp, "' (", std::strerror(errno), ")");
  bool ok = std::fwrite(h, 4, kShardHeaderInts, f) == size_t(kShardHeaderInts);
  if (token_bytes == 4) {
    ok = ok && std::fwrite(tokens, 4, n, f) == size_t(n);
  } else {
    std::vector<uint16_t> buf;
    for (int64_t i = 0; ok && i < n; i += 1 << 16) {
      int64_t m = std::min<int64_t>(n - i, 1 << 16);
      buf.assign(tokens + i, tokens + i + m);
      ok = std::fwrite(buf.data(), 2, m, f) == size_t(m);
    }
  }
  ok = (std::fflush(f) == 0) && ok;
  ok = (::fsync(fileno(f)) == 0) && ok;
  ok = (std::fclose(f) == 0) && ok;
  if (!ok || std::rename(tmp.c_str(), path.c_str()) != 0) {
    int err = errno;
    std::remove(tmp.c_str());
    throw ValueError(cat("write_shard: writing '", path, "' failed (", std::strerror(err), ")"));
  }
  ShardInfo info;
  info.num_tokens = n;
  info.token_bytes = token_bytes;
  return info;
}

}  // namespace ls::data
