// The embedded default model (models/default) through the engine: greedy
// generation gives the recorded tokens (golden output, written by
// tools/train/evaluate.py from the PyTorch reference), in both batching modes
// and with every prompt batched together, and the router's exit shares on a
// fixed validation text stay within the recorded band.
#include <cmath>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "model/model_runner.h"
#include "model/simple_block_allocator.h"
#include "nlohmann/json.hpp"
#include "scheduler/engine_core.h"
#include "scheduler/kv_cache_manager.h"

#ifndef MOR_SOURCE_DIR
#error "MOR_SOURCE_DIR must be defined by the build"
#endif

namespace mor {
namespace {

const std::string kModelDir = std::string(MOR_SOURCE_DIR) + "/models/default";
const std::string kGoldenPath =
    std::string(MOR_SOURCE_DIR) + "/tests/data/default_model_golden.json";

class CollectingSink : public GenerationSink {
 public:
  void OnTokens(absl::Span<const GeneratedToken> tokens) override {
    for (const GeneratedToken& t : tokens) ids.push_back(t.token_id);
  }
  void OnFinished(const GenerationResult& r) override { finished = true; }
  std::vector<int32_t> ids;
  bool finished = false;
};

nlohmann::json LoadGolden() {
  std::ifstream in(kGoldenPath);
  EXPECT_TRUE(in.good()) << "cannot read " << kGoldenPath
                         << " (regenerate with tools/train/evaluate.py)";
  if (!in.good()) return nullptr;
  return nlohmann::json::parse(in);
}

ModelRunnerOptions Options(bool depth_aware) {
  ModelRunnerOptions options;
  options.model_dir = kModelDir;
  options.block_size = 16;
  options.num_depth_blocks = 512;
  options.num_threads = 2;
  options.num_state_slots = 512;
  options.depth_aware = depth_aware;
  return options;
}

DepthPolicy PolicyFromName(const std::string& name) {
  if (name == "adaptive") return DepthPolicy::Adaptive();
  return DepthPolicy::Fixed(std::stoi(name.substr(5)));  // "fixedN"
}

class DefaultModelTest : public ::testing::TestWithParam<BatchingMode> {};

TEST_P(DefaultModelTest, GreedyGenerationMatchesGolden) {
  const nlohmann::json golden = LoadGolden();
  ASSERT_FALSE(golden.is_null());
  auto runner = CreateTorchModelRunner(Options(GetParam() != BatchingMode::kNoDepthAwareness));
  ASSERT_TRUE(runner.ok()) << runner.status();
  auto kv = KvCacheManager::Create((*runner)->kv_geometry());
  ASSERT_TRUE(kv.ok()) << kv.status();
  SchedulerConfig config;
  config.mode = GetParam();
  config.max_num_batched_tokens = 64;
  config.max_num_seqs = 32;
  EngineCore core(std::move(*runner), std::move(*kv), config);

  // Every prompt x policy in one batch.
  std::vector<std::unique_ptr<CollectingSink>> sinks;
  std::vector<std::vector<int32_t>> want;
  std::vector<std::string> labels;
  for (const nlohmann::json& prompt : golden["prompts"]) {
    for (const auto& [policy, expected] : prompt["greedy"].items()) {
      std::vector<int32_t> ids = expected["ids"].get<std::vector<int32_t>>();
      ids.resize(expected["robust_len"].get<size_t>());
      if (ids.empty()) continue;
      GenerationRequest request;
      request.request_id = absl::StrCat(sinks.size());
      request.prompt = prompt["ids"].get<std::vector<int32_t>>();
      request.policy = PolicyFromName(policy);
      request.max_tokens = static_cast<int32_t>(ids.size());
      request.ignore_eos = true;
      sinks.push_back(std::make_unique<CollectingSink>());
      ASSERT_TRUE(core.Submit(sinks.size(), request, sinks.back().get(), absl::Now()).ok());
      want.push_back(ids);
      labels.push_back(absl::StrCat("\"", prompt["text"].get<std::string>(), "\" ", policy));
    }
  }
  ASSERT_GE(want.size(), 8u) << "too few robust golden continuations";
  for (int guard = 0; guard < 100000 && core.has_work(); ++guard) {
    auto stepped = core.Step(absl::Now());
    ASSERT_TRUE(stepped.ok()) << stepped.status();
  }
  for (size_t i = 0; i < want.size(); ++i) {
    ASSERT_TRUE(sinks[i]->finished) << labels[i];
    EXPECT_EQ(sinks[i]->ids, want[i]) << labels[i];
  }
}

INSTANTIATE_TEST_SUITE_P(Modes, DefaultModelTest,
                         ::testing::Values(BatchingMode::kContinuousDepthwise,
                                           BatchingMode::kDepthGrouped),
                         [](const auto& info) {
                           return std::string(BatchingModeName(info.param));
                         });

// Adaptive routing on the recorded validation windows (each one prefill of
// its own sequence): the share of tokens exiting at each depth is within
// `share_band` of the recorded shares.
TEST(DefaultModelRoutingTest, ExitSharesOnValidationTextWithinBand) {
  const nlohmann::json golden = LoadGolden();
  ASSERT_FALSE(golden.is_null());
  auto runner = CreateTorchModelRunner(Options(/*depth_aware=*/true));
  ASSERT_TRUE(runner.ok()) << runner.status();
  const int nr = (*runner)->config().num_recursions;
  SimpleBlockAllocator allocator((*runner)->kv_geometry());
  std::vector<int64_t> exits(nr + 1, 0);
  int64_t total = 0;
  for (const nlohmann::json& window : golden["share_windows"]) {
    const std::vector<int32_t> tokens = window.get<std::vector<int32_t>>();
    SequenceKv kv;
    kv.depths.resize((*runner)->kv_geometry().num_depth_levels);
    SequenceChunk chunk;
    chunk.tokens = tokens;
    chunk.kv = &kv;
    chunk.logits = LogitsRequest::kNone;
    auto result = (*runner)->Step(std::span<const SequenceChunk>(&chunk, 1), allocator);
    ASSERT_TRUE(result.ok()) << result.status();
    ASSERT_EQ(result->token_depth.size(), tokens.size());
    for (int8_t depth : result->token_depth) {
      ASSERT_GE(depth, 1);
      ASSERT_LE(depth, nr);
      ++exits[depth];
      ++total;
    }
    allocator.Release(kv);
  }
  const double band = golden["share_band"].get<double>();
  const std::vector<double> recorded = golden["exit_shares"].get<std::vector<double>>();
  ASSERT_EQ(static_cast<int>(recorded.size()), nr);
  for (int d = 1; d <= nr; ++d) {
    const double share = static_cast<double>(exits[d]) / static_cast<double>(total);
    EXPECT_NEAR(share, recorded[d - 1], band) << "depth " << d;
    // The router really varies depth: every depth takes a visible share.
    EXPECT_GT(share, 0.05) << "depth " << d;
  }
}

}  // namespace
}  // namespace mor
