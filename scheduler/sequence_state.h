// The scheduler's record of one request: its tokens, KV tables, sampler and
// lifecycle. Owned by the Scheduler; touched only on the engine thread.
#ifndef MOR_SCHEDULER_SEQUENCE_STATE_H_
#define MOR_SCHEDULER_SEQUENCE_STATE_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "absl/time/time.h"
#include "model/kv_cache_types.h"
#include "model/sampler.h"
#include "scheduler/generation_sink.h"
#include "scheduler/generation_types.h"

namespace mor {

// waiting -> running -> finished | aborted; running -> (preempted) -> waiting.
enum class SequenceStatus { kWaiting, kRunning, kFinished };

// Tokens of the sequence that are inside the model in continuous depth-wise
// mode (see DepthwiseGroup): they entered together and advance in lockstep.
struct InFlightGroup {
  int32_t start = 0;             // position of the first token
  std::vector<int32_t> slots;    // model state slots, one per token
  std::vector<uint8_t> active;   // tokens taking the next recursion
  std::vector<int32_t> reached;  // recursions taken so far, per token
  int32_t depth = 0;             // last recursion taken
};

struct SequenceState {
  uint64_t id = 0;
  GenerationRequest request;
  GenerationSink* sink = nullptr;
  SequenceStatus status = SequenceStatus::kWaiting;

  // Prompt followed by the generated tokens. Tokens [0, num_computed) have
  // their K/V in the cache; the rest still have to run.
  std::vector<int32_t> tokens;
  int32_t num_prompt = 0;
  int32_t num_computed = 0;
  SequenceKv kv;
  std::unique_ptr<SequenceSampler> sampler;
  std::optional<InFlightGroup> group;  // continuous depth-wise mode only

  // Order of arrival and of the latest admission (FCFS and preemption).
  int64_t arrival_order = 0;
  int64_t admit_order = 0;
  absl::Time arrival_time;
  absl::Time first_scheduled_time = absl::InfiniteFuture();
  absl::Time first_token_time = absl::InfiniteFuture();
  int32_t preemptions = 0;
  // Usage: token-recursion steps per depth (including recomputation).
  std::vector<int64_t> token_steps_per_depth;
  double compute_seconds = 0;

  int32_t num_generated() const { return static_cast<int32_t>(tokens.size()) - num_prompt; }
  // Tokens still to run through the model before the next sample.
  int32_t num_pending() const { return static_cast<int32_t>(tokens.size()) - num_computed; }
};

}  // namespace mor

#endif  // MOR_SCHEDULER_SEQUENCE_STATE_H_
