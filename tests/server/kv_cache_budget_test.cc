// mor_server's KV-cache flags: --kv_cache_bytes, --kv_blocks and
// --kv_cache_fraction (a fraction of the CUDA memory free after the weights
// load), their validation and the fraction -> bytes -> blocks conversion.
#include "server/kv_cache_budget.h"

#include <cmath>
#include <limits>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace mor {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

KvBudgetFlags FractionFlags(double fraction, const std::string& device = "cuda:0") {
  KvBudgetFlags flags;
  flags.kv_cache_fraction = fraction;
  flags.kv_cache_fraction_set = true;
  flags.device = device;
  return flags;
}

// 16-token blocks, 2 unique layers, 3 layers per depth block, 1 KV head of 8
// fp32: a unique block is 2*2*16*8*4 = 2048 bytes, a depth block 3072.
KvCacheGeometry Geometry(int unique_layers = 2) {
  KvCacheGeometry g;
  g.block_size = 16;
  g.num_unique_layers = unique_layers;
  g.block_layers = 3;
  g.num_depth_levels = 3;
  g.num_kv_heads = 1;
  g.head_dim = 8;
  g.dtype_bytes = 4;
  return g;
}

DeviceMemoryInfo Memory(int64_t free, int64_t total, int64_t allocated = 0) {
  DeviceMemoryInfo memory;
  memory.free_bytes = free;
  memory.total_bytes = total;
  memory.allocated_bytes = allocated;
  return memory;
}

TEST(KvBudgetPlanTest, BytesByDefaultAndBlocksWhenGiven) {
  auto plan = PlanKvBudget(KvBudgetFlags{});
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->source, KvBudgetSource::kBytes);
  EXPECT_EQ(plan->bytes, int64_t{1} << 30);

  KvBudgetFlags flags;
  flags.kv_cache_bytes = 12345;
  flags.kv_cache_bytes_set = true;
  plan = PlanKvBudget(flags);
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(plan->source, KvBudgetSource::kBytes);
  EXPECT_EQ(plan->bytes, 12345);

  // --kv_blocks wins over --kv_cache_bytes (documented: bytes are ignored then).
  flags.kv_blocks = 77;
  flags.kv_blocks_set = true;
  plan = PlanKvBudget(flags);
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(plan->source, KvBudgetSource::kBlocks);
  EXPECT_EQ(plan->blocks, 77);
}

TEST(KvBudgetPlanTest, FractionOnCuda) {
  for (const char* device : {"cuda", "cuda:0", "cuda:3"}) {
    for (double fraction : {0.9, 1.0, 1e-6}) {
      auto plan = PlanKvBudget(FractionFlags(fraction, device));
      ASSERT_TRUE(plan.ok()) << device << " " << fraction << ": " << plan.status();
      EXPECT_EQ(plan->source, KvBudgetSource::kDeviceFraction);
      EXPECT_EQ(plan->fraction, fraction);
    }
  }
}

TEST(KvBudgetPlanTest, FractionOutsideZeroToOneIsRejected) {
  for (double fraction : {0.0, -0.5, 1.0000001, 1.5, std::numeric_limits<double>::quiet_NaN(),
                          std::numeric_limits<double>::infinity()}) {
    absl::Status status = PlanKvBudget(FractionFlags(fraction)).status();
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << fraction;
    EXPECT_THAT(status.message(), AllOf(HasSubstr("--kv_cache_fraction"), HasSubstr("(0, 1]")))
        << fraction;
  }
}

TEST(KvBudgetPlanTest, FractionOnCpuIsRejected) {
  absl::Status status = PlanKvBudget(FractionFlags(0.9, "cpu")).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(),
              AllOf(HasSubstr("--kv_cache_fraction needs a CUDA device"), HasSubstr("--device cpu"),
                    HasSubstr("--kv_cache_bytes"), HasSubstr("--kv_blocks")));
}

TEST(KvBudgetPlanTest, FractionWithBytesOrBlocksIsRejected) {
  KvBudgetFlags flags = FractionFlags(0.5);
  flags.kv_cache_bytes_set = true;  // even with the default value (1 GiB)
  absl::Status status = PlanKvBudget(flags).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(),
              HasSubstr("--kv_cache_fraction cannot be combined with --kv_cache_bytes"));

  flags = FractionFlags(0.5);
  flags.kv_blocks = 100;
  flags.kv_blocks_set = true;
  status = PlanKvBudget(flags).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(),
              HasSubstr("--kv_cache_fraction cannot be combined with --kv_blocks"));
}

