// Where prompts come from: random token ids, or windows of a tokenized text
// corpus (e.g. the default model's validation text).
#ifndef MOR_BENCH_LOADGEN_PROMPT_SOURCE_H_
#define MOR_BENCH_LOADGEN_PROMPT_SOURCE_H_

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "proto/mor/v1/mor.grpc.pb.h"

namespace mor::loadgen {

class PromptSource {
 public:
  // Uniform token ids in [0, vocab_size).
  static PromptSource Random(int32_t vocab_size);

  // Windows of `tokens` at random offsets; fails when it is empty.
  static absl::StatusOr<PromptSource> FromTokens(std::vector<uint32_t> tokens,
                                                 std::string description);

  // Reads up to `max_bytes` of the text file at `path` (documents separated
  // by blank lines), tokenizes it with the server's Tokenize RPC, one call per
  // document, and returns the concatenated ids. FAILED_PRECONDITION when the
  // server has no tokenizer.
  static absl::StatusOr<PromptSource> FromTextFile(const std::string& path, int64_t max_bytes,
                                                   mor::v1::MorService::Stub& stub);

  // A prompt of `length` tokens (length >= 1). For a corpus, fails when the
  // corpus is shorter than `length`.
  absl::StatusOr<std::vector<uint32_t>> Make(int32_t length, std::mt19937_64& rng) const;

  // "random" or "<path> (<n> tokens)".
  const std::string& description() const { return description_; }

 private:
  PromptSource(int32_t vocab_size, std::vector<uint32_t> tokens, std::string description)
      : vocab_size_(vocab_size), tokens_(std::move(tokens)), description_(std::move(description)) {}

  int32_t vocab_size_ = 0;        // random source when tokens_ is empty
  std::vector<uint32_t> tokens_;  // corpus
  std::string description_;
};

}  // namespace mor::loadgen

#endif  // MOR_BENCH_LOADGEN_PROMPT_SOURCE_H_
