// Token shards in llm.c's .bin layout: a header of 256 int32 (magic, version, token count, the
// rest zero), then the tokens. uint16 tokens: magic 20240520, version 1 (GPT-2 style, vocabulary
// up to 65536); uint32 tokens: magic 20240801, version 7 (llm.c's layout for larger vocabularies).
// Shards are written atomically (a temporary file in the same folder, then rename), so a reader
// never sees a half-written shard under the final name.
#pragma once
#include <cstdint>
#include <string>

namespace ls::data {

constexpr int32_t kShardMagicU16 = 20240520, kShardVersionU16 = 1;
constexpr int32_t kShardMagicU32 = 20240801, kShardVersionU32 = 7;
constexpr int64_t kShardHeaderInts = 256;
constexpr int64_t kShardHeaderBytes = kShardHeaderInts * 4;

struct ShardInfo {
  int64_t num_tokens = 0;
  int token_bytes = 2;  // 2 (uint16) or 4 (uint32)
  int64_t data_offset = kShardHeaderBytes;
};

// Reads and validates the header against the file size; ValueError names the file and the fault
// (missing, short header, bad magic or version, a token count that disagrees with the size).
ShardInfo read_shard_info(const std::string& path);

// Writes n tokens. token_bytes 2 or 4; 0 picks 2 when every token is below 65536, else 4.
// ValueError when a token does not fit the chosen width.
ShardInfo write_shard(const std::string& path, const uint32_t* tokens, int64_t n, int token_bytes = 0);

}  // namespace ls::data
