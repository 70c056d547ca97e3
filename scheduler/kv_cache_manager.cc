#include "scheduler/kv_cache_manager.h"

#include <algorithm>
#include <limits>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "model/status_macros.h"

namespace mor {
namespace {

constexpr int64_t kMaxBlocks = std::numeric_limits<int32_t>::max();  // ids are int32

bool HasUniquePool(const KvCacheGeometry& g) { return g.num_unique_layers > 0; }

absl::Status ValidateGeometry(const KvCacheGeometry& g) {
  if (g.block_size < 1 || g.block_layers < 1 || g.num_depth_levels < 1 || g.num_unique_layers < 0 ||
      g.num_kv_heads < 1 || g.head_dim < 1 || g.dtype_bytes < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "invalid KV cache geometry: block_size ", g.block_size, ", block_layers ", g.block_layers,
        ", num_depth_levels ", g.num_depth_levels, ", num_unique_layers ", g.num_unique_layers,
        ", num_kv_heads ", g.num_kv_heads, ", head_dim ", g.head_dim, ", dtype_bytes ",
        g.dtype_bytes, " (all must be >= 1, num_unique_layers >= 0)"));
  }
  return absl::OkStatus();
}

int64_t BlocksFor(int64_t entries, int32_t block_size) {
  return (entries + block_size - 1) / block_size;
}

// Blocks `table` lacks to hold `new_entries` more entries.
int64_t TableDemand(const KvTable& table, int64_t new_entries, int32_t block_size) {
  const int64_t needed = BlocksFor(int64_t{table.num_tokens} + new_entries, block_size);
  return std::max<int64_t>(0, needed - static_cast<int64_t>(table.blocks.size()));
}

}  // namespace

absl::StatusOr<KvPoolSizes> KvCacheManager::SizeFromBudget(const KvCacheGeometry& geometry,
                                                           int64_t budget_bytes) {
  MOR_RETURN_IF_ERROR(ValidateGeometry(geometry));
  const int64_t unique_bytes = HasUniquePool(geometry) ? geometry.bytes_per_unique_block() : 0;
  const int64_t depth_bytes = geometry.bytes_per_depth_block();
  const int64_t bytes_per_pair = unique_bytes + depth_bytes;
  const int64_t n = std::min(kMaxBlocks, std::max<int64_t>(0, budget_bytes) / bytes_per_pair);
  if (n < 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("KV cache budget of ", budget_bytes,
                     " bytes is too small: each pool needs at least 2 "
                     "blocks (block 0 is reserved); a depth block takes ",
                     depth_bytes, " bytes and a unique block ", unique_bytes,
                     " bytes, so the minimum is ", 2 * bytes_per_pair, " bytes"));
  }
  KvPoolSizes sizes;
  sizes.num_unique_blocks = HasUniquePool(geometry) ? n : 0;
  sizes.num_depth_blocks = n;
  sizes.total_bytes = n * bytes_per_pair;
  return sizes;
}

absl::StatusOr<std::unique_ptr<KvCacheManager>> KvCacheManager::Create(
    const KvCacheGeometry& geometry, const KvPoolSizes& sizes) {
  MOR_RETURN_IF_ERROR(ValidateGeometry(geometry));
  auto check_count = [](int64_t blocks, const char* pool) -> absl::Status {
    if (blocks < 2 || blocks > kMaxBlocks) {
      return absl::InvalidArgumentError(absl::StrCat("the ", pool, " pool needs 2..", kMaxBlocks,
                                                     " blocks (block 0 is reserved), got ",
                                                     blocks));
    }
    return absl::OkStatus();
  };
  MOR_RETURN_IF_ERROR(check_count(sizes.num_depth_blocks, "depth"));
  int64_t unique_blocks = 0;
  if (HasUniquePool(geometry)) {
    MOR_RETURN_IF_ERROR(check_count(sizes.num_unique_blocks, "unique"));
    unique_blocks = sizes.num_unique_blocks;
  }
  return std::unique_ptr<KvCacheManager>(new KvCacheManager(
      geometry, static_cast<int32_t>(unique_blocks), static_cast<int32_t>(sizes.num_depth_blocks)));
}

absl::StatusOr<std::unique_ptr<KvCacheManager>> KvCacheManager::Create(
    const KvCacheGeometry& geometry) {
  KvPoolSizes sizes;
  sizes.num_unique_blocks = geometry.num_unique_blocks;
  sizes.num_depth_blocks = geometry.num_depth_blocks;
  return Create(geometry, sizes);
}

KvCacheManager::KvCacheManager(const KvCacheGeometry& geometry, int32_t num_unique_blocks,
                               int32_t num_depth_blocks)
    : geometry_(geometry),
      unique_pool_(num_unique_blocks),
      depth_pool_(num_depth_blocks),
      depth_of_block_(num_depth_blocks, 0),
      used_per_depth_(geometry.num_depth_levels + 1, 0) {
  geometry_.num_unique_blocks = num_unique_blocks;
  geometry_.num_depth_blocks = num_depth_blocks;
}

