// A fixed pool of KV cache block ids with reference counts (the bookkeeping
// half of a paged KV pool; the tensors live in model/).
//
// Ids are [0, num_blocks). Block 0 is the null block: reserved, never handed
// out, never released (the model pads tables with it). Free blocks sit on a
// LIFO stack, so Allocate and the final Release are O(1) and a freshly
// released block is reused first. Ref counts let a block be shared by several
// tables (future prefix sharing): Retain adds an owner, Release drops one and
// returns the block to the free stack when the last owner lets go.
//
// Misuse (Release/Retain of a free, reserved or out-of-range id) returns an
// error Status and changes nothing.
//
// Threading: not thread-safe; owned and used by the engine thread.
#ifndef MOR_SCHEDULER_BLOCK_POOL_H_
#define MOR_SCHEDULER_BLOCK_POOL_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace mor {

class BlockPool {
 public:
  static constexpr int32_t kNullBlock = 0;

  // A pool with ids [0, num_blocks); capacity() = num_blocks - 1 usable blocks.
  // num_blocks <= 1 gives an empty pool (every Allocate fails).
  explicit BlockPool(int32_t num_blocks);

  // Takes a free block (ref count 1); ResourceExhausted when none is free.
  absl::StatusOr<int32_t> Allocate();
  // Adds an owner to an allocated block.
  absl::Status Retain(int32_t id);
  // Drops an owner; the block returns to the free stack at ref count 0.
  absl::Status Release(int32_t id);

  // Owners of `id`: 0 for free, reserved and out-of-range ids.
  int32_t ref_count(int32_t id) const;
  bool is_allocated(int32_t id) const { return ref_count(id) > 0; }

  int32_t num_blocks() const { return static_cast<int32_t>(ref_counts_.size()); }
  // Usable blocks (excludes the null block); num_free() + num_used() == capacity().
  int64_t capacity() const { return num_blocks() > 0 ? num_blocks() - 1 : 0; }
  int64_t num_free() const { return static_cast<int64_t>(free_.size()); }
  int64_t num_used() const { return capacity() - num_free(); }

 private:
  absl::Status CheckAllocated(int32_t id, const char* op) const;

  std::vector<int32_t> ref_counts_;  // per id; 0 = free (or the null block)
  std::vector<int32_t> free_;        // stack of free ids, top = back
};

}  // namespace mor

#endif  // MOR_SCHEDULER_BLOCK_POOL_H_
