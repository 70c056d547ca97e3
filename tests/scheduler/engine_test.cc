// The threaded Engine on the fake model runner: submit / stream / finish,
// aborts, Stop, counters, and Submit-time errors. Every wait is bounded.
#include "scheduler/engine.h"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/scheduler/fake_model_runner.h"

namespace mor::scheduler_testing {
namespace {

using ::testing::HasSubstr;

constexpr absl::Duration kTimeout = absl::Seconds(10);

std::vector<int32_t> Prompt(int32_t n, int32_t seed = 1) {
  std::vector<int32_t> p;
  for (int32_t i = 0; i < n; ++i) p.push_back((seed * 13 + i * 3) % 60);
  return p;
}

// Polls `done` every millisecond until it holds or `timeout` passes.
template <typename F>
bool Eventually(F done, absl::Duration timeout = kTimeout) {
  const absl::Time end = absl::Now() + timeout;
  while (!done()) {
    if (absl::Now() > end) return false;
    absl::SleepFor(absl::Milliseconds(1));
  }
  return true;
}

struct Made {
  std::unique_ptr<Engine> engine;
  FakeModelRunner* runner = nullptr;
};

Made MakeEngine(BatchingMode mode, FakeRunnerOptions ro = {}, int32_t max_queued = 64,
                int32_t max_seqs = 16) {
  auto runner = std::make_unique<FakeModelRunner>(std::move(ro));
  Made made;
  made.runner = runner.get();
  EngineOptions options;
  options.scheduler.mode = mode;
  options.scheduler.max_num_batched_tokens = 64;
  options.scheduler.max_num_seqs = max_seqs;
  options.scheduler.max_queued_requests = max_queued;
  absl::StatusOr<std::unique_ptr<Engine>> engine = Engine::Create(std::move(runner), options);
  EXPECT_TRUE(engine.ok()) << engine.status();
  if (engine.ok()) made.engine = std::move(*engine);
  return made;
}

class EngineTest : public ::testing::TestWithParam<BatchingMode> {};

INSTANTIATE_TEST_SUITE_P(Modes, EngineTest,
                         ::testing::Values(BatchingMode::kDepthGrouped,
                                           BatchingMode::kContinuousDepthwise),
                         [](const auto& info) {
                           return std::string(BatchingModeName(info.param));
                         });

TEST_P(EngineTest, SubmitStreamsAndFinishes) {
  Made m = MakeEngine(GetParam());
  ASSERT_NE(m.engine, nullptr);
  EXPECT_EQ(m.engine->device(), "cpu");
  EXPECT_EQ(m.engine->config().vocab_size, 64);
  const int64_t free_depth = m.engine->free_blocks(KvPool::kDepth);
  const int64_t free_unique = m.engine->free_blocks(KvPool::kUnique);
  EXPECT_GT(free_depth, 0);
  std::atomic<int64_t> observed_steps{0};
  m.engine->SetStepObserver([&](const EngineStepStats&) { ++observed_steps; });

  std::vector<std::unique_ptr<RecordingSink>> sinks;
  std::vector<uint64_t> ids;
  for (int i = 0; i < 6; ++i) {
    sinks.push_back(std::make_unique<RecordingSink>());
    absl::StatusOr<uint64_t> id =
        m.engine->Submit(MakeRequest(Prompt(3 + i, i), 5 + i), sinks.back().get());
    ASSERT_TRUE(id.ok()) << id.status();
    ids.push_back(*id);
  }
  for (size_t i = 1; i < ids.size(); ++i) EXPECT_NE(ids[i], ids[0]);
  int64_t tokens = 0;
  for (int i = 0; i < 6; ++i) {
    ASSERT_TRUE(sinks[i]->WaitFinished(kTimeout)) << i;
    EXPECT_EQ(sinks[i]->finish_calls(), 1);
    EXPECT_EQ(sinks[i]->contract_violations(), 0);
    const GenerationResult result = sinks[i]->result();
    EXPECT_TRUE(result.status.ok()) << result.status;
    EXPECT_EQ(result.reason, FinishReason::kMaxTokens);
    EXPECT_EQ(sinks[i]->token_ids(), m.runner->GreedyContinuation(Prompt(3 + i, i), 5 + i)) << i;
    tokens += static_cast<int64_t>(sinks[i]->token_ids().size());
  }
  EXPECT_TRUE(m.engine->idle());
  EXPECT_TRUE(Eventually([&] { return m.engine->free_blocks(KvPool::kDepth) == free_depth; }));
  EXPECT_EQ(m.engine->free_blocks(KvPool::kUnique), free_unique);
  const EngineCounters c = m.engine->counters();
  EXPECT_EQ(c.requests_submitted, 6);
  EXPECT_EQ(c.requests_finished, 6);
  EXPECT_EQ(c.requests_cancelled, 0);
  EXPECT_EQ(c.requests_failed, 0);
  EXPECT_EQ(c.tokens_generated, tokens);
  EXPECT_GT(c.steps, 0);
  EXPECT_TRUE(Eventually([&] { return observed_steps.load() == m.engine->counters().steps; }));
  EXPECT_EQ(m.runner->num_errors(), 0) << m.runner->last_error();
}

TEST_P(EngineTest, AbortMidGenerationFreesBlocks) {
  Made m = MakeEngine(GetParam());
  const int64_t free_depth = m.engine->free_blocks(KvPool::kDepth);
  std::atomic<uint64_t> id{0};
  RecordingSink sink;
  // The sink aborts its own request (on the engine thread) at the 3rd token.
  std::atomic<int> seen{0};
  sink.on_token = [&](const GeneratedToken&) {
    if (++seen == 3) m.engine->Abort(id.load());
  };
  m.runner->set_step_delay(absl::Microseconds(200));
  absl::StatusOr<uint64_t> submitted = m.engine->Submit(MakeRequest(Prompt(6), 200), &sink);
  ASSERT_TRUE(submitted.ok());
  id = *submitted;
  ASSERT_TRUE(sink.WaitFinished(kTimeout));
  const GenerationResult result = sink.result();
  EXPECT_TRUE(result.status.ok());
  EXPECT_EQ(result.reason, FinishReason::kCancelled);
  EXPECT_GE(sink.token_ids().size(), 3u);
  EXPECT_LT(sink.token_ids().size(), 200u);
  EXPECT_EQ(sink.contract_violations(), 0);
  EXPECT_TRUE(Eventually([&] { return m.engine->free_blocks(KvPool::kDepth) == free_depth; }));
  EXPECT_EQ(m.engine->counters().requests_cancelled, 1);
  m.engine->Abort(id.load());  // finished already: a no-op
  m.engine->Abort(987654);     // never existed
  RecordingSink next;
  ASSERT_TRUE(m.engine->Submit(MakeRequest(Prompt(2), 3), &next).ok());
  ASSERT_TRUE(next.WaitFinished(kTimeout));
  EXPECT_EQ(next.result().reason, FinishReason::kMaxTokens);
}

TEST_P(EngineTest, StopCancelsEverythingAndJoins) {
  Made m = MakeEngine(GetParam(), {}, 64, /*max_seqs=*/2);
  m.runner->set_step_delay(absl::Microseconds(500));
  std::vector<std::unique_ptr<RecordingSink>> sinks;
  for (int i = 0; i < 5; ++i) {
    sinks.push_back(std::make_unique<RecordingSink>());
    ASSERT_TRUE(m.engine->Submit(MakeRequest(Prompt(4, i), 200), sinks.back().get()).ok());
  }
  ASSERT_TRUE(sinks[0]->WaitTokens(1, kTimeout));
  m.engine->Stop();
  // Stop joined the engine thread: every request has ended, exactly once.
  for (const auto& sink : sinks) {
    EXPECT_EQ(sink->finish_calls(), 1);
    EXPECT_EQ(sink->result().reason, FinishReason::kCancelled);
    EXPECT_EQ(sink->contract_violations(), 0);
  }
  EXPECT_TRUE(m.engine->idle());
  const EngineCounters c = m.engine->counters();
  EXPECT_EQ(c.requests_finished, 5);
  EXPECT_EQ(c.requests_cancelled, 5);
  RecordingSink late;
  absl::StatusOr<uint64_t> after = m.engine->Submit(MakeRequest(Prompt(2), 2), &late);
  EXPECT_EQ(after.status().code(), absl::StatusCode::kUnavailable);
  m.engine->Stop();  // idempotent
  EXPECT_EQ(late.finish_calls(), 0);
}

// With the engine held inside a step, queued requests fill the queue and the
// next Submit fails at once; a request aborted before the engine saw it ends
// without running.
TEST_P(EngineTest, QueueFullAtSubmitAndAbortBeforeAdmission) {
  Made m = MakeEngine(GetParam(), {}, /*max_queued=*/2, /*max_seqs=*/1);
  absl::Notification in_step, release;
  std::atomic<bool> hold{true};
  m.runner->set_step_hook([&] {
    if (!hold.exchange(false)) return;
    in_step.Notify();
    release.WaitForNotificationWithTimeout(kTimeout);
  });
  RecordingSink a, b, c, d;
  ASSERT_TRUE(m.engine->Submit(MakeRequest(Prompt(3, 1), 4), &a).ok());
  ASSERT_TRUE(in_step.WaitForNotificationWithTimeout(kTimeout));
  absl::StatusOr<uint64_t> id_b = m.engine->Submit(MakeRequest(Prompt(3, 2), 4), &b);
  ASSERT_TRUE(id_b.ok());
  ASSERT_TRUE(m.engine->Submit(MakeRequest(Prompt(3, 3), 4), &c).ok());
  absl::StatusOr<uint64_t> full = m.engine->Submit(MakeRequest(Prompt(3, 4), 4), &d);
  EXPECT_EQ(full.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(full.status().message(), HasSubstr("max_queued_requests"));
  m.engine->Abort(*id_b);
  release.Notify();
  for (RecordingSink* s : {&a, &b, &c}) ASSERT_TRUE(s->WaitFinished(kTimeout));
  EXPECT_EQ(a.result().reason, FinishReason::kMaxTokens);
  EXPECT_EQ(b.result().reason, FinishReason::kCancelled);
  EXPECT_TRUE(b.token_ids().empty());
  EXPECT_EQ(c.result().reason, FinishReason::kMaxTokens);
  EXPECT_EQ(d.finish_calls(), 0);
  EXPECT_EQ(m.engine->counters().requests_submitted, 3);
}

TEST_P(EngineTest, RejectsBadRequestsAtSubmit) {
  FakeRunnerOptions ro;
  ro.num_depth_blocks = 16;
  Made m = MakeEngine(GetParam(), ro);
  RecordingSink sink;
  // Alone beyond the KV cache (15 blocks; 40 tokens at 3 depths need 30).
  absl::StatusOr<uint64_t> never = m.engine->Submit(MakeRequest(Prompt(20), 20), &sink);
  EXPECT_EQ(never.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(m.engine->Submit(MakeRequest(Prompt(200), 100), &sink).status().code(),
            absl::StatusCode::kInvalidArgument);  // beyond the context
  EXPECT_EQ(m.engine->Submit(MakeRequest(Prompt(2), 2), nullptr).status().code(),
            absl::StatusCode::kInvalidArgument);
  // Malformed requests fail at Submit too, and the sink is never called.
  EXPECT_EQ(m.engine->Submit(MakeRequest({}, 2), &sink).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(m.engine->Submit(MakeRequest({1, 99}, 2), &sink).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(m.engine->Submit(MakeRequest({1}, 2, DepthPolicy::Fixed(7)), &sink).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(m.engine->Submit(MakeRequest({1}, 0), &sink).status().code(),
            absl::StatusCode::kInvalidArgument);
  GenerationRequest bad_sampling = MakeRequest({1}, 2);
  bad_sampling.sampling.top_p = 0;
  EXPECT_EQ(m.engine->Submit(bad_sampling, &sink).status().code(),
            absl::StatusCode::kInvalidArgument);
  m.engine->Stop();
  EXPECT_EQ(sink.finish_calls(), 0);
  EXPECT_EQ(m.engine->counters().requests_submitted, 0);
}

TEST_P(EngineTest, ModelErrorFailsTheRequestAndCountsIt) {
  Made m = MakeEngine(GetParam());
  m.runner->FailNextCall(absl::InternalError("device lost"));
  RecordingSink failed;
  ASSERT_TRUE(m.engine->Submit(MakeRequest(Prompt(3), 4), &failed).ok());
  ASSERT_TRUE(failed.WaitFinished(kTimeout));
  EXPECT_EQ(failed.result().status.code(), absl::StatusCode::kInternal);
  RecordingSink ok;
  ASSERT_TRUE(m.engine->Submit(MakeRequest(Prompt(3), 4), &ok).ok());
  ASSERT_TRUE(ok.WaitFinished(kTimeout));
  EXPECT_TRUE(ok.result().status.ok());
  const EngineCounters c = m.engine->counters();
  EXPECT_EQ(c.requests_failed, 1);
  EXPECT_EQ(c.requests_finished, 1);
}

TEST(EngineCreateTest, RejectsBadConfigurations) {
  EXPECT_EQ(Engine::Create(nullptr).status().code(), absl::StatusCode::kInvalidArgument);
  FakeRunnerOptions no_slots;
  no_slots.num_state_slots = 0;
  EngineOptions depthwise;
  depthwise.scheduler.mode = BatchingMode::kContinuousDepthwise;
  absl::StatusOr<std::unique_ptr<Engine>> e =
      Engine::Create(std::make_unique<FakeModelRunner>(no_slots), depthwise);
  EXPECT_EQ(e.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(e.status().message(), HasSubstr("num_state_slots"));
  EngineOptions zero_budget;
  zero_budget.scheduler.max_num_batched_tokens = 0;
  EXPECT_EQ(Engine::Create(std::make_unique<FakeModelRunner>(), zero_budget).status().code(),
            absl::StatusCode::kInvalidArgument);
  // Depth-grouped batching needs no state slots.
  EngineOptions grouped;
  grouped.scheduler.mode = BatchingMode::kDepthGrouped;
  EXPECT_TRUE(Engine::Create(std::make_unique<FakeModelRunner>(no_slots), grouped).ok());
}

// Many client threads at once; every request ends exactly once with its
// greedy output, and the engine ends idle with every block free.
TEST_P(EngineTest, ConcurrentClients) {
  FakeRunnerOptions ro;
  ro.num_depth_blocks = 64;  // tight: forces preemption
  Made m = MakeEngine(GetParam(), ro);
  const int64_t free_depth = m.engine->free_blocks(KvPool::kDepth);
  constexpr int kThreads = 4, kPerThread = 10;
  std::vector<std::unique_ptr<RecordingSink>> sinks(kThreads * kPerThread);
  for (auto& s : sinks) s = std::make_unique<RecordingSink>();
  std::vector<std::thread> clients;
  for (int t = 0; t < kThreads; ++t) {
    clients.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        const int k = t * kPerThread + i;
        absl::StatusOr<uint64_t> id =
            m.engine->Submit(MakeRequest(Prompt(2 + k % 7, k), 3 + k % 9), sinks[k].get());
        EXPECT_TRUE(id.ok()) << id.status();
        if (k % 5 == 4 && id.ok()) m.engine->Abort(*id);
      }
    });
  }
  for (std::thread& c : clients) c.join();
  for (int k = 0; k < kThreads * kPerThread; ++k) {
    ASSERT_TRUE(sinks[k]->WaitFinished(kTimeout)) << k;
    EXPECT_EQ(sinks[k]->contract_violations(), 0);
    const std::vector<int32_t> want = m.runner->GreedyContinuation(Prompt(2 + k % 7, k), 3 + k % 9);
    const std::vector<int32_t> got = sinks[k]->token_ids();
    if (sinks[k]->result().reason == FinishReason::kCancelled) {
      EXPECT_TRUE(std::equal(got.begin(), got.end(), want.begin())) << k;
    } else {
      EXPECT_EQ(got, want) << k;
    }
  }
  EXPECT_TRUE(m.engine->idle());
  EXPECT_TRUE(Eventually([&] { return m.engine->free_blocks(KvPool::kDepth) == free_depth; }));
  EXPECT_EQ(m.engine->counters().requests_submitted, kThreads * kPerThread);
  EXPECT_EQ(m.runner->num_errors(), 0) << m.runner->last_error();
}

}  // namespace
}  // namespace mor::scheduler_testing
