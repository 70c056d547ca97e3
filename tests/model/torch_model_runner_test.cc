// Loading errors and step validation of the LibTorch model runner: every bad
// input is an absl::Status naming the file, tensor or field; nothing throws.
#include "model/torch_model_runner.h"

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/simple_block_allocator.h"
#include "tests/model/tiny_model.h"

namespace mor {
namespace {

using ::testing::HasSubstr;
using testing::TinyModelOptions;
using testing::WriteTinyModel;

std::string NewDir(const std::string& name) {
  std::string dir = absl::StrCat(::testing::TempDir(), "/runner_test_", name);
  std::filesystem::remove_all(dir);
  return dir;
}

absl::StatusOr<std::unique_ptr<ModelRunner>> Load(const std::string& dir,
                                                  const std::string& device = "cpu",
                                                  const std::string& dtype = "float32",
                                                  int64_t blocks = 64) {
  ModelRunnerOptions options;
  options.model_dir = dir;
  options.device = device;
  options.dtype = dtype;
  options.block_size = 4;
  options.num_depth_blocks = blocks;
  options.num_threads = 2;
  return CreateTorchModelRunner(options);
}

std::string WriteModel(const std::string& name, TinyModelOptions options = {}) {
  const std::string dir = NewDir(name);
  EXPECT_TRUE(WriteTinyModel(dir, options).ok());
  return dir;
}

TEST(TorchModelRunnerLoadTest, MissingDirectoryNamesConfigPath) {
  auto runner = Load("/nonexistent/model");
  ASSERT_FALSE(runner.ok());
  EXPECT_THAT(runner.status().message(), HasSubstr("/nonexistent/model/config.json"));
}

TEST(TorchModelRunnerLoadTest, MissingTensorNamesTensor) {
  TinyModelOptions options;
  options.omit_tensor = "model.layers.1.block.1.mlp.up_proj.weight";
  auto runner = Load(WriteModel("missing_tensor", options));
  ASSERT_FALSE(runner.ok());
  EXPECT_EQ(runner.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(runner.status().message(), HasSubstr("model.layers.1.block.1.mlp.up_proj.weight"));
}

TEST(TorchModelRunnerLoadTest, MissingRouterNamesTensor) {
  TinyModelOptions options;
  options.omit_tensor = "model.layers.2.mor_router.router.weight";
  auto runner = Load(WriteModel("missing_router", options));
  ASSERT_FALSE(runner.ok());
  EXPECT_THAT(runner.status().message(), HasSubstr("model.layers.2.mor_router.router.weight"));
}

TEST(TorchModelRunnerLoadTest, WrongShapeNamesTensorAndShapes) {
  TinyModelOptions options;
  options.wrong_shape_tensor = "model.layers.0.self_attn.k_proj.weight";
  auto runner = Load(WriteModel("wrong_shape", options));
  ASSERT_FALSE(runner.ok());
  EXPECT_EQ(runner.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(runner.status().message(), HasSubstr("model.layers.0.self_attn.k_proj.weight"));
  EXPECT_THAT(runner.status().message(), HasSubstr("[17, 32]"));
  EXPECT_THAT(runner.status().message(), HasSubstr("expected [16, 32]"));
  EXPECT_THAT(runner.status().message(), HasSubstr("model.safetensors"));
}

TEST(TorchModelRunnerLoadTest, TruncatedSafetensorsNamesFile) {
  const std::string dir = WriteModel("truncated");
  const std::string path = dir + "/model.safetensors";
  std::filesystem::resize_file(path, std::filesystem::file_size(path) / 2);
  auto runner = Load(dir);
  ASSERT_FALSE(runner.ok());
  EXPECT_THAT(runner.status().message(), HasSubstr("model.safetensors"));
}

TEST(TorchModelRunnerLoadTest, CorruptHeaderNamesFile) {
  const std::string dir = WriteModel("corrupt");
  std::fstream file(dir + "/model.safetensors", std::ios::in | std::ios::out | std::ios::binary);
  file.seekp(10);
  file.write("\xff\xfe{{{", 5);
  file.close();
  auto runner = Load(dir);
  ASSERT_FALSE(runner.ok());
  EXPECT_EQ(runner.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(runner.status().message(), HasSubstr("model.safetensors"));
}

TEST(TorchModelRunnerLoadTest, UnknownStrategyNamesField) {
  const std::string dir = WriteModel("unknown_strategy");
  std::ifstream in(dir + "/config.json");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  text.replace(text.find("middle_cycle"), 12, "zigzag");
  std::ofstream(dir + "/config.json") << text;
  auto runner = Load(dir);
  ASSERT_FALSE(runner.ok());
  EXPECT_THAT(runner.status().message(), HasSubstr("sharing_strategy"));
  EXPECT_THAT(runner.status().message(), HasSubstr("zigzag"));
}

TEST(TorchModelRunnerLoadTest, InconsistentLayerCountNamesField) {
  const std::string dir = WriteModel("inconsistent");
  std::ifstream in(dir + "/config.json");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const std::string from = "\"num_hidden_layers\": 8";
  ASSERT_NE(text.find(from), std::string::npos) << text;
  text.replace(text.find(from), from.size(), "\"num_hidden_layers\": 9");
  std::ofstream(dir + "/config.json") << text;
  auto runner = Load(dir);
  ASSERT_FALSE(runner.ok());
  EXPECT_THAT(runner.status().message(), HasSubstr("num_hidden_layers"));
}

TEST(TorchModelRunnerLoadTest, BadDeviceAndDtype) {
  const std::string dir = WriteModel("device");
  EXPECT_EQ(Load(dir, "tpu").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Load(dir, "cuda:x").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Load(dir, "cpu", "float8").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Load(dir, "cpu", "float16").status().message(), HasSubstr("CUDA only"));
  EXPECT_EQ(Load(dir, "cpu", "float32", /*blocks=*/1).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(TorchModelRunnerLoadTest, KvPoolSizerSeesGeometryAndSetsPools) {
  ModelRunnerOptions options;
  options.model_dir = WriteModel("sizer");
  options.block_size = 4;
  options.num_threads = 2;
  options.num_depth_blocks = 0;  // ignored: the sizer decides
  int calls = 0;
  options.kv_pool_sizer = [&](const KvCacheGeometry& geometry) -> absl::StatusOr<KvPoolBlocks> {
    ++calls;
    EXPECT_EQ(geometry.block_size, 4);
    EXPECT_EQ(geometry.dtype_bytes, 4);
    EXPECT_EQ(geometry.num_depth_levels, 3);
    EXPECT_EQ(geometry.num_depth_blocks, 0);
    EXPECT_EQ(geometry.num_unique_blocks, 0);
    return KvPoolBlocks{10, 7};
  };
  auto runner = CreateTorchModelRunner(options);
  ASSERT_TRUE(runner.ok()) << runner.status();
  EXPECT_EQ(calls, 1);
  EXPECT_EQ((*runner)->kv_geometry().num_depth_blocks, 10);
  EXPECT_EQ((*runner)->kv_geometry().num_unique_blocks, 7);

  // Its error comes back as is; too few blocks are rejected.
  options.kv_pool_sizer = [](const KvCacheGeometry&) -> absl::StatusOr<KvPoolBlocks> {
    return absl::ResourceExhaustedError("no room for the KV cache");
  };
  runner = CreateTorchModelRunner(options);
  EXPECT_EQ(runner.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(runner.status().message(), HasSubstr("no room for the KV cache"));
  options.kv_pool_sizer = [](const KvCacheGeometry&) -> absl::StatusOr<KvPoolBlocks> {
    return KvPoolBlocks{1, 0};
  };
  runner = CreateTorchModelRunner(options);
  EXPECT_EQ(runner.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(runner.status().message(), HasSubstr("at least 2 blocks"));
}

TEST(QueryDeviceMemoryTest, CpuIsNotReported) {
  absl::Status status = QueryDeviceMemory("cpu").status();
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(status.message(), HasSubstr("CUDA devices only"));
  EXPECT_EQ(QueryDeviceMemory("tpu").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(QueryDeviceMemory("cuda:x").status().code(), absl::StatusCode::kInvalidArgument);
}

class TorchModelRunnerStepTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto runner = Load(WriteModel("step"));
    ASSERT_TRUE(runner.ok()) << runner.status();
    runner_ = std::move(*runner);
    allocator_ = std::make_unique<SimpleBlockAllocator>(runner_->kv_geometry());
    kv_.depths.resize(runner_->kv_geometry().num_depth_levels);
  }

  absl::StatusOr<StepResult> Run(std::vector<int32_t> tokens, int32_t start = 0,
                                 DepthPolicy policy = DepthPolicy::Adaptive()) {
    tokens_ = std::move(tokens);
    SequenceChunk chunk;
    chunk.tokens = tokens_;
    chunk.start_position = start;
    chunk.policy = policy;
    chunk.kv = &kv_;
    return runner_->Step(std::span<const SequenceChunk>(&chunk, 1), *allocator_);
  }

  std::unique_ptr<ModelRunner> runner_;
  std::unique_ptr<SimpleBlockAllocator> allocator_;
  SequenceKv kv_;
  std::vector<int32_t> tokens_;
};

TEST_F(TorchModelRunnerStepTest, RejectsBadInputBeforeAnyWork) {
  EXPECT_THAT(Run({1, 500}).status().message(), HasSubstr("token id 500"));
  EXPECT_THAT(Run({-1}).status().message(), HasSubstr("token id -1"));
  EXPECT_THAT(Run({}).status().message(), HasSubstr("no tokens"));
  EXPECT_THAT(Run({1}, 0, DepthPolicy::Fixed(4)).status().message(), HasSubstr("depth 4"));
  EXPECT_THAT(Run({1}, 255 + 1).status().message(), HasSubstr("max_position_embeddings"));
  EXPECT_THAT(Run({1}, 5).status().message(), HasSubstr("does not match the KV cache"));
  EXPECT_EQ(kv_.depths[0].num_tokens, 0);
  EXPECT_TRUE(kv_.depths[0].blocks.empty());

  SequenceChunk chunk;
  std::vector<int32_t> tokens = {1};
  chunk.tokens = tokens;
  chunk.kv = &kv_;
  std::vector<SequenceChunk> twice = {chunk, chunk};
  EXPECT_THAT(runner_->Step(twice, *allocator_).status().message(), HasSubstr("twice"));
}

TEST_F(TorchModelRunnerStepTest, FixedDepthHoldsBlocksOnlyUpToThatDepth) {
  auto result = Run({1, 2, 3, 4, 5, 6}, 0, DepthPolicy::Fixed(2));
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(kv_.unique.num_tokens, 6);
  EXPECT_EQ(kv_.depths[0].num_tokens, 6);
  EXPECT_EQ(kv_.depths[1].num_tokens, 6);
  EXPECT_EQ(kv_.depths[2].num_tokens, 0);
  EXPECT_TRUE(kv_.depths[2].blocks.empty());
  EXPECT_EQ(kv_.depths[0].blocks.size(), 2u);  // 6 tokens in blocks of 4
  EXPECT_EQ(result->stats.token_steps_per_depth, (std::vector<int64_t>{6, 6, 0}));
  for (int8_t depth : result->token_depth) EXPECT_EQ(depth, 2);
  EXPECT_EQ(result->logits.size(), 128u);
}

TEST_F(TorchModelRunnerStepTest, AdaptiveDepthTablesHoldExactlyTheRoutedTokens) {
  std::vector<int32_t> tokens;
  for (int i = 0; i < 40; ++i) tokens.push_back((i * 37) % 128);
  auto result = Run(tokens);
  ASSERT_TRUE(result.ok()) << result.status();
  std::vector<int32_t> reached(4, 0);
  for (int8_t depth : result->token_depth) {
    for (int r = 1; r <= depth; ++r) ++reached[r];
  }
  for (int r = 1; r <= 3; ++r) {
    EXPECT_EQ(kv_.depths[r - 1].num_tokens, reached[r]) << "depth " << r;
    EXPECT_EQ(result->stats.token_steps_per_depth[r - 1], reached[r]);
    EXPECT_EQ(static_cast<int>(kv_.depths[r - 1].blocks.size()), (reached[r] + 3) / 4);
  }
}

TEST_F(TorchModelRunnerStepTest, AllocatorExhaustionIsAnErrorNotACrash) {
  auto runner = Load(WriteModel("tiny_pool"), "cpu", "float32", /*blocks=*/3);
  ASSERT_TRUE(runner.ok());
  SimpleBlockAllocator allocator((*runner)->kv_geometry());
  SequenceKv kv;
  kv.depths.resize(3);
  std::vector<int32_t> tokens(40, 1);
  SequenceChunk chunk;
  chunk.tokens = tokens;
  chunk.policy = DepthPolicy::Fixed(3);
  chunk.kv = &kv;
  auto result = (*runner)->Step(std::span<const SequenceChunk>(&chunk, 1), allocator);
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), absl::StatusCode::kResourceExhausted);
}

}  // namespace
}  // namespace mor
