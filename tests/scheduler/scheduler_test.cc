// The Scheduler policy, driven directly (no EngineCore): admission order,
// budgets, chunked prefill, preemption victims, queue limits, removal, and
// the depth-wise group lifecycle. A small harness runs each plan on the fake
// model runner and appends the greedy token, as the engine would.
#include "scheduler/scheduler.h"

#include <algorithm>
#include <cstdint>
#include <map>
#include <memory>
#include <random>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/scheduler/fake_model_runner.h"

namespace mor::scheduler_testing {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

const absl::Time kNow = absl::UnixEpoch() + absl::Hours(1);

std::vector<int32_t> Prompt(int32_t n, int32_t seed = 1) {
  std::vector<int32_t> p;
  for (int32_t i = 0; i < n; ++i) p.push_back((seed * 7 + i * 3) % 60);
  return p;
}

// Scheduler + KV manager + fake runner; Step() runs one plan and samples
// greedily (argmax of the fake logits), finishing at max_tokens.
class Harness {
 public:
  Harness(FakeRunnerOptions runner_options, SchedulerConfig config)
      : runner_(std::move(runner_options)),
        kv_(*KvCacheManager::Create(runner_.kv_geometry())),
        scheduler_(config, Info(runner_), kv_.get()) {}

  static SchedulerModelInfo Info(const FakeModelRunner& runner) {
    SchedulerModelInfo info;
    info.num_recursions = runner.config().num_recursions;
    info.num_depth_levels = runner.kv_geometry().num_depth_levels;
    info.max_context = static_cast<int32_t>(runner.config().max_position_embeddings);
    info.num_state_slots = runner.num_state_slots();
    return info;
  }

  absl::Status Add(uint64_t id, GenerationRequest request) {
    auto seq = std::make_unique<SequenceState>();
    seq->id = id;
    seq->tokens = request.prompt;
    seq->request = std::move(request);
    return scheduler_.Add(std::move(seq));
  }

  StepPlan Step() {
    StepPlan plan = scheduler_.Schedule(kNow);
    last_ids_.clear();
    for (const ScheduledChunk& c : plan.chunks) last_ids_.push_back(c.seq->id);
    for (const ScheduledGroup& g : plan.groups) last_ids_.push_back(g.seq->id);
    admitted_.insert(admitted_.end(), last_ids_.begin(), last_ids_.end());
    if (plan.empty()) return plan;
    absl::Status status = scheduler_.config().mode == BatchingMode::kContinuousDepthwise
                              ? RunDepthwise(plan)
                              : RunGrouped(plan);
    EXPECT_TRUE(status.ok()) << status;
    EXPECT_EQ(CheckKvInvariants(scheduler_, *kv_), "");
    return plan;
  }

  // Steps until nothing is left (at most `max_steps`); returns the steps run.
  int RunAll(int max_steps = 10000) {
    int steps = 0;
    while (scheduler_.has_work() && steps < max_steps) {
      Step();
      ++steps;
    }
    return steps;
  }

  // Ids in the order they first appeared in a plan.
  std::vector<uint64_t> FirstScheduled() const {
    std::vector<uint64_t> out;
    for (uint64_t id : admitted_) {
      if (std::find(out.begin(), out.end(), id) == out.end()) out.push_back(id);
    }
    return out;
  }

  // Ids of the chunks / groups of the latest plan (its pointers may dangle
  // once a request finished).
  const std::vector<uint64_t>& last_ids() const { return last_ids_; }

  const SequenceState* Find(uint64_t id) const {
    for (const SequenceState* seq : scheduler_.sequences()) {
      if (seq->id == id) return seq;
    }
    return nullptr;
  }

  FakeModelRunner& runner() { return runner_; }
  KvCacheManager& kv() { return *kv_; }
  Scheduler& scheduler() { return scheduler_; }
  std::map<uint64_t, std::vector<int32_t>> outputs;  // finished requests
  std::vector<uint64_t> finish_order;

 private:
  void Sample(SequenceState* seq, const float* logits) {
    const int32_t token = static_cast<int32_t>(
        std::max_element(logits, logits + runner_.config().vocab_size) - logits);
    scheduler_.AppendToken(seq, token);
    if (seq->num_generated() >= seq->request.max_tokens) {
      outputs[seq->id] =
          std::vector<int32_t>(seq->tokens.begin() + seq->num_prompt, seq->tokens.end());
      finish_order.push_back(seq->id);
      scheduler_.Finish(seq);
    }
  }

