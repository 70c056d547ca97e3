// Engine semantics on a deterministic fake model (no torch, no gRPC): FIFO
// order, stop criteria, min_tokens masking, abort / stop / deadline, KV blocks
// freed, usage accounting.
#include "server/engine.h"

#include <memory>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/flops_estimate.h"
#include "tests/server/fake_model_runner.h"

namespace mor {
namespace {

using ::testing::ElementsAre;
using testing::FakeModelRunner;

// Records everything; Wait() blocks until OnFinished.
class RecordingSink : public GenerationSink {
 public:
  explicit RecordingSink(std::vector<int>* finish_order = nullptr, int tag = 0,
                         absl::Mutex* order_mu = nullptr)
      : finish_order_(finish_order), tag_(tag), order_mu_(order_mu) {}

  void OnTokens(absl::Span<const GeneratedToken> tokens) override {
    absl::MutexLock lock(&mu_);
    for (const GeneratedToken& t : tokens) {
      this->tokens.push_back(t.token_id);
      depths.push_back(t.depth);
    }
    if (!first_token_.HasBeenNotified()) first_token_.Notify();
  }
  void OnFinished(const GenerationResult& r) override {
    if (finish_order_ != nullptr) {
      absl::MutexLock lock(order_mu_);
      finish_order_->push_back(tag_);
    }
    result = r;
    done_.Notify();
  }
  bool Wait(absl::Duration timeout = absl::Seconds(10)) {
    return done_.WaitForNotificationWithTimeout(timeout);
  }
  bool WaitFirstToken() { return first_token_.WaitForNotificationWithTimeout(absl::Seconds(10)); }

  absl::Mutex mu_;
  std::vector<int32_t> tokens;
  std::vector<int32_t> depths;
  GenerationResult result;

 private:
  std::vector<int>* finish_order_;
  int tag_;
  absl::Mutex* order_mu_;
  absl::Notification first_token_;
  absl::Notification done_;
};

GenerationRequest Request(std::vector<int32_t> prompt, int32_t max_tokens) {
  GenerationRequest r;
  r.request_id = "test";
  r.prompt = std::move(prompt);
  r.max_tokens = max_tokens;
  return r;
}

class EngineTest : public ::testing::Test {
 protected:
  void SetUp() override { MakeEngine(std::make_unique<FakeModelRunner>()); }
  void MakeEngine(std::unique_ptr<FakeModelRunner> runner) {
    runner_ = runner.get();
    auto engine = Engine::Create(std::move(runner));
    ASSERT_TRUE(engine.ok()) << engine.status();
    engine_ = std::move(*engine);
  }
  bool AllBlocksFree() const {
    return engine_->free_blocks(KvPool::kDepth) == engine_->kv_geometry().num_depth_blocks - 1;
  }

