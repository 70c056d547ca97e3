// Writes small random checkpoints (config.json + model.safetensors) from C++
// so model tests do not depend on the Python tools. Weights follow
// docs/model-format.md; values are deterministic for a given seed.
#ifndef MOR_TESTS_MODEL_TINY_MODEL_H_
#define MOR_TESTS_MODEL_TINY_MODEL_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"

namespace mor::testing {

struct TinyModelOptions {
  // "none" (vanilla, HF Llama names) or "middle_cycle" (expert choice).
  std::string sharing = "middle_cycle";
  int num_recursions = 3;
  int block_layers = 2;
  int hidden_size = 32;
  int num_heads = 4;
  int num_kv_heads = 2;
  int intermediate_size = 64;
  int vocab_size = 128;
  int max_position_embeddings = 256;
  uint64_t seed = 1;
  // Fault injection for loader tests.
  std::string omit_tensor;         // not written at all
  std::string wrong_shape_tensor;  // written with one extra row
};

absl::Status WriteTinyModel(const std::string& dir, const TinyModelOptions& options);

}  // namespace mor::testing

#endif  // MOR_TESTS_MODEL_TINY_MODEL_H_