absl::StatusOr<int32_t> KvCacheManager::Allocate(KvPool pool, int depth) {
  const bool unique = pool == KvPool::kUnique;
  if (unique && depth != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("unique-pool KV block requested for depth ", depth, " (expected 0)"));
  }
  if (!unique && (depth < 1 || depth > geometry_.num_depth_levels)) {
    return absl::InvalidArgumentError(absl::StrCat("depth-pool KV block requested for depth ",
                                                   depth, " (expected 1..",
                                                   geometry_.num_depth_levels, ")"));
  }
  if (unique && !HasUniquePool(geometry_)) {
    return absl::FailedPreconditionError(
        "KV block requested from the unique pool, but the model has no unique layers");
  }
  BlockPool& blocks = unique ? unique_pool_ : depth_pool_;
  absl::StatusOr<int32_t> id = blocks.Allocate();
  if (!id.ok()) {
    return absl::ResourceExhaustedError(
        absl::StrCat("no free KV block in the ", unique ? "unique" : "depth", " pool (all ",
                     blocks.capacity(), " in use) for depth ", depth));
  }
  if (!unique) depth_of_block_[*id] = depth;
  ++used_per_depth_[depth];
  return *id;
}

void KvCacheManager::FreeTable(KvTable& table, KvPool pool) {
  BlockPool& blocks = pool == KvPool::kUnique ? unique_pool_ : depth_pool_;
  for (int32_t id : table.blocks) {
    if (!blocks.Release(id).ok()) {
      ++invalid_releases_;
      continue;
    }
    if (blocks.ref_count(id) == 0) {
      --used_per_depth_[pool == KvPool::kUnique ? 0 : depth_of_block_[id]];
    }
  }
  table = KvTable{};
}

void KvCacheManager::Free(SequenceKv& kv) {
  FreeTable(kv.unique, KvPool::kUnique);
  for (KvTable& table : kv.depths) FreeTable(table, KvPool::kDepth);
}

SequenceKv KvCacheManager::NewSequenceKv() const {
  SequenceKv kv;
  kv.depths.resize(geometry_.num_depth_levels);
  return kv;
}

bool KvCacheManager::CanAllocate(const BlockDemand& demand) const {
  return demand.unique_blocks <= unique_pool_.num_free() &&
         demand.depth_blocks <= depth_pool_.num_free();
}

BlockDemand KvCacheManager::WorstCaseDemand(const SequenceKv& kv, int64_t new_tokens,
                                            int max_depth) const {
  BlockDemand demand;
  if (new_tokens <= 0) return demand;
  const int32_t block_size = geometry_.block_size;
  if (HasUniquePool(geometry_)) {
    demand.unique_blocks = TableDemand(kv.unique, new_tokens, block_size);
  }
  const int depths = std::clamp(max_depth, 1, geometry_.num_depth_levels);
  static const KvTable kEmpty;
  for (int r = 1; r <= depths; ++r) {
    const KvTable& table = r <= static_cast<int>(kv.depths.size()) ? kv.depths[r - 1] : kEmpty;
    demand.depth_blocks += TableDemand(table, new_tokens, block_size);
  }
  return demand;
}

BlockDemand KvCacheManager::BlocksHeld(const SequenceKv& kv) {
  BlockDemand held;
  held.unique_blocks = static_cast<int64_t>(kv.unique.blocks.size());
  for (const KvTable& table : kv.depths) {
    held.depth_blocks += static_cast<int64_t>(table.blocks.size());
  }
  return held;
}

KvUsage KvCacheManager::Usage() const {
  auto pool_usage = [](const BlockPool& pool, int64_t bytes_per_block) {
    KvPoolUsage usage;
    usage.capacity = pool.capacity();
    usage.used = pool.num_used();
    usage.free = pool.num_free();
    usage.bytes_per_block = bytes_per_block;
    return usage;
  };
  KvUsage usage;
  usage.unique =
      pool_usage(unique_pool_, HasUniquePool(geometry_) ? geometry_.bytes_per_unique_block() : 0);
  usage.depth = pool_usage(depth_pool_, geometry_.bytes_per_depth_block());
  usage.used_blocks_per_depth = used_per_depth_;
  usage.used_bytes_per_depth.resize(used_per_depth_.size());
  for (size_t r = 0; r < used_per_depth_.size(); ++r) {
    usage.used_bytes_per_depth[r] =
        used_per_depth_[r] * (r == 0 ? usage.unique.bytes_per_block : usage.depth.bytes_per_block);
  }
  usage.invalid_releases = invalid_releases_;
  return usage;
}

int64_t KvCacheManager::num_free_blocks(KvPool pool) const { return block_pool(pool).num_free(); }

}  // namespace mor
