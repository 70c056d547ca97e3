// The engine with the real LibTorch model on the parity fixtures: greedy
// generations equal the PyTorch reference's (every fixed depth and adaptive
// routing), in every batching mode, and a request's output is the same run
// alone or batched with 31 others.
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "gtest/gtest.h"
#include "model/model_runner.h"
#include "scheduler/engine_core.h"
#include "scheduler/kv_cache_manager.h"
#include "tests/model/parity_fixtures.h"

namespace mor {
namespace {

using testing::LoadParityManifest;
using testing::ParityCase;
using testing::ParityExpectations;

constexpr BatchingMode kModes[] = {BatchingMode::kContinuousDepthwise, BatchingMode::kDepthGrouped,
                                   BatchingMode::kNoDepthAwareness};

class CollectingSink : public GenerationSink {
 public:
  void OnTokens(absl::Span<const GeneratedToken> tokens) override {
    for (const GeneratedToken& t : tokens) {
      ids.push_back(t.token_id);
      depths.push_back(t.depth);
    }
  }
  void OnFinished(const GenerationResult& r) override {
    result = r;
    finished = true;
  }
  std::vector<int32_t> ids;
  std::vector<int32_t> depths;
  GenerationResult result;
  bool finished = false;
};

DepthPolicy PolicyFromName(const std::string& name) {
  absl::string_view rest = name;
  int depth = 0;
  if (absl::ConsumePrefix(&rest, "fixed") && absl::SimpleAtoi(rest, &depth)) {
    return DepthPolicy::Fixed(depth);
  }
  return DepthPolicy::Adaptive();
}

std::unique_ptr<EngineCore> MakeCore(const std::string& model_dir, BatchingMode mode,
                                     int32_t max_batched_tokens = 64) {
  ModelRunnerOptions options;
  options.model_dir = model_dir;
  options.block_size = 4;
  options.num_depth_blocks = 2048;
  options.num_threads = 2;
  options.num_state_slots = 1024;
  options.depth_aware = mode != BatchingMode::kNoDepthAwareness;
  auto runner = CreateTorchModelRunner(options);
  EXPECT_TRUE(runner.ok()) << runner.status();
  if (!runner.ok()) return nullptr;
  auto kv = KvCacheManager::Create((*runner)->kv_geometry());
  EXPECT_TRUE(kv.ok()) << kv.status();
  SchedulerConfig config;
  config.mode = mode;
  config.max_num_batched_tokens = max_batched_tokens;  // forces chunked prefill
  config.max_num_seqs = 64;
  return std::make_unique<EngineCore>(std::move(*runner), std::move(*kv), config);
}

GenerationRequest Greedy(std::vector<int32_t> prompt, DepthPolicy policy, int32_t max_tokens) {
  GenerationRequest request;
  request.request_id = "test";
  request.prompt = std::move(prompt);
  request.policy = policy;
  request.max_tokens = max_tokens;
  request.ignore_eos = true;
  return request;
}

// Runs every submitted request to the end.
void RunToCompletion(EngineCore& core) {
  for (int guard = 0; guard < 100000 && core.has_work(); ++guard) {
    auto stepped = core.Step(absl::Now());
    ASSERT_TRUE(stepped.ok()) << stepped.status();
  }
  ASSERT_FALSE(core.has_work());
}

class EngineModelParityTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto cases = LoadParityManifest();
    ASSERT_TRUE(cases.ok()) << cases.status();
    cases_ = *cases;
  }
  const ParityCase* Find(const std::string& name) const {
    for (const ParityCase& c : cases_) {
      if (c.name == name) return &c;
    }
    return nullptr;
  }
  std::vector<ParityCase> cases_;
};

