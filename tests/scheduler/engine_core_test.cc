// EngineCore::Step driven directly (no threads) on the fake model runner, in
// every batching mode: outputs, finish reasons, usage, preemption by
// recompute, aborts and deadlines, depth-wise specifics, and a randomized
// invariant test over thousands of operations with tiny KV pools.
#include "scheduler/engine_core.h"

#include <algorithm>
#include <cstdint>
#include <limits>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/scheduler/fake_model_runner.h"

namespace mor::scheduler_testing {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

const absl::Time kStart = absl::UnixEpoch() + absl::Hours(1);

std::vector<int32_t> Prompt(int32_t n, int32_t seed = 1) {
  std::vector<int32_t> p;
  for (int32_t i = 0; i < n; ++i) p.push_back((seed * 11 + i * 5) % 60);
  return p;
}

SchedulerConfig Config(BatchingMode mode, int32_t budget = 64, int32_t max_seqs = 32) {
  SchedulerConfig c;
  c.mode = mode;
  c.max_num_batched_tokens = budget;
  c.max_num_seqs = max_seqs;
  return c;
}

// What greedy decoding must produce for `request` (the engine's masking and
// stop rules applied to the fake model's logits).
struct Expected {
  std::vector<int32_t> tokens;
  std::vector<int32_t> depths;
  FinishReason reason = FinishReason::kMaxTokens;
};

Expected Oracle(const FakeModelRunner& runner, const FakeRunnerOptions& ro,
                const GenerationRequest& request) {
  Expected out;
  const int32_t vocab = ro.vocab_size;
  const auto& stops = request.sampling.stop_token_ids;
  int32_t token = request.prompt.back();
  int32_t position = static_cast<int32_t>(request.prompt.size()) - 1;
  while (true) {
    std::vector<float> row(vocab, 0.0f);
    row[runner.NextToken(token, position)] = 10.0f;
    if (ro.eos_token_id >= 0 && ro.eos_when && ro.eos_when(token, position)) {
      row[ro.eos_token_id] = 20.0f;
    }
    if (static_cast<int32_t>(out.tokens.size()) < request.min_tokens) {
      const float kNegInf = -std::numeric_limits<float>::infinity();
      if (!request.ignore_eos && ro.eos_token_id >= 0) row[ro.eos_token_id] = kNegInf;
      for (int32_t s : stops) row[s] = kNegInf;
    }
    const int32_t next =
        static_cast<int32_t>(std::max_element(row.begin(), row.end()) - row.begin());
    out.tokens.push_back(next);
    out.depths.push_back(runner.DepthOf(request.policy, token, position));
    if (std::find(stops.begin(), stops.end(), next) != stops.end()) {
      out.reason = FinishReason::kStopToken;
      break;
    }
    if (!request.ignore_eos && next == ro.eos_token_id) {
      out.reason = FinishReason::kEos;
      break;
    }
    if (static_cast<int32_t>(out.tokens.size()) >= request.max_tokens) {
      out.reason = FinishReason::kMaxTokens;
      break;
    }
    token = next;
    ++position;
  }
  return out;
}

// Token-recursion steps per depth of one unpreempted run of `request`.
std::vector<int64_t> ExpectedSteps(const FakeModelRunner& runner, const GenerationRequest& request,
                                   const std::vector<int32_t>& generated) {
  std::vector<int32_t> fed = request.prompt;
  fed.insert(fed.end(), generated.begin(), generated.end() - 1);
  std::vector<int64_t> steps(runner.config().num_recursions, 0);
  for (size_t p = 0; p < fed.size(); ++p) {
    const int32_t d = runner.DepthOf(request.policy, fed[p], static_cast<int32_t>(p));
    for (int r = 1; r <= d; ++r) ++steps[r - 1];
  }
  return steps;
}

// An EngineCore with sinks; Run() steps until idle, checking invariants.
class Bench {
 public:
  Bench(FakeRunnerOptions ro, SchedulerConfig config) : options_(ro), config_(config) {
    FakeCore fc = MakeFakeCore(ro, config);
    core_ = std::move(fc.core);
    runner_ = fc.runner;
  }