  absl::Status RunGrouped(const StepPlan& plan) {
    std::vector<SequenceChunk> chunks;
    for (const ScheduledChunk& p : plan.chunks) {
      SequenceChunk c;
      c.tokens = std::span<const int32_t>(p.seq->tokens.data() + p.start, p.num_tokens);
      c.start_position = p.start;
      c.policy = p.seq->request.policy;
      c.kv = &p.seq->kv;
      c.logits = p.sample ? LogitsRequest::kLast : LogitsRequest::kNone;
      chunks.push_back(c);
    }
    absl::StatusOr<StepResult> result = runner_.Step(chunks, *kv_);
    if (!result.ok()) return result.status();
    for (size_t i = 0; i < plan.chunks.size(); ++i) {
      scheduler_.CommitChunk(plan.chunks[i]);
      if (plan.chunks[i].sample) {
        Sample(plan.chunks[i].seq,
               result->logits.data() + result->logits_row[i] * result->vocab_size);
      }
    }
    return absl::OkStatus();
  }

  absl::Status RunDepthwise(const StepPlan& plan) {
    std::vector<DepthwiseGroup> groups;
    for (const ScheduledGroup& p : plan.groups) {
      const InFlightGroup& f = *p.seq->group;
      DepthwiseGroup g;
      g.kv = &p.seq->kv;
      g.policy = p.seq->request.policy;
      g.start_position = f.start;
      g.tokens = std::span<const int32_t>(p.seq->tokens.data() + f.start, f.slots.size());
      g.slots = f.slots;
      g.enter = p.enter;
      g.depth = p.depth;
      g.active = f.active;
      g.logits = p.sample ? LogitsRequest::kLast : LogitsRequest::kNone;
      groups.push_back(g);
    }
    absl::StatusOr<DepthwiseStepResult> result = runner_.StepDepthwise(groups, *kv_);
    if (!result.ok()) return result.status();
    for (size_t i = 0; i < plan.groups.size(); ++i) {
      const DepthwiseGroupResult& out = result->groups[i];
      scheduler_.CommitGroup(plan.groups[i], out);
      if (out.exited && plan.groups[i].sample) {
        Sample(plan.groups[i].seq, result->logits.data() + out.logits_row * result->vocab_size);
      }
    }
    return absl::OkStatus();
  }

  FakeModelRunner runner_;
  std::unique_ptr<KvCacheManager> kv_;
  Scheduler scheduler_;
  std::vector<uint64_t> admitted_;
  std::vector<uint64_t> last_ids_;
};

SchedulerConfig Config(BatchingMode mode, int32_t budget = 64, int32_t max_seqs = 16) {
  SchedulerConfig c;
  c.mode = mode;
  c.max_num_batched_tokens = budget;
  c.max_num_seqs = max_seqs;
  return c;
}

class SchedulerModeTest : public ::testing::TestWithParam<BatchingMode> {};

INSTANTIATE_TEST_SUITE_P(Modes, SchedulerModeTest,
                         ::testing::Values(BatchingMode::kDepthGrouped,
                                           BatchingMode::kContinuousDepthwise,
                                           BatchingMode::kNoDepthAwareness),
                         [](const auto& info) {
                           return std::string(BatchingModeName(info.param));
                         });

TEST(SchedulerTest, BatchingModeNamesRoundTrip) {
  for (BatchingMode mode : {BatchingMode::kDepthGrouped, BatchingMode::kContinuousDepthwise,
                            BatchingMode::kNoDepthAwareness}) {
    absl::StatusOr<BatchingMode> parsed = ParseBatchingMode(BatchingModeName(mode));
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(*parsed, mode);
  }
  absl::StatusOr<BatchingMode> bad = ParseBatchingMode("depthwise");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.status().message(), HasSubstr("depthwise"));
}