  FakeModelRunner* runner_ = nullptr;
  std::unique_ptr<Engine> engine_;
};

TEST_F(EngineTest, GreedyDecodeUntilMaxTokens) {
  RecordingSink sink;
  ASSERT_TRUE(engine_->Submit(Request({3, 4}, 5), &sink).ok());
  ASSERT_TRUE(sink.Wait());
  ASSERT_TRUE(sink.result.status.ok());
  EXPECT_EQ(sink.result.reason, FinishReason::kMaxTokens);
  EXPECT_THAT(sink.tokens, ElementsAre(5, 6, 7, 8, 9));
  EXPECT_THAT(sink.depths, ElementsAre(2, 2, 2, 2, 2));  // adaptive_depth
  const GenerationUsage& usage = sink.result.usage;
  EXPECT_EQ(usage.prompt_tokens, 2);
  EXPECT_EQ(usage.completion_tokens, 5);
  EXPECT_THAT(usage.token_steps_per_depth, ElementsAre(6, 6, 0));  // 2 + 5 - 1 fed tokens
  EXPECT_DOUBLE_EQ(usage.estimated_flops, 12 * FlopsPerTokenRecursion(engine_->config()));
  EXPECT_TRUE(AllBlocksFree());
}

TEST_F(EngineTest, FixedDepthReachesOnlyThatDepth) {
  GenerationRequest request = Request({1}, 4);
  request.policy = DepthPolicy::Fixed(3);
  RecordingSink sink;
  ASSERT_TRUE(engine_->Submit(request, &sink).ok());
  ASSERT_TRUE(sink.Wait());
  EXPECT_THAT(sink.depths, ElementsAre(3, 3, 3, 3));
  EXPECT_THAT(sink.result.usage.token_steps_per_depth, ElementsAre(4, 4, 4));
}

TEST_F(EngineTest, RequestsRunInFifoOrder) {
  absl::Mutex order_mu;
  std::vector<int> order;
  std::vector<std::unique_ptr<RecordingSink>> sinks;
  runner_->set_step_delay(absl::Milliseconds(1));
  for (int i = 0; i < 4; ++i) {
    sinks.push_back(std::make_unique<RecordingSink>(&order, i, &order_mu));
    ASSERT_TRUE(engine_->Submit(Request({i}, 3), sinks.back().get()).ok());
  }
  for (auto& sink : sinks) ASSERT_TRUE(sink->Wait());
  EXPECT_THAT(order, ElementsAre(0, 1, 2, 3));
  EXPECT_THAT(sinks[2]->tokens, ElementsAre(3, 4, 5));
  EXPECT_EQ(engine_->counters().requests_finished, 4);
  EXPECT_EQ(engine_->counters().tokens_generated, 12);
}

TEST_F(EngineTest, StopsAtEosUnlessIgnored) {
  RecordingSink eos;
  ASSERT_TRUE(engine_->Submit(Request({12}, 10), &eos).ok());  // 13, 14, 15 = eos
  ASSERT_TRUE(eos.Wait());
  EXPECT_EQ(eos.result.reason, FinishReason::kEos);
  EXPECT_THAT(eos.tokens, ElementsAre(13, 14, 15));

  GenerationRequest ignore = Request({12}, 5);
  ignore.ignore_eos = true;
  RecordingSink ignored;
  ASSERT_TRUE(engine_->Submit(ignore, &ignored).ok());
  ASSERT_TRUE(ignored.Wait());
  EXPECT_EQ(ignored.result.reason, FinishReason::kMaxTokens);
  EXPECT_THAT(ignored.tokens, ElementsAre(13, 14, 15, 0, 1));
}

TEST_F(EngineTest, StopTokenAndMinTokensMasking) {
  GenerationRequest request = Request({1}, 10);
  request.sampling.stop_token_ids = {4};
  RecordingSink stop;
  ASSERT_TRUE(engine_->Submit(request, &stop).ok());
  ASSERT_TRUE(stop.Wait());
  EXPECT_EQ(stop.result.reason, FinishReason::kStopToken);
  EXPECT_THAT(stop.tokens, ElementsAre(2, 3, 4));

  // With min_tokens 3 the stop token 3 is masked at positions 1..3: the
  // next most likely token (4) is taken instead.
  request = Request({1}, 10);
  request.sampling.stop_token_ids = {3};
  request.min_tokens = 3;
  RecordingSink masked;
  ASSERT_TRUE(engine_->Submit(request, &masked).ok());
  ASSERT_TRUE(masked.Wait());
  EXPECT_THAT(masked.tokens, ::testing::Not(::testing::Contains(3)));
  EXPECT_EQ(masked.tokens.front(), 2);
  EXPECT_EQ(masked.tokens[1], 4);
}

TEST_F(EngineTest, AbortRunningRequestFreesBlocks) {
  runner_->set_step_delay(absl::Milliseconds(2));
  RecordingSink sink;
  auto id = engine_->Submit(Request({1, 2, 3}, 60), &sink);
  ASSERT_TRUE(id.ok());
  ASSERT_TRUE(sink.WaitFirstToken());
  engine_->Abort(*id);
  ASSERT_TRUE(sink.Wait());
  ASSERT_TRUE(sink.result.status.ok());
  EXPECT_EQ(sink.result.reason, FinishReason::kCancelled);
  EXPECT_LT(sink.result.usage.completion_tokens, 60);
  EXPECT_TRUE(AllBlocksFree());
  EXPECT_TRUE(engine_->idle());
  engine_->Abort(*id);  // finished: no-op
  EXPECT_EQ(engine_->counters().requests_cancelled, 1);
}

TEST_F(EngineTest, AbortQueuedRequestDoesNotWaitForTheRunningOne) {
  runner_->set_step_delay(absl::Milliseconds(2));
  RecordingSink running, queued;
  auto running_id = engine_->Submit(Request({1}, 60), &running);
  auto queued_id = engine_->Submit(Request({2}, 60), &queued);
  ASSERT_TRUE(running_id.ok() && queued_id.ok());
  ASSERT_TRUE(running.WaitFirstToken());
  engine_->Abort(*queued_id);
  ASSERT_TRUE(queued.Wait());
  EXPECT_EQ(queued.result.reason, FinishReason::kCancelled);
  EXPECT_TRUE(queued.tokens.empty());
  EXPECT_FALSE(running.Wait(absl::ZeroDuration())) << "the running request was not aborted";
  engine_->Abort(*running_id);
  ASSERT_TRUE(running.Wait());
}

TEST_F(EngineTest, StopCancelsRunningAndRejectsQueued) {
  runner_->set_step_delay(absl::Milliseconds(2));
  RecordingSink running, queued;
  ASSERT_TRUE(engine_->Submit(Request({1}, 60), &running).ok());
  ASSERT_TRUE(engine_->Submit(Request({2}, 60), &queued).ok());
  ASSERT_TRUE(running.WaitFirstToken());
  engine_->Stop();
  ASSERT_TRUE(running.Wait(absl::ZeroDuration()));
  ASSERT_TRUE(queued.Wait(absl::ZeroDuration()));
  EXPECT_TRUE(running.result.status.ok());
  EXPECT_EQ(running.result.reason, FinishReason::kCancelled);
  EXPECT_EQ(queued.result.status.code(), absl::StatusCode::kUnavailable);
  RecordingSink late;
  EXPECT_EQ(engine_->Submit(Request({1}, 2), &late).status().code(),
            absl::StatusCode::kUnavailable);
  EXPECT_TRUE(AllBlocksFree());
}

TEST_F(EngineTest, DeadlineEndsRequest) {
  runner_->set_step_delay(absl::Milliseconds(2));
  GenerationRequest request = Request({1}, 60);
  request.deadline = absl::Now() + absl::Milliseconds(20);
  RecordingSink sink;
  ASSERT_TRUE(engine_->Submit(request, &sink).ok());
  ASSERT_TRUE(sink.Wait());
  EXPECT_EQ(sink.result.reason, FinishReason::kDeadline);
  EXPECT_LT(sink.result.usage.completion_tokens, 60);
  EXPECT_TRUE(AllBlocksFree());
}

TEST_F(EngineTest, RejectsRequestsTheCacheCanNeverHold) {
  // 9 usable blocks of 4 tokens; adaptive may use all 3 depth levels.
  MakeEngine(std::make_unique<FakeModelRunner>(FakeModelRunner::DefaultConfig(), 4, 10));
  RecordingSink sink;
  // 4 + 10 - 1 = 13 fed tokens: 4 blocks per level, 12 for 3 levels.
  EXPECT_EQ(engine_->Submit(Request({1, 2, 3, 4}, 10), &sink).status().code(),
            absl::StatusCode::kResourceExhausted);
  GenerationRequest shallow = Request({1, 2, 3, 4}, 10);
  shallow.policy = DepthPolicy::Fixed(1);
  EXPECT_TRUE(engine_->Submit(shallow, &sink).ok());
  ASSERT_TRUE(sink.Wait());
  EXPECT_TRUE(sink.result.status.ok());
}

TEST_F(EngineTest, RejectsMalformedRequests) {
  RecordingSink sink;
  EXPECT_EQ(engine_->Submit(Request({}, 4), &sink).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(engine_->Submit(Request({16}, 4), &sink).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(engine_->Submit(Request({1}, 0), &sink).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(engine_->Submit(Request({1}, 64), &sink).status().code(),
            absl::StatusCode::kInvalidArgument);  // 1 + 64 > context 64
  EXPECT_EQ(engine_->counters().requests_submitted, 0);
}

}  // namespace
}  // namespace mor
