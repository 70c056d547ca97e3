// QueryDeviceMemory on CUDA (label gpu): the free memory it reports is in
// (0, total], and a KvPoolSizer sees the weights already on the device. Every
// test skips when this LibTorch has no usable CUDA device.
#include <string>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "model/model_runner.h"
#include "tests/model/tiny_model.h"

namespace mor {
namespace {

constexpr char kDevice[] = "cuda:0";

// The device's memory, or skips the test without CUDA.
#define MOR_QUERY_OR_SKIP(var)                                        \
  absl::StatusOr<DeviceMemoryInfo> var = QueryDeviceMemory(kDevice);  \
  if (var.status().code() == absl::StatusCode::kFailedPrecondition) { \
    GTEST_SKIP() << kDevice << " is not available: " << var.status(); \
  }                                                                   \
  ASSERT_TRUE(var.ok()) << var.status()

void ExpectSane(const DeviceMemoryInfo& memory) {
  EXPECT_GT(memory.total_bytes, 0);
  EXPECT_GT(memory.free_bytes, 0);
  EXPECT_LE(memory.free_bytes, memory.total_bytes);
  EXPECT_GE(memory.allocated_bytes, 0);
  EXPECT_LE(memory.allocated_bytes, memory.total_bytes);
}

TEST(GpuDeviceMemoryTest, FreeIsPositiveAndAtMostTotal) {
  MOR_QUERY_OR_SKIP(memory);
  ExpectSane(*memory);
  // "cuda" is device 0.
  auto plain = QueryDeviceMemory("cuda");
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_EQ(plain->total_bytes, memory->total_bytes);
  EXPECT_EQ(QueryDeviceMemory("cuda:4096").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(GpuDeviceMemoryTest, SizerRunsAfterTheWeightsAreOnTheDevice) {
  MOR_QUERY_OR_SKIP(before);
  const std::string dir = absl::StrCat(::testing::TempDir(), "/device_memory_gpu_test");
  ASSERT_TRUE(testing::WriteTinyModel(dir, {}).ok());
  ModelRunnerOptions options;
  options.model_dir = dir;
  options.device = kDevice;
  options.block_size = 4;
  DeviceMemoryInfo at_sizing;
  options.kv_pool_sizer = [&](const KvCacheGeometry&) -> absl::StatusOr<KvPoolBlocks> {
    auto memory = QueryDeviceMemory(kDevice);
    if (!memory.ok()) return memory.status();
    at_sizing = *memory;
    return KvPoolBlocks{64, 0};
  };
  auto runner = CreateTorchModelRunner(options);
  ASSERT_TRUE(runner.ok()) << runner.status();
  ExpectSane(at_sizing);
  // The tiny model's weights are live in LibTorch tensors when the sizer runs.
  EXPECT_GT(at_sizing.allocated_bytes, before->allocated_bytes);
  const KvCacheGeometry& geometry = (*runner)->kv_geometry();
  EXPECT_EQ(geometry.num_depth_blocks, 64);
  // The pools were allocated after the sizer, and are live now.
  auto after = QueryDeviceMemory(kDevice);
  ASSERT_TRUE(after.ok()) << after.status();
  ExpectSane(*after);
  EXPECT_GE(
      after->allocated_bytes,
      at_sizing.allocated_bytes + geometry.num_depth_blocks * geometry.bytes_per_depth_block());
}

}  // namespace
}  // namespace mor
