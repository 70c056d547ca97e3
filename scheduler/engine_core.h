// One engine step without threads: expire deadlines, plan with the
// Scheduler, run the ModelRunner, sample, and deliver tokens and final
// results to the requests' sinks. Engine wraps it with a thread and an inbox;
// tests and in-process benchmarks drive it directly.
//
// Threading: single-threaded (the engine thread). Sinks are called from
// Step/Submit/Abort on that thread.
#ifndef MOR_SCHEDULER_ENGINE_CORE_H_
#define MOR_SCHEDULER_ENGINE_CORE_H_

#include <cstdint>
#include <memory>
#include <random>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "model/model_runner.h"
#include "model/sampler.h"
#include "scheduler/generation_sink.h"
#include "scheduler/generation_types.h"
#include "scheduler/kv_cache_manager.h"
#include "scheduler/scheduler.h"

namespace mor {

// Per-step statistics for metrics and benchmarks (plain numbers).
struct EngineStepStats {
  int64_t step = 0;
  BatchingMode mode = BatchingMode::kContinuousDepthwise;
  int64_t scheduled_tokens = 0;  // tokens entering the model
  // token_steps_per_depth[r-1]: tokens that ran recursion r in this step
  // (depth-wise: the rows of the shared-block call at depth r).
  std::vector<int64_t> token_steps_per_depth;
  int64_t block_calls = 0;  // depth-wise: shared-block invocations
  int64_t sampled_tokens = 0;
  int64_t preemptions = 0;
  int32_t num_running = 0;
  int32_t num_waiting = 0;
  KvUsage kv;
  double schedule_seconds = 0;
  double model_seconds = 0;
  double sample_seconds = 0;
  // Model stages (depth-grouped: embed+unique / recursions / head; depth-wise:
  // enter / block / exit).
  double stage_seconds[3] = {0, 0, 0};
  double total_seconds = 0;
};

class EngineCore {
 public:
  EngineCore(std::unique_ptr<ModelRunner> runner, std::unique_ptr<KvCacheManager> kv,
             SchedulerConfig config, uint64_t seed = 0);

  // Checks `request` against the model (prompt ids, depth, max_tokens,
  // sampling parameters). Reads only immutable state: any thread may call it.
  absl::Status ValidateRequest(const GenerationRequest& request) const;
  // Validates and queues a request (errors leave the sink untouched).
  absl::Status Submit(uint64_t id, GenerationRequest request, GenerationSink* sink, absl::Time now);
  // Ends request `id` now with `reason` (its blocks freed at once). Returns
  // false when the id is unknown (already finished).
  bool Abort(uint64_t id, FinishReason reason);
  // Ends every request with `status` (engine shutdown).
  void FailAll(const absl::Status& status);

  // Runs one step. Returns false when there was nothing to do.
  absl::StatusOr<bool> Step(absl::Time now);

  bool has_work() const { return scheduler_.has_work(); }
  const EngineStepStats& last_step() const { return last_step_; }
  const ModelRunner& runner() const { return *runner_; }
  const KvCacheManager& kv() const { return *kv_; }
  const Scheduler& scheduler() const { return scheduler_; }

 private:
  // Samples the next token of `seq` from `logits`, delivers it, and finishes
  // the request if it stopped. `depth` is the depth its last input reached.
  void SampleAndDeliver(SequenceState* seq, const float* logits, int32_t depth, absl::Time now);
  void Deliver(std::unique_ptr<SequenceState> seq, absl::Status status, FinishReason reason,
               absl::Time now);
  absl::Status RunGrouped(const StepPlan& plan, absl::Time now);
  absl::Status RunDepthwise(const StepPlan& plan, absl::Time now);

  std::unique_ptr<ModelRunner> runner_;
  std::unique_ptr<KvCacheManager> kv_;
  Scheduler scheduler_;
  std::mt19937_64 seed_source_;
  SamplerWorkspace workspace_;
  std::vector<float> masked_logits_;
  double flops_per_token_recursion_ = 0;
  EngineStepStats last_step_;
  int64_t steps_ = 0;
};

}  // namespace mor

#endif  // MOR_SCHEDULER_ENGINE_CORE_H_
