// The continuous-batching scheduler: a pure policy object (no threads, no
// torch, no gRPC) that decides, step by step, which tokens of which requests
// run, and keeps the KV cache and model state slots consistent with that.
//
// Design note: KV memory (see kv_cache_manager.h). Every recursion depth draws
// from one physical depth pool through its own per-(sequence, depth) block
// table, so a depth holds exactly the blocks its routed tokens filled; nothing
// is reserved for depths a request never reaches. Because adaptive routing is
// only known while a step runs, the scheduler admits a step's work only when
// the pools can hold its worst case (every new token reaching every depth the
// request's policy allows); the model then allocates what routing really
// needs, so a step can never fail for lack of blocks. When the worst case does
// not fit, the scheduler preempts by recompute (victim: the latest admitted
// request, or the lowest priority one with priority scheduling), like vLLM.
//
// Batching modes (SchedulerConfig::mode), all exact:
//  * kDepthGrouped: each step carries each scheduled token through all of its
//    recursions (ModelRunner::Step); inside the step the model orders rows by
//    depth so recursion r runs on a shrinking contiguous slice.
//  * kContinuousDepthwise: the paper's continuous depth-wise batching
//    (ModelRunner::StepDepthwise): one shared-block call carries tokens of
//    many sequences at different depths; each token advances one recursion
//    per step; a group that stops leaves at once and its place goes to
//    another sequence's tokens. A sequence's next token enters only after its
//    previous one was sampled.
//  * kNoDepthAwareness: benchmark reference; as kDepthGrouped but the model
//    runs every token through all Nr recursions and masks the results.
//
// Request lifecycle: waiting -> running -> finished | aborted, and running ->
// preempted -> waiting (its blocks freed; it is recomputed from its prompt
// and generated tokens when readmitted). Deadlines and aborts free every
// block of the request at once.
//
// Threading: single-threaded; the engine thread owns it.
#ifndef MOR_SCHEDULER_SCHEDULER_H_
#define MOR_SCHEDULER_SCHEDULER_H_

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "model/model_runner.h"
#include "scheduler/kv_cache_manager.h"
#include "scheduler/sequence_state.h"

namespace mor {

enum class BatchingMode { kDepthGrouped, kContinuousDepthwise, kNoDepthAwareness };

// "depth_grouped", "continuous_depthwise", "no_depth_awareness".
const char* BatchingModeName(BatchingMode mode);
absl::StatusOr<BatchingMode> ParseBatchingMode(const std::string& name);

struct SchedulerConfig {
  BatchingMode mode = BatchingMode::kContinuousDepthwise;
  // Per step: tokens run (depth-grouped) or rows of the shared-block call
  // (continuous depth-wise). Also bounds a prefill chunk.
  int32_t max_num_batched_tokens = 2048;
  int32_t max_num_seqs = 256;          // running requests
  int32_t max_queued_requests = 1024;  // waiting requests; beyond -> ResourceExhausted
  bool priority_scheduling = false;    // order by priority, then arrival
  // Admit a new batch only when nothing is running (for benchmarks that
  // compare continuous with static batching).
  bool static_batching = false;
};

// What the model looks like to the scheduler.
struct SchedulerModelInfo {
  int32_t num_recursions = 1;
  int32_t num_depth_levels = 1;  // Nr, or 1 with recursive KV sharing
  int32_t max_context = 2048;
  int32_t num_state_slots = 0;  // depth-wise mode
};

// One step's work, as decided by Schedule().
struct ScheduledChunk {  // depth-grouped / no depth awareness
  SequenceState* seq = nullptr;
  int32_t start = 0;
  int32_t num_tokens = 0;
  bool sample = false;  // the chunk ends at the sequence's last token
};
struct ScheduledGroup {  // continuous depth-wise
  SequenceState* seq = nullptr;
  bool enter = false;
  int32_t depth = 1;    // recursion taken in this step
  bool sample = false;  // on exit, the group ends at the sequence's last token
};

struct StepPlan {
  std::vector<ScheduledChunk> chunks;
  std::vector<ScheduledGroup> groups;
  std::vector<uint64_t> preempted;  // ids preempted while planning this step
  int64_t scheduled_tokens = 0;     // tokens entering the model this step
  bool empty() const { return chunks.empty() && groups.empty(); }
};

// A request that left the scheduler (finished, aborted, expired, failed).
struct FinishedSequence {
  std::unique_ptr<SequenceState> seq;
  absl::Status status;  // OK or the error that ended it
  FinishReason reason = FinishReason::kMaxTokens;
};

// Plain per-step statistics for the metrics layer.
struct SchedulerStats {
  int32_t num_running = 0;
  int32_t num_waiting = 0;
  int64_t preemptions_total = 0;
  KvUsage kv;
};

class Scheduler {
 public:
  Scheduler(SchedulerConfig config, SchedulerModelInfo model, KvCacheManager* kv);

