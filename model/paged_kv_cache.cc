#include "model/paged_kv_cache.h"

namespace mor {

PagedKvCache::PagedKvCache(const KvCacheGeometry& geometry, at::ScalarType dtype, at::Device device)
    : geometry_(geometry) {
  const auto options = at::TensorOptions().dtype(dtype).device(device);
  const int64_t layers[2] = {geometry.num_unique_layers, geometry.block_layers};
  const int64_t blocks[2] = {geometry.num_unique_blocks, geometry.num_depth_blocks};
  for (int pool = 0; pool < 2; ++pool) {
    const int64_t slots = layers[pool] > 0 ? blocks[pool] * geometry.block_size : 0;
    k_[pool] = at::zeros({layers[pool], slots, geometry.num_kv_heads, geometry.head_dim}, options);
    v_[pool] = at::zeros({layers[pool], slots, geometry.num_kv_heads, geometry.head_dim}, options);
  }
}

int64_t PagedKvCache::bytes() const {
  int64_t total = 0;
  for (int pool = 0; pool < 2; ++pool) {
    total += k_[pool].nbytes() + v_[pool].nbytes();
  }
  return total;
}

}  // namespace mor
