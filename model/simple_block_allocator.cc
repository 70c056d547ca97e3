#include "model/simple_block_allocator.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace mor {

SimpleBlockAllocator::SimpleBlockAllocator(const KvCacheGeometry& geometry) {
  const int64_t capacity[2] = {geometry.num_unique_blocks, geometry.num_depth_blocks};
  for (int pool = 0; pool < 2; ++pool) {
    // Highest id first so that Allocate hands out 1, 2, 3, ...
    for (int64_t id = capacity[pool] - 1; id >= 1; --id) {
      free_[pool].push_back(static_cast<int32_t>(id));
    }
  }
}

absl::StatusOr<int32_t> SimpleBlockAllocator::Allocate(KvPool pool, int depth) {
  std::vector<int32_t>& list = free_[Index(pool)];
  if (list.empty()) {
    return absl::ResourceExhaustedError(absl::StrCat("no free KV block in the ",
                                                     pool == KvPool::kUnique ? "unique" : "depth",
                                                     " pool (requested for depth ", depth, ")"));
  }
  int32_t id = list.back();
  list.pop_back();
  return id;
}

void SimpleBlockAllocator::Release(SequenceKv& kv) {
  for (int32_t id : kv.unique.blocks) free_[Index(KvPool::kUnique)].push_back(id);
  kv.unique = KvTable{};
  for (KvTable& table : kv.depths) {
    for (int32_t id : table.blocks) free_[Index(KvPool::kDepth)].push_back(id);
    table = KvTable{};
  }
}

}  // namespace mor
