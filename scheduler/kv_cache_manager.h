// Design: recursion-wise accounting over two paged pools (mor-spec section 5).
//
// * One physical depth pool is shared by every recursion depth. A depth-pool
//   block holds the B layers of one recursion for block_size tokens, so every
//   depth's blocks have the same shape; each (sequence, depth) pair has its own
//   table drawn from this pool. A depth's usage is exactly the blocks its routed
//   tokens filled: memory never sits reserved for depths a request does not
//   reach, and no per-depth budget can strand free memory.
// * The unique pool holds the unique first/last layers of middle_* models: one
//   table per sequence covering every token. Every token takes recursion 1, so a
//   sequence's unique table always has exactly as many blocks as its depth-1
//   table; sizing the unique pool with as many blocks as the depth pool makes it
//   never the bottleneck. Cost: the unique pool takes num_unique_layers /
//   block_layers of the depth pool's bytes (part of which stays idle when tokens
//   recurse deeper than depth 1).
// * Recursive-sharing (and vanilla) models have one depth level: only depth 1.
//
// Per-depth counters are exact: each depth-pool block is tagged with the depth it
// was allocated for, and the tag's counter drops when the block returns to the pool.
//
// Threading: not thread-safe; owned by the engine thread, which also runs the
// model (the only caller of Allocate, during a step).
#ifndef MOR_SCHEDULER_KV_CACHE_MANAGER_H_
#define MOR_SCHEDULER_KV_CACHE_MANAGER_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "model/kv_cache_types.h"
#include "scheduler/block_pool.h"

namespace mor {

// Block counts of the two pools, each including the reserved null block
// (what KvCacheGeometry::num_*_blocks and ModelRunnerOptions expect).
struct KvPoolSizes {
  int64_t num_unique_blocks = 0;  // 0 when the model has no unique layers
  int64_t num_depth_blocks = 0;
  int64_t total_bytes = 0;  // K+V bytes of both pools
};

// Blocks a step (or a set of sequences) may need from each pool.
struct BlockDemand {
  int64_t unique_blocks = 0;
  int64_t depth_blocks = 0;

  BlockDemand& operator+=(const BlockDemand& other) {
    unique_blocks += other.unique_blocks;
    depth_blocks += other.depth_blocks;
    return *this;
  }
  friend BlockDemand operator+(BlockDemand a, const BlockDemand& b) { return a += b; }
  friend bool operator==(const BlockDemand&, const BlockDemand&) = default;
};

struct KvPoolUsage {
  int64_t capacity = 0;  // usable blocks (the null block excluded)
  int64_t used = 0;
  int64_t free = 0;
  int64_t bytes_per_block = 0;
};

struct KvUsage {
  KvPoolUsage unique;
  KvPoolUsage depth;
  // Index 0: the unique tables; index r in 1..num_depth_levels: depth r.
  std::vector<int64_t> used_blocks_per_depth;
  std::vector<int64_t> used_bytes_per_depth;
  // Blocks Free found in a table that were not allocated (a caller bug, e.g.
  // freeing a copy of a SequenceKv twice); they were skipped.
  int64_t invalid_releases = 0;
};

class KvCacheManager final : public KvBlockAllocator {
 public:
  // Splits `budget_bytes` so both pools get the same block count n (or only
  // the depth pool when there are no unique layers): n = budget / (bytes per
  // unique block + bytes per depth block), capped at 2^31 - 1 ids.
  // InvalidArgument for a bad geometry or when n < 2 (block 0 is reserved).
  static absl::StatusOr<KvPoolSizes> SizeFromBudget(const KvCacheGeometry& geometry,
                                                    int64_t budget_bytes);

  // Pools with `sizes` blocks (incl. the null block); the unique count is
  // ignored when the geometry has no unique layers. InvalidArgument for a bad
  // geometry or a pool outside [2, 2^31 - 1] blocks.
  static absl::StatusOr<std::unique_ptr<KvCacheManager>> Create(const KvCacheGeometry& geometry,
                                                                const KvPoolSizes& sizes);
  // Same, with the counts in geometry.num_unique_blocks / num_depth_blocks.
  static absl::StatusOr<std::unique_ptr<KvCacheManager>> Create(const KvCacheGeometry& geometry);

  // KvBlockAllocator: a block for the unique table (kUnique, depth 0) or the
  // depth-`depth` table (kDepth, 1..num_depth_levels). InvalidArgument for a
  // bad pool/depth pair, FailedPrecondition for kUnique without unique layers,
  // ResourceExhausted when the pool is full. O(1).
  absl::StatusOr<int32_t> Allocate(KvPool pool, int depth) override;

  // Returns every block of every table of `kv` to its pool and clears the
  // tables (kv.depths keeps its size, so `kv` can be reused). O(blocks of kv).
  void Free(SequenceKv& kv);

  // Empty tables for a new sequence: one per depth level.
  SequenceKv NewSequenceKv() const;

  // True if both pools have at least the demanded free blocks.
  bool CanAllocate(const BlockDemand& demand) const;

  // Blocks the tables of `kv` would need if all `new_tokens` reached every
  // depth 1..max_depth (and the unique table). max_depth is clamped to
  // [1, num_depth_levels] (recursive sharing writes depth 1 only). Tables
  // missing from kv.depths count as empty. O(num_depth_levels).
  BlockDemand WorstCaseDemand(const SequenceKv& kv, int64_t new_tokens, int max_depth) const;

  // Blocks `kv` holds (what Free would return if nothing is shared).
  static BlockDemand BlocksHeld(const SequenceKv& kv);

  // Pool totals and per-depth usage. O(num_depth_levels).
  KvUsage Usage() const;

  // The geometry, with num_*_blocks set to the pools' block counts.
  const KvCacheGeometry& geometry() const { return geometry_; }
  int64_t num_free_blocks(KvPool pool) const;
  const BlockPool& block_pool(KvPool pool) const {
    return pool == KvPool::kUnique ? unique_pool_ : depth_pool_;
  }

 private:
  KvCacheManager(const KvCacheGeometry& geometry, int32_t num_unique_blocks,
                 int32_t num_depth_blocks);
  void FreeTable(KvTable& table, KvPool pool);

  KvCacheGeometry geometry_;
  BlockPool unique_pool_;
  BlockPool depth_pool_;
  std::vector<int32_t> depth_of_block_;  // per depth-pool id: depth it was allocated for
  std::vector<int64_t> used_per_depth_;  // [0] unique, [r] depth r
  int64_t invalid_releases_ = 0;
};

}  // namespace mor

#endif  // MOR_SCHEDULER_KV_CACHE_MANAGER_H_
