#include "scheduler/kv_cache_manager.h"

#include <algorithm>
#include <cstdint>
#include <limits>
#include <map>
#include <memory>
#include <random>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace mor {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

// 2 kv heads x head_dim 4 x 2 bytes: one layer of one block of 16 tokens holds
// 2 (K+V) * 16 * 2 * 4 * 2 = 512 bytes.
KvCacheGeometry Geometry(int32_t block_size, int32_t unique_layers, int32_t block_layers,
                         int32_t levels, int64_t unique_blocks = 0, int64_t depth_blocks = 0) {
  KvCacheGeometry g;
  g.block_size = block_size;
  g.num_unique_layers = unique_layers;
  g.block_layers = block_layers;
  g.num_depth_levels = levels;
  g.num_kv_heads = 2;
  g.head_dim = 4;
  g.dtype_bytes = 2;
  g.num_unique_blocks = unique_blocks;
  g.num_depth_blocks = depth_blocks;
  return g;
}

std::unique_ptr<KvCacheManager> MustCreate(const KvCacheGeometry& g) {
  absl::StatusOr<std::unique_ptr<KvCacheManager>> manager = KvCacheManager::Create(g);
  EXPECT_TRUE(manager.ok()) << manager.status();
  return manager.ok() ? std::move(*manager) : nullptr;
}

// Appends one block from `manager` to the table of `kv` at `depth` (0: unique).
absl::Status Grow(KvCacheManager& manager, SequenceKv& kv, int depth) {
  KvTable& table = depth == 0 ? kv.unique : kv.depths[depth - 1];
  absl::StatusOr<int32_t> id =
      manager.Allocate(depth == 0 ? KvPool::kUnique : KvPool::kDepth, depth);
  if (!id.ok()) return id.status();
  table.blocks.push_back(*id);
  return absl::OkStatus();
}

KvTable Table(int32_t num_tokens, int num_blocks) {
  KvTable table;
  table.num_tokens = num_tokens;
  for (int i = 0; i < num_blocks; ++i) table.blocks.push_back(100 + i);
  return table;
}

TEST(KvCacheManagerTest, CreateValidatesGeometryAndSizes) {
  EXPECT_TRUE(KvCacheManager::Create(Geometry(16, 2, 3, 3, 2, 2)).ok());
  // Without unique layers the unique count is ignored (the runner reports 0).
  EXPECT_TRUE(KvCacheManager::Create(Geometry(16, 0, 3, 1, 0, 2)).ok());

  auto code = [](const KvCacheGeometry& g) { return KvCacheManager::Create(g).status().code(); };
  EXPECT_EQ(code(Geometry(16, 2, 3, 3, 2, 1)), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(Geometry(16, 2, 3, 3, 1, 8)), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(Geometry(0, 2, 3, 3, 8, 8)), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(Geometry(16, 2, 0, 3, 8, 8)), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(Geometry(16, 2, 3, 0, 8, 8)), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(Geometry(16, -1, 3, 3, 8, 8)), absl::StatusCode::kInvalidArgument);
  const int64_t too_many = int64_t{std::numeric_limits<int32_t>::max()} + 1;
  absl::Status status = KvCacheManager::Create(Geometry(16, 0, 3, 1, 0, too_many)).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("depth pool"));

  // Sizes override the geometry's counts; geometry() reports the pools.
  std::unique_ptr<KvCacheManager> manager =
      *KvCacheManager::Create(Geometry(16, 2, 3, 3), KvPoolSizes{5, 7, 0});
  EXPECT_EQ(manager->geometry().num_unique_blocks, 5);
  EXPECT_EQ(manager->geometry().num_depth_blocks, 7);
  EXPECT_EQ(manager->num_free_blocks(KvPool::kUnique), 4);
  EXPECT_EQ(manager->num_free_blocks(KvPool::kDepth), 6);
}

