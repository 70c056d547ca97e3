#include "server/flops_estimate.h"

namespace mor {

int64_t BlockLinearParams(const ModelConfig& config) {
  const int64_t d = config.hidden_size;
  const int64_t head_dim =
      config.head_dim > 0 ? config.head_dim : config.hidden_size / config.num_attention_heads;
  const int64_t q = d * config.num_attention_heads * head_dim;
  const int64_t kv = 2 * d * config.num_key_value_heads * head_dim;
  const int64_t o = config.num_attention_heads * head_dim * d;
  const int64_t mlp = 3 * d * config.intermediate_size;
  const int64_t block_layers = config.MakeLayerPlan().block_layers;
  return block_layers * (q + kv + o + mlp);
}

double FlopsPerTokenRecursion(const ModelConfig& config) {
  return 2.0 * static_cast<double>(BlockLinearParams(config));
}

}  // namespace mor
