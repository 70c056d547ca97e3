// The generation engine: one engine thread owns the scheduler, the KV cache
// manager and the model runner (EngineCore); other threads talk to it only
// through its inbox (Submit / Abort / Stop) and receive output through each
// request's GenerationSink. Usable in-process (benchmarks) and by the server.
//
// Threading: every public method is thread-safe. Sinks are called on the
// engine thread only, never under the engine's lock.
#ifndef MOR_SCHEDULER_ENGINE_H_
#define MOR_SCHEDULER_ENGINE_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "model/kv_cache_types.h"
#include "model/model_config.h"
#include "model/model_runner.h"
#include "scheduler/engine_core.h"
#include "scheduler/generation_sink.h"
#include "scheduler/generation_types.h"
#include "scheduler/scheduler.h"

namespace mor {

// Plain counters (metrics are built on them elsewhere).
struct EngineCounters {
  int64_t requests_submitted = 0;
  int64_t requests_finished = 0;   // ended with an OK status (any FinishReason)
  int64_t requests_cancelled = 0;  // of those, FinishReason::kCancelled
  int64_t requests_failed = 0;     // ended with an error status
  int64_t tokens_generated = 0;
  int64_t steps = 0;
  int64_t preemptions = 0;
};

struct EngineOptions {
  SchedulerConfig scheduler;
  uint64_t seed = 0;  // fallback sampling seeds
};

class Engine {
 public:
  // Takes ownership of `runner`; the KV cache manager mirrors the runner's
  // pools (kv_geometry()). Starts the engine thread.
  static absl::StatusOr<std::unique_ptr<Engine>> Create(std::unique_ptr<ModelRunner> runner,
                                                        EngineOptions options = {});
  // Stop()s and joins the engine thread.
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Queues `request`; its output goes to `sink` (see GenerationSink for the
  // lifetime contract). Returns the engine's id for Abort, or an error, in
  // which case the sink is never called: InvalidArgument (malformed request),
  // ResourceExhausted (queue full, or the KV cache can never hold prompt +
  // max_tokens), Unavailable (stopped).
  absl::StatusOr<uint64_t> Submit(GenerationRequest request, GenerationSink* sink);

  // Ends request `id` with `reason` (default kCancelled): its sink gets
  // OnFinished soon and its KV blocks are freed. No-op for finished ids.
  void Abort(uint64_t id, FinishReason reason = FinishReason::kCancelled);

  // Stops accepting requests; every request still here ends with
  // FinishReason::kCancelled; joins the engine thread. Idempotent.
  void Stop();

  // Called on the engine thread after every step (for metrics). Set before
  // submitting work.
  void SetStepObserver(std::function<void(const EngineStepStats&)> observer);

  // Immutable model facts (any thread).
  const ModelConfig& config() const { return config_; }
  const KvCacheGeometry& kv_geometry() const { return geometry_; }
  const std::string& device() const { return device_; }
  const std::string& dtype() const { return dtype_; }
  const SchedulerConfig& scheduler_config() const { return scheduler_config_; }

  // Free blocks of `pool` after the latest step (a test hook).
  int64_t free_blocks(KvPool pool) const;
  // True when no request is queued or running.
  bool idle() const;
  EngineCounters counters() const;

 private:
  struct Pending {
    uint64_t id = 0;
    GenerationRequest request;
    GenerationSink* sink = nullptr;
    absl::Time arrival;
  };
  class CountingSink;

  Engine(std::unique_ptr<EngineCore> core, EngineOptions options);
  void Loop();
  void Publish();

  std::unique_ptr<EngineCore> core_;  // engine thread only (immutable parts: any)

  // Immutable after construction.
  ModelConfig config_;
  KvCacheGeometry geometry_;
  std::string device_;
  std::string dtype_;
  SchedulerConfig scheduler_config_;

  std::atomic<int64_t> free_unique_blocks_{0};
  std::atomic<int64_t> free_depth_blocks_{0};

  mutable absl::Mutex mu_;
  absl::CondVar work_ready_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  std::deque<Pending> inbox_ ABSL_GUARDED_BY(mu_);
  std::vector<std::pair<uint64_t, FinishReason>> aborts_ ABSL_GUARDED_BY(mu_);
  int64_t live_ ABSL_GUARDED_BY(mu_) = 0;     // submitted, not yet finished
  int32_t waiting_ ABSL_GUARDED_BY(mu_) = 0;  // in the scheduler's queue (last step)
  EngineCounters counters_ ABSL_GUARDED_BY(mu_);
  std::function<void(const EngineStepStats&)> observer_;

  std::once_flag join_once_;
  std::thread thread_;  // last: starts after everything above is built
};

}  // namespace mor

#endif  // MOR_SCHEDULER_ENGINE_H_
