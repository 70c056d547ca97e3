// Physical K/V storage of the two pools of kv_cache_types.h, as LibTorch
// tensors. Internal to model/.
//
// Each pool is one tensor per K and V shaped [layers, blocks * block_size,
// kv_heads, head_dim]: a block id b covers flat slots [b * block_size,
// (b + 1) * block_size) of every layer of the pool, so one block table serves
// all layers of a level and a layer's cache is a contiguous view.
#ifndef MOR_MODEL_PAGED_KV_CACHE_H_
#define MOR_MODEL_PAGED_KV_CACHE_H_

#include <ATen/ATen.h>

#include "model/kv_cache_types.h"

namespace mor {

class PagedKvCache {
 public:
  // Allocates both pools (zeroed) as `geometry` describes.
  PagedKvCache(const KvCacheGeometry& geometry, at::ScalarType dtype, at::Device device);

  const KvCacheGeometry& geometry() const { return geometry_; }

  // [blocks * block_size, kv_heads, head_dim] views of layer `layer` of `pool`.
  at::Tensor keys(KvPool pool, int layer) const { return k_[Index(pool)][layer]; }
  at::Tensor values(KvPool pool, int layer) const { return v_[Index(pool)][layer]; }

  // Total bytes held by both pools.
  int64_t bytes() const;

 private:
  static int Index(KvPool pool) { return pool == KvPool::kUnique ? 0 : 1; }
  KvCacheGeometry geometry_;
  at::Tensor k_[2];
  at::Tensor v_[2];
};

}  // namespace mor

#endif  // MOR_MODEL_PAGED_KV_CACHE_H_
