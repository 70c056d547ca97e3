#include "tests/server/fake_model_runner.h"

#include "absl/time/clock.h"
#include "model/status_macros.h"

namespace mor::testing {

ModelConfig FakeModelRunner::DefaultConfig() {
  ModelConfig c;
  c.model_type = "mor";
  c.hidden_size = 8;
  c.intermediate_size = 16;
  c.num_recursions = 3;
  c.num_hidden_layers = 3;
  c.num_attention_heads = 2;
  c.num_key_value_heads = 1;
  c.head_dim = 4;
  c.vocab_size = 16;
  c.max_position_embeddings = 64;
  c.eos_token_ids = {15};
  c.sharing = SharingStrategy::kCycle;
  return c;
}

FakeModelRunner::FakeModelRunner(ModelConfig config, int32_t block_size, int64_t num_blocks)
    : config_(std::move(config)) {
  geometry_.block_size = block_size;
  geometry_.block_layers = 1;
  geometry_.num_depth_levels = config_.num_recursions;
  geometry_.num_kv_heads = 1;
  geometry_.head_dim = 4;
  geometry_.num_depth_blocks = num_blocks;
}

absl::StatusOr<StepResult> FakeModelRunner::Step(std::span<const SequenceChunk> chunks,
                                                 KvBlockAllocator& allocator) {
  absl::SleepFor(absl::Nanoseconds(step_delay_ns_.load()));
  const int64_t vocab = config_.vocab_size;
  StepResult result;
  result.vocab_size = vocab;
  result.stats.token_steps_per_depth.assign(config_.num_recursions, 0);
  for (const SequenceChunk& chunk : chunks) {
    if (chunk.kv->depths[0].num_tokens != chunk.start_position) {
      return absl::InvalidArgumentError("start_position does not match the KV cache");
    }
    const int depth = chunk.policy.adaptive() ? adaptive_depth : chunk.policy.fixed_depth;
    for (int32_t token : chunk.tokens) {
      if (token < 0 || token >= vocab) return absl::InvalidArgumentError("token outside vocab");
      for (int r = 1; r <= depth; ++r) {
        KvTable& table = chunk.kv->depths[r - 1];
        if (table.num_tokens == static_cast<int32_t>(table.blocks.size()) * geometry_.block_size) {
          MOR_ASSIGN_OR_RETURN(int32_t block, allocator.Allocate(KvPool::kDepth, r));
          table.blocks.push_back(block);
        }
        ++table.num_tokens;
        ++result.stats.token_steps_per_depth[r - 1];
      }
      result.token_depth.push_back(static_cast<int8_t>(depth));
    }
    result.logits_row.push_back(static_cast<int32_t>(result.logits.size() / vocab));
    const int32_t last = chunk.tokens.back();
    for (int64_t t = 0; t < vocab; ++t) {
      // 0 for last + 1, then decreasing with the distance after it.
      const int64_t distance = ((t - last - 1) % vocab + vocab) % vocab;
      result.logits.push_back(-static_cast<float>(distance));
    }
  }
  return result;
}

}  // namespace mor::testing