  const SchedulerConfig& config() const { return config_; }

  // Whether `request` could ever run: prompt + max_tokens within the
  // context and, alone, within the KV pools. Reads only immutable state, so
  // any thread may call it.
  absl::Status CheckAdmissible(const GenerationRequest& request) const;

  // Queues a validated request. Errors (the sink is then never used):
  // ResourceExhausted when the waiting queue is full, or when the request
  // alone could never fit the KV pools or the step budget.
  absl::Status Add(std::unique_ptr<SequenceState> seq);

  // Removes a request now (abort, deadline, stop string), freeing its
  // blocks and state slots. Returns it, or nullptr when it is not here.
  std::unique_ptr<SequenceState> Remove(uint64_t id);

  // Requests whose deadline passed by `now`, removed.
  std::vector<std::unique_ptr<SequenceState>> TakeExpired(absl::Time now);

  // Plans the next step (admission, chunked prefill, preemption).
  StepPlan Schedule(absl::Time now);

  // Accounting after the model ran `plan` (called by the engine, which
  // samples tokens itself): advances computed tokens for chunks.
  void CommitChunk(const ScheduledChunk& chunk);
  // Depth-wise: records a group's step; when it exited, advances computed
  // tokens, frees its slots and returns the depth its last token reached
  // (else 0).
  int32_t CommitGroup(const ScheduledGroup& group, const DepthwiseGroupResult& result);

  // Appends a sampled token to a running sequence.
  void AppendToken(SequenceState* seq, int32_t token);
  // Takes a sequence out after it finished (its blocks freed).
  std::unique_ptr<SequenceState> Finish(SequenceState* seq);

  // Frees and returns every request (engine shutdown).
  std::vector<std::unique_ptr<SequenceState>> Drain();

  bool has_work() const { return !running_.empty() || !waiting_.empty(); }
  int32_t num_running() const { return static_cast<int32_t>(running_.size()); }
  int32_t num_waiting() const { return static_cast<int32_t>(waiting_.size()); }
  SchedulerStats Stats() const;
  const SchedulerModelInfo& model_info() const { return model_; }
  // Read-only views for tests and debugging: every request here (running and
  // waiting, in no particular order), and the state slots not held by a group.
  std::vector<const SequenceState*> sequences() const {
    std::vector<const SequenceState*> out;
    out.reserve(all_.size());
    for (const auto& [id, seq] : all_) out.push_back(seq.get());
    return out;
  }
  int32_t num_free_slots() const { return static_cast<int32_t>(free_slots_.size()); }

 private:
  // Depth levels a sequence's tokens may reach (worst case).
  int32_t MaxLevels(const SequenceState& seq) const;
  // Worst-case blocks to run `n` more tokens of `seq` through every level.
  BlockDemand DemandFor(const SequenceState& seq, int32_t n) const;
  // Blocks an in-flight group may still draw at its deeper levels.
  BlockDemand InFlightDemand(const SequenceState& seq) const;
  // Whether the waiting sequence `seq` sorts before `other`.
  bool Before(const SequenceState& seq, const SequenceState& other) const;
  void InsertWaiting(SequenceState* seq);
  // Preempts `victim` (frees its blocks and slots, back to waiting).
  void Preempt(SequenceState* victim, StepPlan& plan);
  SequenceState* PickVictim() const;  // lowest priority / latest admitted
  void ReleaseResources(SequenceState* seq);
  bool TakeSlots(SequenceState* seq, int32_t n);

  StepPlan ScheduleGrouped(absl::Time now);
  StepPlan ScheduleDepthwise(absl::Time now);

  SchedulerConfig config_;
  SchedulerModelInfo model_;
  KvCacheManager* kv_;  // not owned
  absl::flat_hash_map<uint64_t, std::unique_ptr<SequenceState>> all_;
  std::vector<SequenceState*> running_;  // in admission order
  std::deque<SequenceState*> waiting_;   // in scheduling order
  std::vector<int32_t> free_slots_;
  int64_t next_arrival_ = 0;
  int64_t next_admit_ = 0;
  int64_t preemptions_total_ = 0;
};

}  // namespace mor

#endif  // MOR_SCHEDULER_SCHEDULER_H_