  absl::Status Submit(uint64_t id, GenerationRequest request) {
    auto sink = std::make_unique<RecordingSink>();
    requests_[id] = request;
    absl::Status status = core_->Submit(id, std::move(request), sink.get(), now_);
    sinks_[id] = std::move(sink);
    return status;
  }

  bool Step() {
    absl::StatusOr<bool> stepped = core_->Step(now_);
    EXPECT_TRUE(stepped.ok()) << stepped.status();
    now_ += absl::Milliseconds(1);
    ++steps_;
    const EngineStepStats& s = core_->last_step();
    EXPECT_LE(s.scheduled_tokens, config_.max_num_batched_tokens);
    EXPECT_LE(s.num_running, config_.max_num_seqs);
    preemptions_ += s.preemptions;
    const std::string err = CheckKvInvariants(core_->scheduler(), core_->kv());
    EXPECT_EQ(err, "") << "after step " << steps_;
    return stepped.ok() && *stepped;
  }

  int Run(int max_steps = 20000) {
    int n = 0;
    while (core_->has_work() && n < max_steps) {
      Step();
      ++n;
    }
    EXPECT_FALSE(core_->has_work());
    return n;
  }

  void ExpectAllFree() const {
    const KvUsage usage = core_->kv().Usage();
    EXPECT_EQ(usage.depth.used, 0);
    EXPECT_EQ(usage.unique.used, 0);
    EXPECT_EQ(core_->scheduler().num_free_slots(), runner_->num_state_slots());
    EXPECT_EQ(runner_->num_errors(), 0) << runner_->last_error();
  }

  // Checks request `id` finished OK with the oracle's tokens and reason.
  void ExpectOracle(uint64_t id) const {
    const RecordingSink& sink = *sinks_.at(id);
    const Expected want = Oracle(*runner_, options_, requests_.at(id));
    ASSERT_EQ(sink.finish_calls(), 1) << "request " << id;
    EXPECT_EQ(sink.contract_violations(), 0);
    const GenerationResult result = sink.result();
    EXPECT_TRUE(result.status.ok()) << result.status;
    EXPECT_EQ(result.reason, want.reason) << "request " << id;
    EXPECT_EQ(sink.token_ids(), want.tokens) << "request " << id;
    std::vector<int32_t> depths;
    for (const GeneratedToken& t : sink.tokens()) depths.push_back(t.depth);
    EXPECT_EQ(depths, want.depths) << "request " << id;
    EXPECT_EQ(result.usage.completion_tokens, static_cast<int32_t>(want.tokens.size()));
    EXPECT_EQ(result.usage.prompt_tokens, static_cast<int32_t>(requests_.at(id).prompt.size()));
  }

  EngineCore& core() { return *core_; }
  FakeModelRunner& runner() { return *runner_; }
  RecordingSink& sink(uint64_t id) { return *sinks_.at(id); }
  const GenerationRequest& request(uint64_t id) { return requests_.at(id); }
  absl::Time now() const { return now_; }
  int64_t preemptions() const { return preemptions_; }

