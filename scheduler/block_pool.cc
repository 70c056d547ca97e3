#include "scheduler/block_pool.h"

#include <limits>

#include "absl/strings/str_cat.h"

namespace mor {

BlockPool::BlockPool(int32_t num_blocks) {
  if (num_blocks <= 0) return;
  ref_counts_.assign(num_blocks, 0);
  free_.reserve(num_blocks - 1);
  // Highest id at the bottom so that Allocate hands out 1, 2, 3, ...
  for (int32_t id = num_blocks - 1; id > kNullBlock; --id) free_.push_back(id);
}

absl::StatusOr<int32_t> BlockPool::Allocate() {
  if (free_.empty()) {
    return absl::ResourceExhaustedError(
        absl::StrCat("all ", capacity(), " blocks of the pool are in use"));
  }
  const int32_t id = free_.back();
  free_.pop_back();
  ref_counts_[id] = 1;
  return id;
}

absl::Status BlockPool::CheckAllocated(int32_t id, const char* op) const {
  if (id < 0 || id >= num_blocks()) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, " of block ", id, ": outside the pool's ids [0, ", num_blocks(), ")"));
  }
  if (id == kNullBlock) {
    return absl::InvalidArgumentError(absl::StrCat(op, " of the reserved null block 0"));
  }
  if (ref_counts_[id] == 0) {
    return absl::FailedPreconditionError(absl::StrCat(op, " of block ", id, ", which is free"));
  }
  return absl::OkStatus();
}

absl::Status BlockPool::Retain(int32_t id) {
  if (absl::Status status = CheckAllocated(id, "Retain"); !status.ok()) return status;
  if (ref_counts_[id] == std::numeric_limits<int32_t>::max()) {
    return absl::OutOfRangeError(absl::StrCat("Retain of block ", id, ": ref count overflow"));
  }
  ++ref_counts_[id];
  return absl::OkStatus();
}

absl::Status BlockPool::Release(int32_t id) {
  if (absl::Status status = CheckAllocated(id, "Release"); !status.ok()) return status;
  if (--ref_counts_[id] == 0) free_.push_back(id);
  return absl::OkStatus();
}

int32_t BlockPool::ref_count(int32_t id) const {
  if (id <= kNullBlock || id >= num_blocks()) return 0;
  return ref_counts_[id];
}

}  // namespace mor
