// Writes a tiny random MoR model directory (config.json + model.safetensors)
// from C++, so the server tests need no Python.
#ifndef MOR_TESTS_SERVER_TINY_MODEL_H_
#define MOR_TESTS_SERVER_TINY_MODEL_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "model/model_config.h"

namespace mor::testing {

// middle_cycle, expert-choice linear routers, recursion-wise KV, Nr = 3,
// block of one layer: L = 2 + 3. d = 32, 4 heads, 2 KV heads.
ModelConfig TinyMorConfig(int64_t vocab_size = 97, int64_t max_context = 1024,
                          std::vector<int64_t> eos_token_ids = {2});

// Creates `dir` (parents too) with random weights drawn from `seed`.
absl::Status WriteTinyMorModel(const std::string& dir, const ModelConfig& config,
                               uint64_t seed = 1);

}  // namespace mor::testing

#endif  // MOR_TESTS_SERVER_TINY_MODEL_H_