 private:
  FakeRunnerOptions options_;
  SchedulerConfig config_;
  std::unique_ptr<EngineCore> core_;
  FakeModelRunner* runner_ = nullptr;
  std::map<uint64_t, std::unique_ptr<RecordingSink>> sinks_;
  std::map<uint64_t, GenerationRequest> requests_;
  absl::Time now_ = kStart;
  int64_t steps_ = 0;
  int64_t preemptions_ = 0;
};

// Model variants: unique layers (middle_cycle) or not, recursion-wise KV or
// recursive sharing.
struct Variant {
  const char* name;
  bool unique_layers;
  bool recursive_sharing;
};
constexpr Variant kVariants[] = {
    {"middle_cycle", true, false}, {"cycle", false, false}, {"sharing", true, true}};

FakeRunnerOptions OptionsFor(const Variant& v) {
  FakeRunnerOptions ro;
  ro.unique_layers = v.unique_layers;
  ro.recursive_sharing = v.recursive_sharing;
  return ro;
}

using ModeVariant = std::tuple<BatchingMode, Variant>;
class EngineCoreTest : public ::testing::TestWithParam<ModeVariant> {
 protected:
  BatchingMode mode() const { return std::get<0>(GetParam()); }
  FakeRunnerOptions options() const { return OptionsFor(std::get<1>(GetParam())); }
};

INSTANTIATE_TEST_SUITE_P(All, EngineCoreTest,
                         ::testing::Combine(::testing::Values(BatchingMode::kDepthGrouped,
                                                              BatchingMode::kContinuousDepthwise,
                                                              BatchingMode::kNoDepthAwareness),
                                            ::testing::ValuesIn(kVariants)),
                         [](const auto& info) {
                           return absl::StrCat(BatchingModeName(std::get<0>(info.param)), "_",
                                               std::get<1>(info.param).name);
                         });

TEST_P(EngineCoreTest, GreedyOutputsDepthsAndUsage) {
  Bench b(options(), Config(mode(), /*budget=*/24));
  const DepthPolicy policies[] = {DepthPolicy::Adaptive(), DepthPolicy::Fixed(1),
                                  DepthPolicy::Fixed(2), DepthPolicy::Fixed(3)};
  for (uint64_t id = 1; id <= 8; ++id) {
    ASSERT_TRUE(b.Submit(id, MakeRequest(Prompt(1 + 5 * id, id), 2 + id, policies[id % 4])).ok());
  }
  b.Run();
  for (uint64_t id = 1; id <= 8; ++id) {
    b.ExpectOracle(id);
    const GenerationResult result = b.sink(id).result();
    EXPECT_EQ(result.usage.token_steps_per_depth,
              ExpectedSteps(b.runner(), b.request(id), b.sink(id).token_ids()))
        << id;
    EXPECT_GT(result.usage.estimated_flops, 0);
  }
  EXPECT_EQ(b.preemptions(), 0);
  b.ExpectAllFree();
}

TEST_P(EngineCoreTest, FixedDepthUsesNoDeeperRecursion) {
  Bench b(options(), Config(mode()));
  ASSERT_TRUE(b.Submit(1, MakeRequest(Prompt(9), 5, DepthPolicy::Fixed(1))).ok());
  ASSERT_TRUE(b.Submit(2, MakeRequest(Prompt(9), 5, DepthPolicy::Fixed(2))).ok());
  b.Run();
  EXPECT_THAT(b.sink(1).result().usage.token_steps_per_depth, ElementsAre(13, 0, 0));
  EXPECT_THAT(b.sink(2).result().usage.token_steps_per_depth, ElementsAre(13, 13, 0));
  for (const GeneratedToken& t : b.sink(2).tokens()) EXPECT_EQ(t.depth, 2);
  b.ExpectAllFree();
}

// Every request's greedy output and depths are the same alone and batched
// with 31 others (mixed policies, prompt lengths, chunked prefill).
TEST_P(EngineCoreTest, AloneEqualsBatchedWith31Others) {
  std::mt19937 rng(11);
  std::vector<GenerationRequest> requests;
  for (int i = 0; i < 32; ++i) {
    const int depth = static_cast<int>(rng() % 4);
    requests.push_back(
        MakeRequest(Prompt(1 + rng() % 40, i), 1 + rng() % 12,
                    depth == 0 ? DepthPolicy::Adaptive() : DepthPolicy::Fixed(depth)));
  }
  FakeRunnerOptions ro = options();
  ro.num_depth_blocks = 1024;
  ro.num_state_slots = 256;
  Bench batched(ro, Config(mode(), /*budget=*/128));
  for (int i = 0; i < 32; ++i) ASSERT_TRUE(batched.Submit(i, requests[i]).ok());
  batched.Run();
  for (int i = 0; i < 32; ++i) {
    Bench alone(ro, Config(mode(), /*budget=*/128));
    ASSERT_TRUE(alone.Submit(i, requests[i]).ok());
    alone.Run();
    EXPECT_EQ(batched.sink(i).token_ids(), alone.sink(i).token_ids()) << i;
    EXPECT_EQ(batched.sink(i).result().usage.token_steps_per_depth,
              alone.sink(i).result().usage.token_steps_per_depth)
        << i;
    batched.ExpectOracle(i);
  }
  batched.ExpectAllFree();
}

// A tiny KV pool forces preemption by recompute; outputs do not change and
// no request starves.
TEST_P(EngineCoreTest, PreemptedRequestsRecomputeToIdenticalOutput) {
  FakeRunnerOptions ro = options();
  ro.num_depth_blocks = 40;
  ro.num_state_slots = 32;
  Bench b(ro, Config(mode(), /*budget=*/32, /*max_seqs=*/16));
  for (uint64_t id = 1; id <= 16; ++id) {
    ASSERT_TRUE(b.Submit(id, MakeRequest(Prompt(4 + id % 7, id), 12 + id % 5)).ok());
  }
  const int steps = b.Run(2000);
  EXPECT_GT(b.preemptions(), 0);
  EXPECT_LT(steps, 2000);
  int64_t recomputed = 0;
  for (uint64_t id = 1; id <= 16; ++id) {
    b.ExpectOracle(id);
    const auto& usage = b.sink(id).result().usage.token_steps_per_depth;
    recomputed += usage[0] - ExpectedSteps(b.runner(), b.request(id), b.sink(id).token_ids())[0];
  }
  EXPECT_GT(recomputed, 0);  // usage counts the recomputed tokens
  b.ExpectAllFree();
}

TEST_P(EngineCoreTest, NoStarvationUnderMemoryPressure) {
  FakeRunnerOptions ro = options();
  ro.num_depth_blocks = 30;
  ro.num_state_slots = 16;
  Bench b(ro, Config(mode(), /*budget=*/16, /*max_seqs=*/8));
  // A steady stream: a new request every other step while the first ones run.
  std::map<uint64_t, int> submitted_at;
  uint64_t next = 1;
  int step = 0;
  std::map<uint64_t, int> latency;
  while ((next <= 40 || b.core().has_work()) && step < 5000) {
    if (next <= 40 && step % 2 == 0) {
      submitted_at[next] = step;
      ASSERT_TRUE(b.Submit(next, MakeRequest(Prompt(2 + next % 9, next), 4 + next % 7)).ok());
      ++next;
    }
    b.Step();
    ++step;
    for (const auto& [id, at] : submitted_at) {
      if (!latency.contains(id) && b.sink(id).finished()) latency[id] = step - at;
    }
  }
  ASSERT_EQ(latency.size(), 40u);
  // 40 requests of <= 21 tokens: even served one after another (<= 3 steps
  // per token in depth-wise mode) each finishes within this bound.
  for (const auto& [id, steps] : latency) EXPECT_LE(steps, 40 * 21 * 3) << id;
  for (uint64_t id = 1; id <= 40; ++id) b.ExpectOracle(id);
  b.ExpectAllFree();
}

TEST_P(EngineCoreTest, AbortAndDeadlineFreeBlocksImmediately) {
  Bench b(options(), Config(mode()));
  const KvUsage baseline = b.core().kv().Usage();
  ASSERT_TRUE(b.Submit(1, MakeRequest(Prompt(10, 1), 30, DepthPolicy::Fixed(3))).ok());
  ASSERT_TRUE(b.Submit(2, MakeRequest(Prompt(10, 2), 30)).ok());
  GenerationRequest expiring = MakeRequest(Prompt(10, 3), 30);
  expiring.deadline = b.now() + absl::Milliseconds(4);
  ASSERT_TRUE(b.Submit(3, expiring).ok());
  for (int i = 0; i < 4; ++i) b.Step();  // every request holds blocks, some in flight
  EXPECT_GT(b.core().kv().Usage().depth.used, 0);

  EXPECT_TRUE(b.core().Abort(1, FinishReason::kCancelled));
  EXPECT_FALSE(b.core().Abort(1, FinishReason::kCancelled));  // already gone
  EXPECT_EQ(b.sink(1).finish_calls(), 1);
  EXPECT_EQ(b.sink(1).result().reason, FinishReason::kCancelled);
  EXPECT_EQ(CheckKvInvariants(b.core().scheduler(), b.core().kv()), "");

  b.Step();  // the deadline passed: request 3 ends before the step runs
  EXPECT_EQ(b.sink(3).finish_calls(), 1);
  EXPECT_EQ(b.sink(3).result().reason, FinishReason::kDeadline);
  EXPECT_TRUE(b.sink(3).result().status.ok());

  EXPECT_TRUE(b.core().Abort(2, FinishReason::kStopString));
  EXPECT_EQ(b.sink(2).result().reason, FinishReason::kStopString);
  const KvUsage after = b.core().kv().Usage();
  EXPECT_EQ(after.depth.free, baseline.depth.free);
  EXPECT_EQ(after.unique.free, baseline.unique.free);
  EXPECT_FALSE(b.core().has_work());
  for (uint64_t id = 1; id <= 3; ++id) {
    const std::vector<int32_t> got = b.sink(id).token_ids();
    const std::vector<int32_t> want = Oracle(b.runner(), options(), b.request(id)).tokens;
    EXPECT_TRUE(std::equal(got.begin(), got.end(), want.begin())) << id;  // a prefix
    EXPECT_EQ(b.sink(id).contract_violations(), 0);
  }
  b.ExpectAllFree();
}

TEST_P(EngineCoreTest, FinishReasons) {
  FakeRunnerOptions ro = options();
  ro.eos_when = [](int32_t token, int32_t position) { return position >= 5; };
  Bench b(ro, Config(mode()));
  // Prompt of 3: the token sampled from position 5 (the 4th) is EOS.
  ASSERT_TRUE(b.Submit(1, MakeRequest(Prompt(3), 10)).ok());
  GenerationRequest min_tokens = MakeRequest(Prompt(3), 10);
  min_tokens.min_tokens = 6;
  ASSERT_TRUE(b.Submit(2, min_tokens).ok());
  GenerationRequest ignore = MakeRequest(Prompt(3), 6);
  ignore.ignore_eos = true;
  ASSERT_TRUE(b.Submit(3, ignore).ok());
  GenerationRequest stop = MakeRequest(Prompt(2, 4), 10);
  const std::vector<int32_t> plain = b.runner().GreedyContinuation(Prompt(2, 4), 3);
  stop.sampling.stop_token_ids = {plain[1]};
  ASSERT_TRUE(b.Submit(4, stop).ok());
  GenerationRequest masked_stop = stop;
  masked_stop.min_tokens = 3;
  ASSERT_TRUE(b.Submit(5, masked_stop).ok());
  ASSERT_TRUE(b.Submit(6, MakeRequest(Prompt(1, 6), 2)).ok());
  b.Run();
  for (uint64_t id = 1; id <= 6; ++id) b.ExpectOracle(id);
  EXPECT_EQ(b.sink(1).result().reason, FinishReason::kEos);
  EXPECT_EQ(b.sink(1).token_ids().size(), 4u);
  EXPECT_EQ(b.sink(2).result().reason, FinishReason::kEos);
  EXPECT_EQ(b.sink(2).token_ids().size(), 7u);  // 6 with EOS masked, then EOS
  EXPECT_EQ(b.sink(3).result().reason, FinishReason::kMaxTokens);
  EXPECT_THAT(b.sink(3).token_ids(), ::testing::Contains(ro.eos_token_id));
  EXPECT_EQ(b.sink(4).result().reason, FinishReason::kStopToken);
  EXPECT_EQ(b.sink(4).token_ids().size(), 2u);
  ASSERT_GE(b.sink(5).token_ids().size(), 3u);  // the stop token is masked at first
  EXPECT_NE(b.sink(5).token_ids()[1], plain[1]);
  EXPECT_EQ(b.sink(6).result().reason, FinishReason::kMaxTokens);
  EXPECT_EQ(b.sink(6).token_ids().size(), 2u);
  b.ExpectAllFree();
}

TEST_P(EngineCoreTest, ModelErrorEndsTheStepsRequestsOnly) {
  Bench b(options(), Config(mode()));
  ASSERT_TRUE(b.Submit(1, MakeRequest(Prompt(6, 1), 4)).ok());
  b.Step();
  b.runner().FailNextCall(absl::InternalError("device lost"));
  b.Step();
  EXPECT_EQ(b.sink(1).finish_calls(), 1);
  EXPECT_EQ(b.sink(1).result().status.code(), absl::StatusCode::kInternal);
  EXPECT_THAT(b.sink(1).result().status.message(), HasSubstr("device lost"));
  EXPECT_EQ(CheckKvInvariants(b.core().scheduler(), b.core().kv()), "");
  ASSERT_TRUE(b.Submit(2, MakeRequest(Prompt(6, 2), 4)).ok());
  b.Run();
  b.ExpectOracle(2);
  const KvUsage usage = b.core().kv().Usage();
  EXPECT_EQ(usage.depth.used + usage.unique.used, 0);
}

TEST(EngineCoreSubmitTest, RejectsBadRequestsWithoutTouchingTheSink) {
  FakeRunnerOptions ro;
  ro.num_depth_blocks = 16;
  SchedulerConfig c = Config(BatchingMode::kContinuousDepthwise);
  c.max_queued_requests = 1;
  Bench b(ro, c);
  EXPECT_EQ(b.Submit(1, MakeRequest({}, 4)).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(b.Submit(2, MakeRequest({1, 64}, 4)).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(b.Submit(3, MakeRequest({1}, 4, DepthPolicy::Fixed(4))).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(b.Submit(4, MakeRequest({1}, 0)).code(), absl::StatusCode::kInvalidArgument);
  GenerationRequest bad_sampling = MakeRequest({1}, 4);
  bad_sampling.sampling.temperature = -1;
  EXPECT_EQ(b.Submit(5, bad_sampling).code(), absl::StatusCode::kInvalidArgument);
  // 15 usable blocks; 40 tokens at 3 depths need 30.
  const absl::Status never = b.Submit(6, MakeRequest(Prompt(20), 20));
  EXPECT_EQ(never.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(never.message(), HasSubstr("KV"));
  ASSERT_TRUE(b.Submit(7, MakeRequest(Prompt(3), 2)).ok());
  const absl::Status full = b.Submit(8, MakeRequest(Prompt(3), 2));
  EXPECT_EQ(full.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(full.message(), HasSubstr("max_queued_requests"));
  for (uint64_t id : {1, 2, 3, 4, 5, 6, 8}) {
    EXPECT_EQ(b.sink(id).finish_calls(), 0) << id;
    EXPECT_TRUE(b.sink(id).tokens().empty()) << id;
  }
  b.Run();
  b.ExpectOracle(7);
}

// ---------------------------------------------------------------------------
// Continuous depth-wise specifics.

TEST(EngineCoreDepthwiseTest, TokensAtDifferentDepthsShareOneBlockCall) {
  Bench b(FakeRunnerOptions{}, Config(BatchingMode::kContinuousDepthwise));
  ASSERT_TRUE(b.Submit(1, MakeRequest(Prompt(4, 1), 6, DepthPolicy::Fixed(3))).ok());
  b.Step();
  ASSERT_TRUE(b.Submit(2, MakeRequest(Prompt(4, 2), 6, DepthPolicy::Fixed(3))).ok());
  b.Step();
  // Request 1 takes recursion 2 while request 2 enters (recursion 1): one call.
  const FakeCall call = b.runner().calls().back();
  ASSERT_EQ(call.block_call_depths.size(), 1u);
  EXPECT_THAT(call.block_call_depths[0], ElementsAre(1, 2));
  EXPECT_EQ(call.block_rows, 8);
  EXPECT_EQ(b.core().last_step().block_calls, 1);
  EXPECT_THAT(b.core().last_step().token_steps_per_depth, ElementsAre(4, 4, 0));
  ASSERT_TRUE(b.Submit(3, MakeRequest(Prompt(4, 3), 6, DepthPolicy::Fixed(3))).ok());
  b.Step();
  // 1 at recursion 3, 2 at recursion 2, 3 entering: still one call.
  const FakeCall all = b.runner().calls().back();
  ASSERT_EQ(all.block_call_depths.size(), 1u);
  EXPECT_THAT(all.block_call_depths[0], ElementsAre(1, 2, 3));
  EXPECT_THAT(b.core().last_step().token_steps_per_depth, ElementsAre(4, 4, 4));
  b.Run();
  b.ExpectOracle(3);
  b.ExpectOracle(1);
  b.ExpectOracle(2);
  b.ExpectAllFree();
}

TEST(EngineCoreDepthwiseTest, RecursiveSharingRunsOneCallPerDepth) {
  FakeRunnerOptions ro;
  ro.recursive_sharing = true;
  Bench b(ro, Config(BatchingMode::kContinuousDepthwise));
  for (uint64_t id = 1; id <= 6; ++id)
    ASSERT_TRUE(b.Submit(id, MakeRequest(Prompt(3, id), 8)).ok());
  b.Run();
  for (const FakeCall& c : b.runner().calls()) {
    for (const auto& depths : c.block_call_depths) EXPECT_EQ(depths.size(), 1u);
  }
  for (uint64_t id = 1; id <= 6; ++id) b.ExpectOracle(id);
  b.ExpectAllFree();
}

// A decode token enters only after the token before it was sampled and
// delivered, and every group keeps its slots until it exits.
TEST(EngineCoreDepthwiseTest, NextTokenEntersOnlyAfterItWasSampled) {
  Bench b(FakeRunnerOptions{}, Config(BatchingMode::kContinuousDepthwise, /*budget=*/16));
  for (uint64_t id = 1; id <= 10; ++id) {
    ASSERT_TRUE(b.Submit(id, MakeRequest(Prompt(2 + id, id), 10)).ok());
  }
  std::map<const SequenceKv*, uint64_t> id_of;
  for (const SequenceState* seq : b.core().scheduler().sequences()) id_of[&seq->kv] = seq->id;
  int checked = 0;
  while (b.core().has_work()) {
    std::map<uint64_t, size_t> delivered;
    for (uint64_t id = 1; id <= 10; ++id) delivered[id] = b.sink(id).token_ids().size();
    b.Step();
    const FakeCall call = b.runner().calls().back();
    for (size_t g = 0; g < call.kvs.size(); ++g) {
      if (!call.enter[g]) continue;
      const uint64_t id = id_of.at(call.kvs[g]);
      const int32_t prompt = static_cast<int32_t>(b.request(id).prompt.size());
      const int32_t start = call.start_positions[g];
      if (start < prompt) continue;  // prefill
      // Position `start` holds generated token start - prompt: delivered before this step.
      ASSERT_GT(delivered[id], static_cast<size_t>(start - prompt)) << id;
      EXPECT_EQ(call.tokens[g][0], b.sink(id).token_ids()[start - prompt]);
      ++checked;
    }
  }
  EXPECT_GT(checked, 50);
  for (uint64_t id = 1; id <= 10; ++id) b.ExpectOracle(id);
  b.ExpectAllFree();
}

// ---------------------------------------------------------------------------
// Randomized invariants: thousands of submits / steps / aborts / deadlines
// on tiny pools; after every operation the KV accounting matches the live
// sequences; every request ends exactly once with a prefix of (or exactly)
// its greedy output; at the end everything is free.

void RandomizedRun(BatchingMode mode, const Variant& variant, uint32_t seed) {
  SCOPED_TRACE(absl::StrCat(BatchingModeName(mode), " ", variant.name, " seed ", seed));
  std::mt19937 rng(seed);
  FakeRunnerOptions ro = OptionsFor(variant);
  ro.num_depth_blocks = 20 + rng() % 40;
  ro.num_state_slots = 8 + rng() % 40;
  ro.max_position_embeddings = 64;
  const int32_t eos_mod = 17 + rng() % 20;
  ro.eos_when = [eos_mod](int32_t token, int32_t position) {
    return (token * 7 + position) % eos_mod == 0;
  };
  SchedulerConfig c = Config(mode, 8 + rng() % 40, 2 + rng() % 10);
  c.max_queued_requests = 4 + rng() % 20;
  c.priority_scheduling = rng() % 2 == 0;
  Bench b(ro, c);
  std::vector<uint64_t> live;
  std::map<uint64_t, bool> aborted;  // accepted requests
  uint64_t next_id = 1;
  for (int op = 0; op < 2500; ++op) {
    const uint32_t r = rng() % 100;
    if (r < 22) {
      const int depth = static_cast<int>(rng() % 4);
      GenerationRequest req =
          MakeRequest(Prompt(1 + rng() % 24, static_cast<int32_t>(rng() % 1000)), 1 + rng() % 16,
                      depth == 0 ? DepthPolicy::Adaptive() : DepthPolicy::Fixed(depth),
                      static_cast<int32_t>(rng() % 4));
      if (rng() % 4 == 0) req.min_tokens = static_cast<int32_t>(rng() % 6);
      if (rng() % 5 == 0) req.sampling.stop_token_ids = {static_cast<int32_t>(rng() % 64)};
      if (rng() % 6 == 0) req.deadline = b.now() + absl::Milliseconds(1 + rng() % 60);
      const uint64_t id = next_id++;
      const absl::Status status = b.Submit(id, req);
      if (status.ok()) {
        live.push_back(id);
        aborted[id] = false;
      } else {
        EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted) << status;
        EXPECT_EQ(b.sink(id).finish_calls(), 0);
      }
    } else if (r < 27 && !live.empty()) {
      const uint64_t id = live[rng() % live.size()];
      const bool known = !b.sink(id).finished();
      EXPECT_EQ(b.core().Abort(id, FinishReason::kCancelled), known);
      if (known) aborted[id] = true;
    } else {
      b.Step();
    }
    std::erase_if(live, [&](uint64_t id) { return b.sink(id).finished(); });
    const std::string err = CheckKvInvariants(b.core().scheduler(), b.core().kv());
    ASSERT_EQ(err, "") << "after operation " << op;
  }
  b.Run(20000);
  EXPECT_GT(aborted.size(), 100u);
  for (const auto& [id, was_aborted] : aborted) {
    RecordingSink& sink = b.sink(id);
    ASSERT_EQ(sink.finish_calls(), 1) << id;
    EXPECT_EQ(sink.contract_violations(), 0) << id;
    const GenerationResult result = sink.result();
    ASSERT_TRUE(result.status.ok()) << result.status;
    const Expected want = Oracle(b.runner(), ro, b.request(id));
    const std::vector<int32_t> got = sink.token_ids();
    if (was_aborted || result.reason == FinishReason::kDeadline) {
      EXPECT_EQ(result.reason, was_aborted ? FinishReason::kCancelled : FinishReason::kDeadline);
      ASSERT_LE(got.size(), want.tokens.size()) << id;
      EXPECT_TRUE(std::equal(got.begin(), got.end(), want.tokens.begin())) << id;
    } else {
      EXPECT_EQ(result.reason, want.reason) << id;
      EXPECT_EQ(got, want.tokens) << id;
    }
    EXPECT_EQ(result.usage.completion_tokens, static_cast<int32_t>(got.size()));
  }
  b.ExpectAllFree();
  EXPECT_EQ(CheckKvInvariants(b.core().scheduler(), b.core().kv()), "");
}

TEST(EngineCoreRandomizedTest, InvariantsHoldUnderRandomOperations) {
  uint32_t seed = 1;
  for (BatchingMode mode : {BatchingMode::kDepthGrouped, BatchingMode::kContinuousDepthwise}) {
    for (const Variant& variant : kVariants) {
      for (int i = 0; i < 2; ++i) RandomizedRun(mode, variant, seed++);
    }
  }
  RandomizedRun(BatchingMode::kNoDepthAwareness, kVariants[0], seed++);
}

}  // namespace
}  // namespace mor::scheduler_testing
