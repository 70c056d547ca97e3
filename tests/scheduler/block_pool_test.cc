#include "scheduler/block_pool.h"

#include <cstdint>
#include <iterator>
#include <map>
#include <random>
#include <set>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace mor {
namespace {

using ::testing::HasSubstr;

TEST(BlockPoolTest, HandsOutIdsFromOneAndNeverTheNullBlock) {
  BlockPool pool(5);
  EXPECT_EQ(pool.num_blocks(), 5);
  EXPECT_EQ(pool.capacity(), 4);
  EXPECT_EQ(pool.num_free(), 4);
  EXPECT_EQ(pool.num_used(), 0);
  for (int32_t expected = 1; expected <= 4; ++expected) {
    absl::StatusOr<int32_t> id = pool.Allocate();
    ASSERT_TRUE(id.ok()) << id.status();
    EXPECT_EQ(*id, expected);
    EXPECT_EQ(pool.ref_count(*id), 1);
  }
  EXPECT_EQ(pool.num_free(), 0);
  EXPECT_EQ(pool.num_used(), 4);
  absl::StatusOr<int32_t> none = pool.Allocate();
  EXPECT_EQ(none.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(none.status().message(), HasSubstr("4 blocks"));
  EXPECT_EQ(pool.ref_count(BlockPool::kNullBlock), 0);
}

TEST(BlockPoolTest, ReleasedBlockIsReusedFirst) {
  BlockPool pool(8);
  ASSERT_TRUE(pool.Allocate().ok());  // 1
  ASSERT_TRUE(pool.Allocate().ok());  // 2
  ASSERT_TRUE(pool.Allocate().ok());  // 3
  ASSERT_TRUE(pool.Release(2).ok());
  EXPECT_EQ(pool.num_used(), 2);
  EXPECT_FALSE(pool.is_allocated(2));
  absl::StatusOr<int32_t> again = pool.Allocate();
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*again, 2);
}

TEST(BlockPoolTest, RefCountsKeepSharedBlocksAllocated) {
  BlockPool pool(3);
  absl::StatusOr<int32_t> id = pool.Allocate();
  ASSERT_TRUE(id.ok());
  ASSERT_TRUE(pool.Retain(*id).ok());
  ASSERT_TRUE(pool.Retain(*id).ok());
  EXPECT_EQ(pool.ref_count(*id), 3);
  ASSERT_TRUE(pool.Release(*id).ok());
  ASSERT_TRUE(pool.Release(*id).ok());
  EXPECT_TRUE(pool.is_allocated(*id));
  EXPECT_EQ(pool.num_used(), 1);
  ASSERT_TRUE(pool.Release(*id).ok());
  EXPECT_FALSE(pool.is_allocated(*id));
  EXPECT_EQ(pool.num_used(), 0);
  EXPECT_EQ(pool.num_free(), 2);
}

TEST(BlockPoolTest, MisuseReturnsErrorsAndChangesNothing) {
  BlockPool pool(4);
  ASSERT_TRUE(pool.Allocate().ok());  // 1 in use; 2, 3 free
  for (int32_t id : {-1, 4, 1000}) {
    EXPECT_EQ(pool.Release(id).code(), absl::StatusCode::kInvalidArgument) << id;
    EXPECT_EQ(pool.Retain(id).code(), absl::StatusCode::kInvalidArgument) << id;
  }
  absl::Status reserved = pool.Release(BlockPool::kNullBlock);
  EXPECT_EQ(reserved.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(reserved.message(), HasSubstr("null block"));
  EXPECT_EQ(pool.Retain(BlockPool::kNullBlock).code(), absl::StatusCode::kInvalidArgument);
  absl::Status free_release = pool.Release(2);
  EXPECT_EQ(free_release.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(free_release.message(), HasSubstr("block 2"));
  EXPECT_EQ(pool.Retain(3).code(), absl::StatusCode::kFailedPrecondition);
  // Double release.
  ASSERT_TRUE(pool.Release(1).ok());
  EXPECT_EQ(pool.Release(1).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(pool.num_free(), 3);
  EXPECT_EQ(pool.num_used(), 0);
  EXPECT_EQ(pool.ref_count(-1), 0);
  EXPECT_EQ(pool.ref_count(4), 0);
}

TEST(BlockPoolTest, EmptyPools) {
  for (int32_t n : {-3, 0, 1}) {
    BlockPool pool(n);
    EXPECT_EQ(pool.capacity(), 0) << n;
    EXPECT_EQ(pool.num_free(), 0);
    EXPECT_EQ(pool.num_used(), 0);
    EXPECT_EQ(pool.Allocate().status().code(), absl::StatusCode::kResourceExhausted);
    EXPECT_FALSE(pool.Release(0).ok());
  }
}

// Random allocate / retain / release against a reference ownership map.
TEST(BlockPoolTest, RandomizedMatchesReferenceModel) {
  for (uint32_t seed : {1u, 7u, 42u, 2024u}) {
    SCOPED_TRACE(seed);
    std::mt19937 rng(seed);
    const int32_t n = std::uniform_int_distribution<int32_t>(1, 40)(rng);
    BlockPool pool(n);
    std::map<int32_t, int32_t> owners;  // id -> reference count
    auto random_owned = [&]() {
      auto it = owners.begin();
      std::advance(it, std::uniform_int_distribution<size_t>(0, owners.size() - 1)(rng));
      return it->first;
    };
    for (int op = 0; op < 5000; ++op) {
      switch (std::uniform_int_distribution<int>(0, 3)(rng)) {
        case 0: {
          absl::StatusOr<int32_t> id = pool.Allocate();
          if (static_cast<int64_t>(owners.size()) == pool.capacity()) {
            EXPECT_EQ(id.status().code(), absl::StatusCode::kResourceExhausted);
          } else {
            ASSERT_TRUE(id.ok()) << id.status();
            ASSERT_GT(*id, 0);
            ASSERT_LT(*id, n);
            ASSERT_EQ(owners.count(*id), 0u) << "block " << *id << " handed out twice";
            owners[*id] = 1;
          }
          break;
        }
        case 1:
          if (!owners.empty()) {
            const int32_t id = random_owned();
            ASSERT_TRUE(pool.Retain(id).ok());
            ++owners[id];
          }
          break;
        case 2:
          if (!owners.empty()) {
            const int32_t id = random_owned();
            ASSERT_TRUE(pool.Release(id).ok());
            if (--owners[id] == 0) owners.erase(id);
          }
          break;
        case 3: {  // any id, owned or not
          const int32_t id = std::uniform_int_distribution<int32_t>(-2, n + 2)(rng);
          const absl::Status status = pool.Release(id);
          EXPECT_EQ(status.ok(), owners.count(id) == 1) << id << ": " << status;
          if (status.ok() && --owners[id] == 0) owners.erase(id);
          break;
        }
      }
      ASSERT_EQ(pool.num_free() + pool.num_used(), pool.capacity());
      ASSERT_EQ(pool.num_used(), static_cast<int64_t>(owners.size()));
      for (int32_t id = -1; id <= n; ++id) {
        auto it = owners.find(id);
        ASSERT_EQ(pool.ref_count(id), it == owners.end() ? 0 : it->second) << id;
      }
    }
    for (const auto& [id, count] : owners) {
      for (int32_t i = 0; i < count; ++i) ASSERT_TRUE(pool.Release(id).ok());
    }
    EXPECT_EQ(pool.num_free(), pool.capacity());
    // Every usable id comes back exactly once.
    std::set<int32_t> ids;
    for (int64_t i = 0; i < pool.capacity(); ++i) {
      absl::StatusOr<int32_t> id = pool.Allocate();
      ASSERT_TRUE(id.ok());
      ids.insert(*id);
    }
    EXPECT_EQ(static_cast<int64_t>(ids.size()), pool.capacity());
    if (!ids.empty()) {
      EXPECT_EQ(*ids.begin(), 1);
      EXPECT_EQ(*ids.rbegin(), n - 1);
    }
  }
}

}  // namespace
}  // namespace mor
