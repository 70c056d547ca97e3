// A minimal free-list KvBlockAllocator over the two pools, for model tests and
// benchmarks that run without the scheduler. Block 0 of each pool is reserved.
#ifndef MOR_MODEL_SIMPLE_BLOCK_ALLOCATOR_H_
#define MOR_MODEL_SIMPLE_BLOCK_ALLOCATOR_H_

#include <cstdint>
#include <vector>

#include "model/kv_cache_types.h"

namespace mor {

class SimpleBlockAllocator : public KvBlockAllocator {
 public:
  explicit SimpleBlockAllocator(const KvCacheGeometry& geometry);

  absl::StatusOr<int32_t> Allocate(KvPool pool, int depth) override;
  // Returns every block of `kv` to its pool and clears the tables.
  void Release(SequenceKv& kv);

  int64_t num_free(KvPool pool) const { return static_cast<int64_t>(free_[Index(pool)].size()); }

 private:
  static int Index(KvPool pool) { return pool == KvPool::kUnique ? 0 : 1; }
  std::vector<int32_t> free_[2];
};

}  // namespace mor

#endif  // MOR_MODEL_SIMPLE_BLOCK_ALLOCATOR_H_
