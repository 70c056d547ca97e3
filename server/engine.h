// The generation engine: one engine thread owns the ModelRunner and the KV
// block allocator and runs the submitted requests; other threads talk to it
// only through its inbox (Submit / Abort / Stop) and receive results through
// each request's GenerationSink.
//
// THIS FIRST VERSION RUNS ONE REQUEST AT A TIME, in FIFO order: the whole
// prompt is prefilled in one ModelRunner::Step, then one token is decoded per
// Step (greedy or sampled with SequenceSampler) until max_tokens, an EOS token
// (config eos_token_ids, unless ignore_eos), a stop token, the deadline or an
// abort. Continuous batching (the scheduler in scheduler/) replaces this loop
// in the next issue; the public interface is meant to stay.
//
// Threading: every public method is thread-safe. Sinks are called on the
// engine thread only, never under the engine's lock.
#ifndef MOR_SERVER_ENGINE_H_
#define MOR_SERVER_ENGINE_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "model/kv_cache_types.h"
#include "model/model_config.h"
#include "model/model_runner.h"
#include "model/simple_block_allocator.h"
#include "server/generation_sink.h"
#include "server/generation_types.h"

namespace mor {

// Plain counters (metrics are built on them elsewhere).
struct EngineCounters {
  int64_t requests_submitted = 0;
  int64_t requests_finished = 0;   // ended with an OK status (any FinishReason)
  int64_t requests_cancelled = 0;  // of those, FinishReason::kCancelled
  int64_t requests_failed = 0;     // ended with an error status
  int64_t tokens_generated = 0;
};

class Engine {
 public:
  // Takes ownership of `runner` and starts the engine thread.
  static absl::StatusOr<std::unique_ptr<Engine>> Create(std::unique_ptr<ModelRunner> runner);
  // Stop()s and joins the engine thread.
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Queues `request`; its output goes to `sink` (see GenerationSink for the
  // lifetime contract). Returns the engine's id for Abort, or an error, in
  // which case the sink is never called: InvalidArgument (malformed request),
  // ResourceExhausted (the KV cache can never hold prompt + max_tokens),
  // Unavailable (stopped).
  absl::StatusOr<uint64_t> Submit(GenerationRequest request, GenerationSink* sink);

  // Asks the engine to end request `id` with FinishReason::kCancelled (its
  // sink gets OnFinished soon, its KV blocks are freed). No-op for ids that
  // already finished.
  void Abort(uint64_t id);

  // Stops accepting requests; the running request ends with kCancelled, queued
  // ones with Unavailable; joins the engine thread. Idempotent.
  void Stop();

  // Immutable model facts (any thread).
  const ModelConfig& config() const { return config_; }
  const KvCacheGeometry& kv_geometry() const { return geometry_; }
  const std::string& device() const { return device_; }
  const std::string& dtype() const { return dtype_; }

  // Free blocks of `pool` (usable capacity is geometry num_*_blocks - 1 when
  // nothing runs). Updated by the engine thread after every step; a test hook.
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
  enum class Interrupt { kNone, kAbort, kStop };

  explicit Engine(std::unique_ptr<ModelRunner> runner);
  void Loop();
  // Runs one request to completion on the engine thread.
  GenerationResult Run(const Pending& pending);
  // Drops aborted requests from the queue (they are returned for finishing).
  std::deque<Pending> TakeAbortedLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  Interrupt CheckInterrupt(uint64_t id);
  void PublishFreeBlocks();
  void LogFinished(const Pending& pending, const GenerationResult& result, int64_t completion);
  int64_t WorstCaseBlocks(const GenerationRequest& request, KvPool pool) const;

  // Engine-thread state.
  std::unique_ptr<ModelRunner> runner_;
  std::unique_ptr<SimpleBlockAllocator> allocator_;
  std::mt19937_64 seed_source_;  // fallback sampling seeds
  double flops_per_token_recursion_ = 0;

  // Immutable after construction.
  ModelConfig config_;
  KvCacheGeometry geometry_;
  std::string device_;
  std::string dtype_;

  std::atomic<int64_t> free_unique_blocks_{0};
  std::atomic<int64_t> free_depth_blocks_{0};

  mutable absl::Mutex mu_;
  absl::CondVar work_ready_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  std::deque<Pending> queue_ ABSL_GUARDED_BY(mu_);
  uint64_t running_id_ ABSL_GUARDED_BY(mu_) = 0;                 // 0: none
  absl::flat_hash_set<uint64_t> live_ids_ ABSL_GUARDED_BY(mu_);  // queued or running
  absl::flat_hash_set<uint64_t> aborted_ ABSL_GUARDED_BY(mu_);   // subset of live_ids_
  EngineCounters counters_ ABSL_GUARDED_BY(mu_);

  std::once_flag join_once_;
  std::thread thread_;  // last: starts after everything above is built
};

}  // namespace mor

#endif  // MOR_SERVER_ENGINE_H_