TEST_P(SchedulerModeTest, RespectsTokenBudgetAndMaxSeqs) {
  FakeRunnerOptions ro;
  ro.num_depth_blocks = 512;
  Harness h(ro, Config(GetParam(), /*budget=*/16, /*max_seqs=*/4));
  std::mt19937 rng(7);
  for (uint64_t id = 1; id <= 20; ++id) {
    ASSERT_TRUE(h.Add(id, MakeRequest(Prompt(1 + rng() % 30, id), 3 + rng() % 6)).ok());
  }
  int steps = 0;
  while (h.scheduler().has_work() && steps < 2000) {
    const StepPlan plan = h.Step();
    ++steps;
    EXPECT_LE(plan.scheduled_tokens, 16);
    EXPECT_LE(h.scheduler().num_running(), 4);
    int64_t tokens = 0;
    for (const ScheduledChunk& c : plan.chunks) tokens += c.num_tokens;
    EXPECT_LE(tokens, 16);
    if (GetParam() == BatchingMode::kContinuousDepthwise && !plan.empty()) {
      EXPECT_LE(h.runner().calls().back().block_rows, 16);
    }
  }
  EXPECT_EQ(h.outputs.size(), 20u);
  EXPECT_EQ(h.runner().num_errors(), 0) << h.runner().last_error();
}

TEST(SchedulerTest, ChunkedPrefillDepthGrouped) {
  Harness h(FakeRunnerOptions{}, Config(BatchingMode::kDepthGrouped, /*budget=*/16));
  ASSERT_TRUE(h.Add(1, MakeRequest(Prompt(40), 3)).ok());
  std::vector<std::pair<int32_t, int32_t>> chunks;  // (start, tokens)
  std::vector<bool> sampled;
  while (h.scheduler().has_work()) {
    const StepPlan plan = h.Step();
    ASSERT_EQ(plan.chunks.size(), 1u);
    chunks.emplace_back(plan.chunks[0].start, plan.chunks[0].num_tokens);
    sampled.push_back(plan.chunks[0].sample);
  }
  EXPECT_THAT(chunks, ElementsAre(std::pair(0, 16), std::pair(16, 16), std::pair(32, 8),
                                  std::pair(40, 1), std::pair(41, 1)));
  EXPECT_THAT(sampled, ElementsAre(false, false, true, true, true));
  EXPECT_EQ(h.outputs[1], h.runner().GreedyContinuation(Prompt(40), 3));
}

TEST(SchedulerTest, ChunkedPrefillDepthwiseEntersNextChunkAfterExit) {
  FakeRunnerOptions ro;
  Harness h(ro, Config(BatchingMode::kContinuousDepthwise, /*budget=*/16));
  ASSERT_TRUE(h.Add(1, MakeRequest(Prompt(40), 2, DepthPolicy::Fixed(2))).ok());
  std::vector<std::pair<int32_t, int32_t>> entered;
  while (h.scheduler().has_work()) {
    const StepPlan plan = h.Step();
    ASSERT_EQ(plan.groups.size(), 1u);
    const ScheduledGroup& g = plan.groups[0];
    if (g.enter) {
      entered.emplace_back(h.runner().calls().back().start_positions[0],
                           h.runner().calls().back().num_tokens[0]);
      EXPECT_EQ(g.depth, 1);
    } else {
      EXPECT_EQ(g.depth, 2);  // fixed depth 2: enter, then recursion 2 and exit
    }
  }
  // Every chunk takes two steps (recursions 1 and 2) before the next enters.
  EXPECT_THAT(entered,
              ElementsAre(std::pair(0, 16), std::pair(16, 16), std::pair(32, 8), std::pair(40, 1)));
  EXPECT_EQ(h.runner().num_calls(), 8);
  EXPECT_EQ(h.outputs[1], h.runner().GreedyContinuation(Prompt(40), 2));
}

TEST(SchedulerTest, DepthwiseChunkIsBoundedByFreeSlots) {
  FakeRunnerOptions ro;
  ro.num_state_slots = 8;
  Harness h(ro, Config(BatchingMode::kContinuousDepthwise, /*budget=*/64));
  ASSERT_TRUE(h.Add(1, MakeRequest(Prompt(20), 1, DepthPolicy::Fixed(1))).ok());
  const StepPlan plan = h.Step();
  EXPECT_EQ(plan.scheduled_tokens, 8);
  h.RunAll();
  EXPECT_EQ(h.outputs[1], h.runner().GreedyContinuation(Prompt(20), 1));
  EXPECT_EQ(h.scheduler().num_free_slots(), 8);
}