TEST(KvBytesFromFreeMemoryTest, FractionOfFreeRoundedDown) {
  EXPECT_EQ(*KvBytesFromFreeMemory(0.5, Memory(1000, 4000)), 500);
  EXPECT_EQ(*KvBytesFromFreeMemory(0.9, Memory(1001, 4000)), 900);  // 900.9
  EXPECT_EQ(*KvBytesFromFreeMemory(1.0, Memory(1001, 4000)), 1001);
  // The total and what LibTorch holds do not enter: only the free memory.
  EXPECT_EQ(*KvBytesFromFreeMemory(0.5, Memory(1000, 1 << 30, 1 << 29)), 500);
  // An H200-sized device: 0.9 x 130 GiB, exact to the byte.
  const int64_t free = int64_t{130} << 30;
  EXPECT_EQ(*KvBytesFromFreeMemory(0.9, Memory(free, int64_t{141} << 30)),
            static_cast<int64_t>(std::floor(0.9 * static_cast<double>(free))));
  EXPECT_LE(*KvBytesFromFreeMemory(0.9, Memory(free, int64_t{141} << 30)), free);
}

TEST(KvBytesFromFreeMemoryTest, RejectsBadFractionOrNoFreeMemory) {
  EXPECT_EQ(KvBytesFromFreeMemory(0, Memory(1000, 4000)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(KvBytesFromFreeMemory(1.1, Memory(1000, 4000)).status().code(),
            absl::StatusCode::kInvalidArgument);
  absl::Status none = KvBytesFromFreeMemory(0.9, Memory(0, 4000)).status();
  EXPECT_EQ(none.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(none.message(), HasSubstr("no free memory"));
}

TEST(SizeKvFromFreeMemoryTest, BlocksAreSizeFromBudgetOfTheFraction) {
  // 5120 bytes per unique + depth block pair; 0.5 x 1 MiB = 524288 -> 102 pairs.
  auto decision = SizeKvFromFreeMemory(0.5, Memory(1 << 20, 1 << 22, 4096), Geometry());
  ASSERT_TRUE(decision.ok()) << decision.status();
  EXPECT_EQ(decision->budget_bytes, 524288);
  EXPECT_EQ(decision->sizes.num_depth_blocks, 102);
  EXPECT_EQ(decision->sizes.num_unique_blocks, 102);
  EXPECT_EQ(decision->sizes.total_bytes, 102 * 5120);
  EXPECT_LE(decision->sizes.total_bytes, decision->budget_bytes);
  auto expected = KvCacheManager::SizeFromBudget(Geometry(), 524288);
  ASSERT_TRUE(expected.ok());
  EXPECT_EQ(decision->sizes.num_depth_blocks, expected->num_depth_blocks);

  // No unique layers: the whole budget goes to the depth pool.
  decision = SizeKvFromFreeMemory(1.0, Memory(3072 * 10 + 5, 1 << 22), Geometry(0));
  ASSERT_TRUE(decision.ok()) << decision.status();
  EXPECT_EQ(decision->sizes.num_depth_blocks, 10);
  EXPECT_EQ(decision->sizes.num_unique_blocks, 0);
}

TEST(SizeKvFromFreeMemoryTest, TooLittleFreeMemoryNamesTheFlag) {
  absl::Status status = SizeKvFromFreeMemory(0.5, Memory(10000, 1 << 20), Geometry()).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), AllOf(HasSubstr("--kv_cache_fraction 0.5 of 10000 free bytes"),
                                      HasSubstr("too small")));
}

TEST(SizeKvFromFreeMemoryTest, DescriptionHasFreeTotalBudgetAndBlocks) {
  auto decision = SizeKvFromFreeMemory(
      0.9, Memory(int64_t{10} << 30, int64_t{16} << 30, int64_t{2} << 30), Geometry());
  ASSERT_TRUE(decision.ok()) << decision.status();
  const std::string line = DescribeKvFractionDecision(*decision);
  EXPECT_THAT(line, AllOf(HasSubstr("--kv_cache_fraction 0.9 of 10.00 GiB free"),
                          HasSubstr("device total 16.00 GiB"), HasSubstr("2.00 GiB in LibTorch"),
                          HasSubstr("budget 9663676416 bytes (9.00 GiB)"),
                          HasSubstr("1887436 depth blocks + 1887436 unique blocks")));

  decision = SizeKvFromFreeMemory(1.0, Memory(3072 * 10, 1 << 22), Geometry(0));
  ASSERT_TRUE(decision.ok());
  EXPECT_THAT(DescribeKvFractionDecision(*decision),
              AllOf(HasSubstr("10 depth blocks"), ::testing::Not(HasSubstr("unique"))));
}

}  // namespace
}  // namespace mor