TEST(KvCacheManagerTest, AllocateChecksPoolAndDepth) {
  std::unique_ptr<KvCacheManager> manager = MustCreate(Geometry(16, 2, 3, 3, 4, 4));
  EXPECT_EQ(manager->Allocate(KvPool::kUnique, 1).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(manager->Allocate(KvPool::kDepth, 0).status().code(),
            absl::StatusCode::kInvalidArgument);
  absl::Status deep = manager->Allocate(KvPool::kDepth, 4).status();
  EXPECT_EQ(deep.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(deep.message(), HasSubstr("1..3"));

  std::unique_ptr<KvCacheManager> no_unique = MustCreate(Geometry(16, 0, 3, 3, 0, 4));
  EXPECT_EQ(no_unique->Allocate(KvPool::kUnique, 0).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST(KvCacheManagerTest, ExhaustionIsResourceExhausted) {
  std::unique_ptr<KvCacheManager> manager = MustCreate(Geometry(16, 2, 3, 3, 3, 4));
  for (int i = 0; i < 3; ++i) {
    absl::StatusOr<int32_t> id = manager->Allocate(KvPool::kDepth, 3);
    ASSERT_TRUE(id.ok());
    EXPECT_NE(*id, 0);
  }
  absl::Status full = manager->Allocate(KvPool::kDepth, 1).status();
  EXPECT_EQ(full.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(full.message(), HasSubstr("depth pool"));
  EXPECT_THAT(full.message(), HasSubstr("depth 1"));
  ASSERT_TRUE(manager->Allocate(KvPool::kUnique, 0).ok());
  ASSERT_TRUE(manager->Allocate(KvPool::kUnique, 0).ok());
  absl::Status unique_full = manager->Allocate(KvPool::kUnique, 0).status();
  EXPECT_EQ(unique_full.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(unique_full.message(), HasSubstr("unique pool"));
}

TEST(KvCacheManagerTest, OneDepthMayUseTheWholeDepthPool) {
  // No per-depth budget: the deepest level can take every block.
  std::unique_ptr<KvCacheManager> manager = MustCreate(Geometry(16, 0, 3, 4, 0, 9));
  SequenceKv kv = manager->NewSequenceKv();
  for (int i = 0; i < 8; ++i) ASSERT_TRUE(Grow(*manager, kv, 4).ok());
  EXPECT_THAT(manager->Usage().used_blocks_per_depth, ElementsAre(0, 0, 0, 0, 8));
  manager->Free(kv);
  for (int i = 0; i < 8; ++i) ASSERT_TRUE(Grow(*manager, kv, 1).ok());
  EXPECT_THAT(manager->Usage().used_blocks_per_depth, ElementsAre(0, 8, 0, 0, 0));
}

TEST(KvCacheManagerTest, UsageCountsBlocksAndBytesPerDepth) {
  // Unique block: 2 layers * 512 = 1024 bytes; depth block: 3 * 512 = 1536.
  std::unique_ptr<KvCacheManager> manager = MustCreate(Geometry(16, 2, 3, 3, 10, 12));
  SequenceKv a = manager->NewSequenceKv();
  SequenceKv b = manager->NewSequenceKv();
  ASSERT_EQ(a.depths.size(), 3u);
  for (int i = 0; i < 2; ++i) ASSERT_TRUE(Grow(*manager, a, 0).ok());
  for (int i = 0; i < 2; ++i) ASSERT_TRUE(Grow(*manager, a, 1).ok());
  ASSERT_TRUE(Grow(*manager, a, 2).ok());
  ASSERT_TRUE(Grow(*manager, b, 0).ok());
  ASSERT_TRUE(Grow(*manager, b, 1).ok());
  ASSERT_TRUE(Grow(*manager, b, 3).ok());

  KvUsage usage = manager->Usage();
  EXPECT_THAT(usage.used_blocks_per_depth, ElementsAre(3, 3, 1, 1));
  EXPECT_THAT(usage.used_bytes_per_depth, ElementsAre(3 * 1024, 3 * 1536, 1536, 1536));
  EXPECT_EQ(usage.unique.capacity, 9);
  EXPECT_EQ(usage.unique.used, 3);
  EXPECT_EQ(usage.unique.free, 6);
  EXPECT_EQ(usage.unique.bytes_per_block, 1024);
  EXPECT_EQ(usage.depth.capacity, 11);
  EXPECT_EQ(usage.depth.used, 5);
  EXPECT_EQ(usage.depth.free, 6);
  EXPECT_EQ(usage.depth.bytes_per_block, 1536);
  EXPECT_EQ(KvCacheManager::BlocksHeld(a), (BlockDemand{2, 3}));

  manager->Free(a);
  EXPECT_TRUE(a.unique.blocks.empty());
  ASSERT_EQ(a.depths.size(), 3u);  // reusable
  for (const KvTable& table : a.depths) {
    EXPECT_TRUE(table.blocks.empty());
    EXPECT_EQ(table.num_tokens, 0);
  }
  usage = manager->Usage();
  EXPECT_THAT(usage.used_blocks_per_depth, ElementsAre(1, 1, 0, 1));
  EXPECT_EQ(usage.depth.used, 2);
  EXPECT_EQ(usage.invalid_releases, 0);
}

TEST(KvCacheManagerTest, FreeSkipsBlocksItDoesNotOwn) {
  std::unique_ptr<KvCacheManager> manager = MustCreate(Geometry(4, 2, 3, 2, 8, 8));
  SequenceKv kv = manager->NewSequenceKv();
  ASSERT_TRUE(Grow(*manager, kv, 0).ok());
  ASSERT_TRUE(Grow(*manager, kv, 1).ok());
  ASSERT_TRUE(Grow(*manager, kv, 2).ok());
  SequenceKv copy = kv;
  manager->Free(kv);
  manager->Free(copy);  // double free: every block is already free
  KvUsage usage = manager->Usage();
  EXPECT_EQ(usage.invalid_releases, 3);
  EXPECT_EQ(usage.unique.used, 0);
  EXPECT_EQ(usage.depth.used, 0);
  EXPECT_THAT(usage.used_blocks_per_depth, ElementsAre(0, 0, 0));

  SequenceKv bogus;
  bogus.unique.blocks = {0, -1, 99};
  bogus.depths.resize(5);  // more tables than levels
  bogus.depths[4].blocks = {3};
  manager->Free(bogus);
  EXPECT_EQ(manager->Usage().invalid_releases, 7);
  EXPECT_EQ(manager->num_free_blocks(KvPool::kDepth), 7);
}

TEST(KvCacheManagerTest, SizeFromBudgetSplitsBlocksEvenly) {
  // Unique block 1024 bytes + depth block 1536 bytes = 2560 bytes per pair.
  const KvCacheGeometry g = Geometry(16, 2, 3, 3);
  absl::StatusOr<KvPoolSizes> sizes = KvCacheManager::SizeFromBudget(g, 2560 * 10 + 2559);
  ASSERT_TRUE(sizes.ok()) << sizes.status();
  EXPECT_EQ(sizes->num_unique_blocks, 10);
  EXPECT_EQ(sizes->num_depth_blocks, 10);
  EXPECT_EQ(sizes->total_bytes, 25600);
  // The unique pool costs num_unique_layers / block_layers of the depth pool.
  EXPECT_EQ(sizes->num_unique_blocks * g.bytes_per_unique_block() * 3,
            sizes->num_depth_blocks * g.bytes_per_depth_block() * 2);

  sizes = KvCacheManager::SizeFromBudget(g, 5120);  // exactly 2 pairs
  ASSERT_TRUE(sizes.ok());
  EXPECT_EQ(sizes->num_depth_blocks, 2);

  absl::Status small = KvCacheManager::SizeFromBudget(g, 5119).status();
  EXPECT_EQ(small.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(small.message(), HasSubstr("5119 bytes"));
  EXPECT_THAT(small.message(), HasSubstr("1536"));
  EXPECT_THAT(small.message(), HasSubstr("1024"));
  EXPECT_FALSE(KvCacheManager::SizeFromBudget(g, -1).ok());
  EXPECT_FALSE(KvCacheManager::SizeFromBudget(Geometry(16, 2, 0, 3), 1 << 30).ok());

  // No unique layers: the whole budget goes to the depth pool.
  sizes = KvCacheManager::SizeFromBudget(Geometry(16, 0, 3, 1), 1536 * 7 + 100);
  ASSERT_TRUE(sizes.ok());
  EXPECT_EQ(sizes->num_unique_blocks, 0);
  EXPECT_EQ(sizes->num_depth_blocks, 7);
  EXPECT_EQ(sizes->total_bytes, 1536 * 7);

  // Block ids are int32.
  sizes = KvCacheManager::SizeFromBudget(Geometry(1, 0, 1, 1), std::numeric_limits<int64_t>::max());
  ASSERT_TRUE(sizes.ok());
  EXPECT_EQ(sizes->num_depth_blocks, std::numeric_limits<int32_t>::max());

  // The sizes are accepted by Create.
  sizes = KvCacheManager::SizeFromBudget(g, 2560 * 6);
  ASSERT_TRUE(sizes.ok());
  EXPECT_TRUE(KvCacheManager::Create(g, *sizes).ok());
}

TEST(KvCacheManagerTest, WorstCaseDemandCountsEveryReachableTable) {
  std::unique_ptr<KvCacheManager> manager = MustCreate(Geometry(4, 2, 3, 3, 64, 64));
  SequenceKv kv = manager->NewSequenceKv();
  // Empty tables: ceil(5 / 4) = 2 blocks per table.
  EXPECT_EQ(manager->WorstCaseDemand(kv, 5, 3), (BlockDemand{2, 6}));
  EXPECT_EQ(manager->WorstCaseDemand(kv, 5, 2), (BlockDemand{2, 4}));
  EXPECT_EQ(manager->WorstCaseDemand(kv, 0, 3), (BlockDemand{0, 0}));
  EXPECT_EQ(manager->WorstCaseDemand(kv, -3, 3), (BlockDemand{0, 0}));
  // max_depth is clamped to [1, levels].
  EXPECT_EQ(manager->WorstCaseDemand(kv, 5, 0), (BlockDemand{2, 2}));
  EXPECT_EQ(manager->WorstCaseDemand(kv, 5, 99), (BlockDemand{2, 6}));
  // Tables missing from kv count as empty.
  EXPECT_EQ(manager->WorstCaseDemand(SequenceKv{}, 4, 3), (BlockDemand{1, 3}));

  // Partial last blocks: depth 1 holds 6 of 8 entries, depth 2 2 of 4, depth 3 none.
  kv.unique = Table(6, 2);
  kv.depths[0] = Table(6, 2);
  kv.depths[1] = Table(2, 1);
  kv.depths[2] = Table(0, 0);
  EXPECT_EQ(manager->WorstCaseDemand(kv, 1, 3), (BlockDemand{0, 1}));  // depth 3 only
  EXPECT_EQ(manager->WorstCaseDemand(kv, 2, 3), (BlockDemand{0, 1}));
  EXPECT_EQ(manager->WorstCaseDemand(kv, 3, 3), (BlockDemand{1, 1 + 1 + 1}));
  EXPECT_EQ(manager->WorstCaseDemand(kv, 3, 2), (BlockDemand{1, 2}));
  EXPECT_EQ(manager->WorstCaseDemand(kv, 11, 3), (BlockDemand{3, 3 + 3 + 3}));
  // A table with more blocks than it needs asks for nothing (never negative).
  kv.depths[2] = Table(0, 5);
  EXPECT_EQ(manager->WorstCaseDemand(kv, 3, 3), (BlockDemand{1, 2}));
}

TEST(KvCacheManagerTest, WorstCaseDemandRecursiveSharingAndNoUniqueLayers) {
  // Recursive sharing: one level, even when tokens recurse 3 times.
  std::unique_ptr<KvCacheManager> sharing = MustCreate(Geometry(4, 2, 3, 1, 16, 16));
  SequenceKv kv = sharing->NewSequenceKv();
  ASSERT_EQ(kv.depths.size(), 1u);
  EXPECT_EQ(sharing->WorstCaseDemand(kv, 9, 3), (BlockDemand{3, 3}));

  // No unique layers (vanilla / cycle strategies): no unique demand.
  std::unique_ptr<KvCacheManager> cycle = MustCreate(Geometry(4, 0, 3, 2, 0, 16));
  SequenceKv plain = cycle->NewSequenceKv();
  plain.unique = Table(0, 0);
  EXPECT_EQ(cycle->WorstCaseDemand(plain, 9, 2), (BlockDemand{0, 6}));
  EXPECT_TRUE(cycle->CanAllocate(BlockDemand{0, 15}));
  EXPECT_FALSE(cycle->CanAllocate(BlockDemand{0, 16}));
  EXPECT_FALSE(cycle->CanAllocate(BlockDemand{1, 0}));
}

TEST(KvCacheManagerTest, BlockDemandAddsAcrossSequences) {
  BlockDemand total;
  total += BlockDemand{1, 2};
  EXPECT_EQ((total + BlockDemand{3, 4}), (BlockDemand{4, 6}));
  EXPECT_EQ(total, (BlockDemand{1, 2}));

  std::unique_ptr<KvCacheManager> manager = MustCreate(Geometry(4, 2, 3, 2, 5, 7));
  EXPECT_TRUE(manager->CanAllocate(BlockDemand{4, 6}));
  EXPECT_FALSE(manager->CanAllocate(BlockDemand{4, 6} + BlockDemand{0, 1}));
  EXPECT_FALSE(manager->CanAllocate(BlockDemand{4, 6} + BlockDemand{1, 0}));
}

// ---- Randomized invariants ------------------------------------------------

class RandomizedRun {
 public:
  RandomizedRun(uint32_t seed, const KvCacheGeometry& g)
      : rng_(seed), geometry_(g), manager_(MustCreate(g)) {}

  void Run(int operations) {
    ASSERT_NE(manager_, nullptr);
    for (int op = 0; op < operations; ++op) {
      SCOPED_TRACE(op);
      const int kind = Uniform(0, 9);
      if (kind == 0 || seqs_.empty()) {
        if (seqs_.size() < 12) seqs_.push_back(manager_->NewSequenceKv());
      } else if (kind <= 3) {
        GrowOne();
      } else if (kind <= 6) {
        Step();
      } else if (kind == 7) {
        FreeOne();
      } else if (kind == 8) {
        FreeStaleCopy();
      } else {
        FreeBogusIds();
      }
      CheckInvariants();
      if (::testing::Test::HasFatalFailure()) return;
    }
    for (SequenceKv& kv : seqs_) manager_->Free(kv);
    CheckInvariants();
    const KvUsage usage = manager_->Usage();
    EXPECT_EQ(usage.unique.used, 0);
    EXPECT_EQ(usage.depth.used, 0);
    EXPECT_EQ(usage.depth.free, usage.depth.capacity);
    EXPECT_EQ(usage.unique.free, usage.unique.capacity);
    for (int64_t used : usage.used_blocks_per_depth) EXPECT_EQ(used, 0);
    EXPECT_GT(steps_run_, 0);
  }

 private:
  int Uniform(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng_); }
  bool has_unique() const { return geometry_.num_unique_layers > 0; }
  SequenceKv& RandomSeq() { return seqs_[Uniform(0, static_cast<int>(seqs_.size()) - 1)]; }

  // The model's EnsureCapacity: grow `table` to hold `entries`.
  absl::Status Ensure(KvTable& table, int64_t entries, KvPool pool, int depth) {
    while (static_cast<int64_t>(table.blocks.size()) * geometry_.block_size < entries) {
      absl::StatusOr<int32_t> id = manager_->Allocate(pool, depth);
      if (!id.ok()) return id.status();
      table.blocks.push_back(*id);
    }
    table.num_tokens = static_cast<int32_t>(entries);
    return absl::OkStatus();
  }

  // One more block at a random table, as the model does when a table fills.
  void GrowOne() {
    SequenceKv& kv = RandomSeq();
    const int depth = Uniform(has_unique() ? 0 : 1, geometry_.num_depth_levels);
    const KvPool pool = depth == 0 ? KvPool::kUnique : KvPool::kDepth;
    const int64_t free_before = manager_->num_free_blocks(pool);
    KvTable& table = depth == 0 ? kv.unique : kv.depths[depth - 1];
    absl::StatusOr<int32_t> id = manager_->Allocate(pool, depth);
    if (free_before == 0) {
      EXPECT_EQ(id.status().code(), absl::StatusCode::kResourceExhausted);
      return;
    }
    ASSERT_TRUE(id.ok()) << id.status();
    table.blocks.push_back(*id);
    table.num_tokens = static_cast<int32_t>(table.blocks.size()) * geometry_.block_size;
  }

  // A step over a few sequences: reserve the worst case, then route tokens to
  // random depths. With the reservation granted no allocation may fail.
  void Step() {
    const int n = Uniform(1, std::min<int>(3, static_cast<int>(seqs_.size())));
    std::vector<int> picked;
    for (int i = 0; i < n; ++i) {
      const int s = Uniform(0, static_cast<int>(seqs_.size()) - 1);
      if (std::find(picked.begin(), picked.end(), s) == picked.end()) picked.push_back(s);
    }
    std::vector<int64_t> new_tokens;
    std::vector<int> max_depth;
    BlockDemand total;
    for (int s : picked) {
      new_tokens.push_back(Uniform(1, 3 * geometry_.block_size));
      max_depth.push_back(Uniform(1, 4));
      total += manager_->WorstCaseDemand(seqs_[s], new_tokens.back(), max_depth.back());
    }
    const bool fits = total.unique_blocks <= manager_->num_free_blocks(KvPool::kUnique) &&
                      total.depth_blocks <= manager_->num_free_blocks(KvPool::kDepth);
    ASSERT_EQ(manager_->CanAllocate(total), fits);
    if (!fits) return;
    ++steps_run_;
    for (size_t i = 0; i < picked.size(); ++i) {
      SequenceKv& kv = seqs_[picked[i]];
      int64_t active = new_tokens[i];
      if (has_unique()) {
        ASSERT_TRUE(Ensure(kv.unique, kv.unique.num_tokens + active, KvPool::kUnique, 0).ok());
      }
      const int depths = std::min(max_depth[i], geometry_.num_depth_levels);
      for (int r = 1; r <= depths && active > 0; ++r) {
        KvTable& table = kv.depths[r - 1];
        absl::Status status = Ensure(table, table.num_tokens + active, KvPool::kDepth, r);
        ASSERT_TRUE(status.ok()) << "allocation failed inside a reserved step: " << status;
        active = Uniform(0, static_cast<int>(active));  // routing: fewer go deeper
      }
    }
  }

  void FreeOne() {
    SequenceKv& kv = RandomSeq();
    manager_->Free(kv);
    EXPECT_TRUE(kv.unique.blocks.empty());
    EXPECT_EQ(static_cast<int>(kv.depths.size()), geometry_.num_depth_levels);
    for (const KvTable& table : kv.depths) EXPECT_TRUE(table.blocks.empty());
    if (Uniform(0, 1) == 0) {
      std::swap(kv, seqs_.back());
      seqs_.pop_back();
    }
  }

  // Freeing a copy right after the original: every block is skipped.
  void FreeStaleCopy() {
    SequenceKv& kv = RandomSeq();
    SequenceKv copy = kv;
    const BlockDemand held = KvCacheManager::BlocksHeld(kv);
    manager_->Free(kv);
    manager_->Free(copy);
    expected_invalid_ += held.unique_blocks + held.depth_blocks;
  }

  // Ids owned by no table (null, out of range, free): Free must skip them all.
  void FreeBogusIds() {
    const auto owned = Owners();
    SequenceKv bogus = manager_->NewSequenceKv();
    for (int i = 0; i < Uniform(1, 6); ++i) {
      const bool unique = has_unique() && Uniform(0, 1) == 0;
      const int64_t n = unique ? geometry_.num_unique_blocks : geometry_.num_depth_blocks;
      const int32_t id = Uniform(-2, static_cast<int>(n) + 2);
      if (owned.count({unique ? 0 : 1, id}) != 0) continue;
      KvTable& table = unique ? bogus.unique
                              : bogus.depths[Uniform(0, static_cast<int>(bogus.depths.size()) - 1)];
      table.blocks.push_back(id);
      ++expected_invalid_;
    }
    manager_->Free(bogus);
  }

  // (pool, id) -> (sequence, depth); fails on a block owned twice.
  std::map<std::pair<int, int32_t>, std::pair<int, int>> Owners() {
    std::map<std::pair<int, int32_t>, std::pair<int, int>> owners;
    for (size_t s = 0; s < seqs_.size(); ++s) {
      auto own = [&](const KvTable& table, int pool, int depth) {
        for (int32_t id : table.blocks) {
          auto [it, inserted] = owners.emplace(std::make_pair(pool, id), std::make_pair(s, depth));
          EXPECT_TRUE(inserted) << "block " << id << " of pool " << pool << " owned by sequences "
                                << it->second.first << " and " << s;
        }
      };
      own(seqs_[s].unique, 0, 0);
      for (size_t r = 0; r < seqs_[s].depths.size(); ++r) own(seqs_[s].depths[r], 1, r + 1);
    }
    return owners;
  }

  void CheckInvariants() {
    const auto owners = Owners();
    std::vector<int64_t> table_blocks(geometry_.num_depth_levels + 1, 0);
    for (const auto& [key, owner] : owners) {
      const auto& [pool, id] = key;
      ASSERT_GT(id, 0) << "null block handed out";
      const BlockPool& blocks = manager_->block_pool(pool == 0 ? KvPool::kUnique : KvPool::kDepth);
      ASSERT_LT(id, blocks.num_blocks());
      ASSERT_EQ(blocks.ref_count(id), 1) << "block " << id;
      ++table_blocks[owner.second];
    }
    const KvUsage usage = manager_->Usage();
    ASSERT_EQ(usage.used_blocks_per_depth, table_blocks);
    int64_t depth_used = 0;
    for (int r = 1; r <= geometry_.num_depth_levels; ++r) {
      depth_used += table_blocks[r];
      ASSERT_EQ(usage.used_bytes_per_depth[r], table_blocks[r] * geometry_.bytes_per_depth_block());
    }
    ASSERT_EQ(usage.used_bytes_per_depth[0],
              table_blocks[0] * (has_unique() ? geometry_.bytes_per_unique_block() : 0));
    ASSERT_EQ(usage.unique.used, table_blocks[0]);
    ASSERT_EQ(usage.depth.used, depth_used);
    ASSERT_EQ(usage.unique.free + usage.unique.used, usage.unique.capacity);
    ASSERT_EQ(usage.depth.free + usage.depth.used, usage.depth.capacity);
    ASSERT_EQ(usage.invalid_releases, expected_invalid_);
  }

  std::mt19937 rng_;
  KvCacheGeometry geometry_;
  std::unique_ptr<KvCacheManager> manager_;
  std::vector<SequenceKv> seqs_;
  int64_t expected_invalid_ = 0;
  int64_t steps_run_ = 0;
};

TEST(KvCacheManagerTest, RandomizedInvariants) {
  struct Case {
    uint32_t seed;
    KvCacheGeometry geometry;
  };
  const Case cases[] = {
      {1, Geometry(4, 2, 3, 3, 40, 40)},    // middle_cycle, recursion-wise
      {2, Geometry(1, 2, 2, 4, 30, 50)},    // unique pool smaller than depth pool
      {3, Geometry(8, 0, 4, 3, 0, 60)},     // no unique layers
      {4, Geometry(4, 2, 3, 1, 40, 40)},    // recursive sharing: one level
      {5, Geometry(16, 1, 2, 2, 200, 12)},  // tiny depth pool
      {6, Geometry(2, 2, 3, 4, 64, 64)},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.seed);
    RandomizedRun run(c.seed, c.geometry);
    run.Run(4000);
    if (HasFatalFailure()) return;
  }
}

}  // namespace
}  // namespace mor