TEST_P(SchedulerModeTest, AdmitsInArrivalOrder) {
  Harness h(FakeRunnerOptions{}, Config(GetParam(), 64, /*max_seqs=*/1));
  for (uint64_t id = 1; id <= 5; ++id) ASSERT_TRUE(h.Add(id, MakeRequest(Prompt(3, id), 2)).ok());
  h.RunAll();
  EXPECT_THAT(h.FirstScheduled(), ElementsAre(1, 2, 3, 4, 5));
  EXPECT_THAT(h.finish_order, ElementsAre(1, 2, 3, 4, 5));
}

TEST_P(SchedulerModeTest, AdmitsByPriorityThenArrival) {
  SchedulerConfig c = Config(GetParam(), 64, /*max_seqs=*/1);
  c.priority_scheduling = true;
  Harness h(FakeRunnerOptions{}, c);
  const int32_t priority[] = {0, 5, 1, 5, 3};
  for (uint64_t id = 1; id <= 5; ++id) {
    ASSERT_TRUE(
        h.Add(id, MakeRequest(Prompt(3, id), 2, DepthPolicy::Adaptive(), priority[id - 1])).ok());
  }
  h.RunAll();
  EXPECT_THAT(h.FirstScheduled(), ElementsAre(2, 4, 5, 3, 1));
}