TEST_F(EngineModelParityTest, GreedyGenerationMatchesReferenceInEveryMode) {
  int compared = 0;
  for (const ParityCase& c : cases_) {
    auto expected = ParityExpectations::Open(c);
    ASSERT_TRUE(expected.ok()) << expected.status();
    for (BatchingMode mode : kModes) {
      std::unique_ptr<EngineCore> core = MakeCore(c.model_dir, mode, /*max_batched_tokens=*/16);
      ASSERT_NE(core, nullptr);
      // Every (sequence, policy) with a robust reference continuation, all
      // submitted together.
      std::vector<std::unique_ptr<CollectingSink>> sinks;
      std::vector<std::vector<int32_t>> want;
      std::vector<std::string> labels;
      for (int seq = 0; seq < 2; ++seq) {
        for (const std::string& policy : c.policies) {
          std::vector<int32_t> greedy = expected->Greedy(policy, seq);
          if (greedy.empty()) continue;
          sinks.push_back(std::make_unique<CollectingSink>());
          ASSERT_TRUE(core->Submit(sinks.size(),
                                   Greedy(expected->Tokens(seq), PolicyFromName(policy),
                                          static_cast<int32_t>(greedy.size())),
                                   sinks.back().get(), absl::Now())
                          .ok());
          want.push_back(greedy);
          labels.push_back(
              absl::StrCat(c.name, " ", policy, " seq ", seq, " ", BatchingModeName(mode)));
        }
      }
      RunToCompletion(*core);
      for (size_t i = 0; i < sinks.size(); ++i) {
        ASSERT_TRUE(sinks[i]->finished) << labels[i];
        EXPECT_TRUE(sinks[i]->result.status.ok()) << labels[i] << sinks[i]->result.status;
        EXPECT_EQ(sinks[i]->ids, want[i]) << labels[i];
        ++compared;
      }
      const KvUsage usage = core->kv().Usage();
      EXPECT_EQ(usage.depth.used, 0) << c.name;
      EXPECT_EQ(usage.unique.used, 0) << c.name;
    }
  }
  EXPECT_GT(compared, 100);
}

// 32 requests (mixed prompt lengths and depth policies) batched together give
// each request the same tokens as running it alone, in both real batching
// modes and for adaptive routing and every fixed depth.
TEST_F(EngineModelParityTest, BatchedEqualsAlone) {
  for (const std::string name : {"middle_cycle_ec_rw", "middle_cycle_tc_rw", "cycle_ec_rs"}) {
    const ParityCase* c = Find(name);
    ASSERT_NE(c, nullptr) << name;
    std::mt19937 rng(7);
    struct Spec {
      std::vector<int32_t> prompt;
      DepthPolicy policy;
      int32_t max_tokens;
    };
    std::vector<Spec> specs;
    for (int i = 0; i < 32; ++i) {
      Spec spec;
      const int length = 1 + static_cast<int>(rng() % 24);
      for (int t = 0; t < length; ++t) spec.prompt.push_back(static_cast<int32_t>(rng() % 256));
      const int choice = i % (c->num_recursions + 1);
      spec.policy = choice == 0 ? DepthPolicy::Adaptive() : DepthPolicy::Fixed(choice);
      spec.max_tokens = 3 + static_cast<int32_t>(rng() % 6);
      specs.push_back(spec);
    }
    for (BatchingMode mode : {BatchingMode::kContinuousDepthwise, BatchingMode::kDepthGrouped}) {
      std::vector<std::vector<int32_t>> alone;
      for (const Spec& spec : specs) {
        std::unique_ptr<EngineCore> core = MakeCore(c->model_dir, mode);
        CollectingSink sink;
        ASSERT_TRUE(
            core->Submit(1, Greedy(spec.prompt, spec.policy, spec.max_tokens), &sink, absl::Now())
                .ok());
        RunToCompletion(*core);
        alone.push_back(sink.ids);
      }
      std::unique_ptr<EngineCore> core = MakeCore(c->model_dir, mode);
      std::vector<std::unique_ptr<CollectingSink>> sinks;
      for (size_t i = 0; i < specs.size(); ++i) {
        sinks.push_back(std::make_unique<CollectingSink>());
        ASSERT_TRUE(core->Submit(i + 1,
                                 Greedy(specs[i].prompt, specs[i].policy, specs[i].max_tokens),
                                 sinks.back().get(), absl::Now())
                        .ok());
      }
      int64_t mixed_depth_calls = 0;
      for (int guard = 0; guard < 100000 && core->has_work(); ++guard) {
        auto stepped = core->Step(absl::Now());
        ASSERT_TRUE(stepped.ok()) << stepped.status();
        int depths_present = 0;
        for (int64_t n : core->last_step().token_steps_per_depth) depths_present += n > 0;
        if (depths_present > 1 && core->last_step().block_calls == 1) ++mixed_depth_calls;
      }
      for (size_t i = 0; i < specs.size(); ++i) {
        EXPECT_EQ(sinks[i]->ids, alone[i])
            << name << " request " << i << " " << BatchingModeName(mode);
        // Fixed depth d: no token-recursion step deeper than d.
        if (!specs[i].policy.adaptive()) {
          const auto& steps = sinks[i]->result.usage.token_steps_per_depth;
          for (size_t r = specs[i].policy.fixed_depth; r < steps.size(); ++r) {
            EXPECT_EQ(steps[r], 0) << name << " request " << i;
          }
        }
      }
      if (mode == BatchingMode::kContinuousDepthwise && c->sharing == "middle_cycle") {
        EXPECT_GT(mixed_depth_calls, 0) << name << ": no block call mixed depths";
      }
    }
  }
}

}  // namespace
}  // namespace mor
