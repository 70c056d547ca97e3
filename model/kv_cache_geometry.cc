#include "model/kv_cache_types.h"
#include "model/model_config.h"

namespace mor {

KvCacheGeometry MakeKvCacheGeometry(const ModelConfig& config, int32_t block_size,
                                    int32_t dtype_bytes) {
  const LayerPlan plan = config.MakeLayerPlan();
  KvCacheGeometry geometry;
  geometry.block_size = block_size;
  geometry.num_unique_layers = plan.num_unique_layers;
  geometry.block_layers = plan.block_layers;
  geometry.num_depth_levels =
      config.kv_mode == KvMode::kRecursiveSharing ? 1 : config.num_recursions;
  geometry.num_kv_heads = static_cast<int32_t>(config.num_key_value_heads);
  geometry.head_dim = static_cast<int32_t>(config.head_dim);
  geometry.dtype_bytes = dtype_bytes;
  return geometry;
}

int32_t DTypeBytes(const std::string& dtype) {
  if (dtype == "float32" || dtype == "fp32") return 4;
  if (dtype == "bfloat16" || dtype == "bf16" || dtype == "float16" || dtype == "fp16") return 2;
  return 0;
}

}  // namespace mor