TEST_P(SchedulerModeTest, QueueFullIsResourceExhausted) {
  SchedulerConfig c = Config(GetParam());
  c.max_queued_requests = 2;
  Harness h(FakeRunnerOptions{}, c);
  ASSERT_TRUE(h.Add(1, MakeRequest(Prompt(3), 2)).ok());
  ASSERT_TRUE(h.Add(2, MakeRequest(Prompt(3), 2)).ok());
  const absl::Status full = h.Add(3, MakeRequest(Prompt(3), 2));
  EXPECT_EQ(full.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(full.message(), HasSubstr("max_queued_requests 2"));
  h.Step();  // admits both: the queue has room again
  EXPECT_TRUE(h.Add(3, MakeRequest(Prompt(3), 2)).ok());
  h.RunAll();
  EXPECT_EQ(h.outputs.size(), 3u);
}

TEST(SchedulerTest, RequestThatNeverFitsIsRejected) {
  FakeRunnerOptions ro;
  ro.num_depth_blocks = 8;  // 7 usable blocks of 4 tokens
  Harness h(ro, Config(BatchingMode::kDepthGrouped));
  // 20 tokens: 5 blocks per depth; adaptive may reach all 3 depths (15 blocks).
  const absl::Status too_big = h.Add(1, MakeRequest(Prompt(12), 8));
  EXPECT_EQ(too_big.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(too_big.message(), HasSubstr("more than the whole KV cache holds"));
  EXPECT_EQ(h.scheduler().CheckAdmissible(MakeRequest(Prompt(12), 8)).code(),
            absl::StatusCode::kResourceExhausted);
  // At fixed depth 1 the same request needs 5 blocks: fine.
  EXPECT_TRUE(h.Add(2, MakeRequest(Prompt(12), 8, DepthPolicy::Fixed(1))).ok());
  // Beyond the context: InvalidArgument naming the limit.
  const absl::Status too_long = h.Add(3, MakeRequest(Prompt(250), 10));
  EXPECT_EQ(too_long.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(too_long.message(), HasSubstr("256-token context"));
  h.RunAll();
  EXPECT_EQ(h.outputs[2], h.runner().GreedyContinuation(Prompt(12), 8));
}

// Three fixed-depth-1 requests of 4 prompt tokens fill 3 of 4 blocks; their
// first decode step needs 3 more, so the latest admitted is preempted.
TEST_P(SchedulerModeTest, PreemptsLatestAdmittedAndRecomputesIt) {
  FakeRunnerOptions ro;
  ro.num_depth_blocks = 5;
  ro.unique_layers = false;
  Harness h(ro, Config(GetParam()));
  for (uint64_t id = 1; id <= 3; ++id) {
    ASSERT_TRUE(h.Add(id, MakeRequest(Prompt(4, id), 6, DepthPolicy::Fixed(1))).ok());
  }
  StepPlan first = h.Step();
  while (GetParam() == BatchingMode::kContinuousDepthwise && h.scheduler().num_running() < 3) {
    first = h.Step();
  }
  EXPECT_TRUE(first.preempted.empty());
  const StepPlan second = h.Step();
  EXPECT_THAT(second.preempted, ElementsAre(3));
  const SequenceState* victim = h.Find(3);
  ASSERT_NE(victim, nullptr);
  EXPECT_EQ(victim->status, SequenceStatus::kWaiting);
  EXPECT_EQ(victim->num_computed, 0);
  EXPECT_EQ(victim->preemptions, 1);
  EXPECT_EQ(KvCacheManager::BlocksHeld(victim->kv), BlockDemand{});
  h.RunAll();
  for (uint64_t id = 1; id <= 3; ++id) {
    EXPECT_EQ(h.outputs[id], h.runner().GreedyContinuation(Prompt(4, id), 6)) << id;
  }
  EXPECT_GE(h.scheduler().Stats().preemptions_total, 1);
  EXPECT_EQ(h.kv().Usage().depth.used, 0);
}

TEST_P(SchedulerModeTest, PreemptsLowestPriorityFirst) {
  FakeRunnerOptions ro;
  ro.num_depth_blocks = 5;
  ro.unique_layers = false;
  SchedulerConfig c = Config(GetParam());
  c.priority_scheduling = true;
  Harness h(ro, c);
  // The low-priority request is admitted first, so it is not the latest.
  ASSERT_TRUE(h.Add(1, MakeRequest(Prompt(4, 1), 6, DepthPolicy::Fixed(1), /*priority=*/0)).ok());
  h.Step();
  ASSERT_TRUE(h.Add(2, MakeRequest(Prompt(3, 2), 6, DepthPolicy::Fixed(1), /*priority=*/5)).ok());
  ASSERT_TRUE(h.Add(3, MakeRequest(Prompt(3, 3), 6, DepthPolicy::Fixed(1), /*priority=*/3)).ok());
  std::vector<uint64_t> preempted;
  for (int i = 0; i < 4 && preempted.empty(); ++i) {
    const StepPlan plan = h.Step();
    preempted = plan.preempted;
  }
  ASSERT_FALSE(preempted.empty());
  EXPECT_EQ(preempted[0], 1u);
  h.RunAll();
  EXPECT_EQ(h.outputs.size(), 3u);
  EXPECT_EQ(h.outputs[1], h.runner().GreedyContinuation(Prompt(4, 1), 6));
}

// Depth-wise: the latest admitted request is the victim even when it is in
// flight at the moment an older request needs a block (the older one must
// not preempt itself while a younger one holds the memory).
TEST(SchedulerTest, DepthwiseVictimIsLatestAdmittedEvenWhileInFlight) {
  FakeRunnerOptions ro;
  ro.num_depth_blocks = 11;  // 10 usable
  ro.unique_layers = false;
  Harness h(ro, Config(BatchingMode::kContinuousDepthwise));
  ASSERT_TRUE(h.Add(1, MakeRequest(Prompt(3, 1), 30, DepthPolicy::Fixed(1))).ok());
  h.Step();  // 1 block; request 1 enters and exits every step
  ASSERT_TRUE(h.Add(2, MakeRequest(Prompt(11, 2), 1, DepthPolicy::Fixed(3))).ok());
  EXPECT_TRUE(h.Step().preempted.empty());  // 2 enters: 3 blocks, 6 more reserved
  // Request 1 needs its second block while request 2 is in flight.
  EXPECT_THAT(h.Step().preempted, ElementsAre(2));
  EXPECT_EQ(h.Find(1)->preemptions, 0);
  h.RunAll();
  EXPECT_EQ(h.outputs[1], h.runner().GreedyContinuation(Prompt(3, 1), 30));
  EXPECT_EQ(h.outputs[2], h.runner().GreedyContinuation(Prompt(11, 2), 1));
  EXPECT_EQ(h.runner().num_errors(), 0) << h.runner().last_error();
}

TEST_P(SchedulerModeTest, RemoveAndExpiryFreeEverythingAtOnce) {
  Harness h(FakeRunnerOptions{}, Config(GetParam()));
  GenerationRequest expiring = MakeRequest(Prompt(9, 2), 20, DepthPolicy::Fixed(3));
  expiring.deadline = kNow + absl::Seconds(5);
  ASSERT_TRUE(h.Add(1, MakeRequest(Prompt(9, 1), 20, DepthPolicy::Fixed(3))).ok());
  ASSERT_TRUE(h.Add(2, std::move(expiring)).ok());
  ASSERT_TRUE(h.Add(3, MakeRequest(Prompt(9, 3), 20)).ok());
  for (int i = 0; i < 4; ++i) h.Step();  // some groups are in flight now
  EXPECT_GT(h.kv().Usage().depth.used, 0);
  std::unique_ptr<SequenceState> removed = h.scheduler().Remove(1);
  ASSERT_NE(removed, nullptr);
  EXPECT_EQ(KvCacheManager::BlocksHeld(removed->kv), BlockDemand{});
  EXPECT_FALSE(removed->group.has_value());
  EXPECT_EQ(h.scheduler().Remove(1), nullptr);
  EXPECT_EQ(CheckKvInvariants(h.scheduler(), h.kv()), "");
  EXPECT_TRUE(h.scheduler().TakeExpired(kNow).empty());
  std::vector<std::unique_ptr<SequenceState>> expired =
      h.scheduler().TakeExpired(kNow + absl::Seconds(5));
  ASSERT_EQ(expired.size(), 1u);
  EXPECT_EQ(expired[0]->id, 2u);
  EXPECT_EQ(CheckKvInvariants(h.scheduler(), h.kv()), "");
  EXPECT_EQ(h.scheduler().Drain().size(), 1u);
  const KvUsage usage = h.kv().Usage();
  EXPECT_EQ(usage.depth.used, 0);
  EXPECT_EQ(usage.unique.used, 0);
  EXPECT_EQ(h.scheduler().num_free_slots(), h.runner().num_state_slots());
  EXPECT_FALSE(h.scheduler().has_work());
}

TEST(SchedulerTest, DepthwiseGroupHoldsSlotsUntilExit) {
  Harness h(FakeRunnerOptions{}, Config(BatchingMode::kContinuousDepthwise));
  ASSERT_TRUE(h.Add(1, MakeRequest(Prompt(5), 1, DepthPolicy::Fixed(3))).ok());
  const int32_t slots = h.runner().num_state_slots();
  std::vector<int32_t> depths;
  for (int i = 0; i < 3; ++i) {
    const StepPlan plan = h.Step();
    ASSERT_EQ(plan.groups.size(), 1u);
    depths.push_back(plan.groups[0].depth);
    EXPECT_EQ(plan.groups[0].enter, i == 0);
    // Held after recursions 1 and 2; released when the group exits.
    EXPECT_EQ(h.scheduler().num_free_slots(), i < 2 ? slots - 5 : slots) << i;
  }
  EXPECT_THAT(depths, ElementsAre(1, 2, 3));
  EXPECT_EQ(h.outputs[1], h.runner().GreedyContinuation(Prompt(5), 1));
}

TEST(SchedulerTest, DepthwiseInFlightTokensCountAgainstTheBudget) {
  Harness h(FakeRunnerOptions{}, Config(BatchingMode::kContinuousDepthwise, /*budget=*/8));
  ASSERT_TRUE(h.Add(1, MakeRequest(Prompt(8, 1), 1, DepthPolicy::Fixed(3))).ok());
  ASSERT_TRUE(h.Add(2, MakeRequest(Prompt(8, 2), 1, DepthPolicy::Fixed(1))).ok());
  for (int i = 0; i < 3; ++i) {
    h.Step();
    EXPECT_THAT(h.last_ids(), ElementsAre(1)) << i;  // request 1 fills the budget
  }
  const StepPlan fourth = h.Step();
  EXPECT_THAT(h.last_ids(), ElementsAre(2));
  EXPECT_EQ(fourth.scheduled_tokens, 8);
  h.RunAll();
  EXPECT_EQ(h.outputs.size(), 2u);
}

TEST_P(SchedulerModeTest, StaticBatchingAdmitsOnlyWhenIdle) {
  SchedulerConfig c = Config(GetParam(), 64, /*max_seqs=*/2);
  c.static_batching = true;
  Harness h(FakeRunnerOptions{}, c);
  ASSERT_TRUE(h.Add(1, MakeRequest(Prompt(3, 1), 2)).ok());
  ASSERT_TRUE(h.Add(2, MakeRequest(Prompt(3, 2), 8)).ok());
  ASSERT_TRUE(h.Add(3, MakeRequest(Prompt(3, 3), 2)).ok());
  while (h.outputs.size() < 2) {
    h.Step();
    if (!h.outputs.contains(2)) {
      EXPECT_NE(h.Find(3)->status, SequenceStatus::kRunning) << "admitted into a running batch";
    }
  }
  h.RunAll();
  EXPECT_EQ(h.outputs.size(), 3u);
}

}  // namespace
}  // namespace mor::scheduler_testing
