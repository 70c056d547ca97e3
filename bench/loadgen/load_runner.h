// Drives a workload against mor_server: arrivals on schedule, an optional
// concurrency limit, streaming calls on the gRPC async API polled by the
// runner's own completion-queue threads, and a hard time limit.
#ifndef MOR_BENCH_LOADGEN_LOAD_RUNNER_H_
#define MOR_BENCH_LOADGEN_LOAD_RUNNER_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "bench/loadgen/stream_call.h"
#include "bench/loadgen/workload.h"
#include "grpcpp/grpcpp.h"
#include "proto/mor/v1/mor.grpc.pb.h"

namespace mor::loadgen {

struct LoadRunnerOptions {
  std::string address;
  // Completion-queue threads, one channel (TCP connection) each.
  int32_t client_threads = 2;
  // Most calls in flight; 0 = unlimited (arrivals alone decide).
  int32_t max_concurrency = 0;
  // From the first dispatch: no request starts after it, and the calls still
  // in flight are then cancelled (they count as failed, CANCELLED).
  absl::Duration max_duration = absl::Minutes(5);
  // Deadline of each call.
  absl::Duration request_timeout = absl::Minutes(2);
};

struct RunResult {
  std::vector<RequestRecord> records;  // one per request, in workload order
  double duration_seconds = 0;         // first dispatch -> last call over
  double cpu_seconds = 0;              // this process (every thread) during the run
  int32_t peak_in_flight = 0;
  bool hit_max_duration = false;
};

class LoadRunner {
 public:
  // Opens the channels and waits (up to 10 s) until the server is reachable.
  static absl::StatusOr<std::unique_ptr<LoadRunner>> Create(const LoadRunnerOptions& options);

  LoadRunner(const LoadRunner&) = delete;
  LoadRunner& operator=(const LoadRunner&) = delete;

  // For the setup RPCs (GetModelInfo, Tokenize).
  mor::v1::MorService::Stub& stub() { return *stubs_[0]; }

  // Runs every request of `specs` (blocking). Each call sends `base` with the
  // request's prompt, max_tokens and recursion policy filled in. Not
  // reentrant: one Run at a time.
  RunResult Run(const std::vector<RequestSpec>& specs, const mor::v1::GenerateRequest& base);

  // Prompt + received tokens of the calls in flight (any thread).
  int64_t cached_tokens() const { return cached_tokens_.load(std::memory_order_relaxed); }
  // Calls in flight (any thread).
  int32_t in_flight() const {
    absl::MutexLock lock(&mu_);
    return in_flight_;
  }

 private:
  explicit LoadRunner(const LoadRunnerOptions& options) : options_(options) {}

  void PollLoop(grpc::CompletionQueue* cq);
  void CancelAll() ABSL_LOCKS_EXCLUDED(mu_);

  const LoadRunnerOptions options_;
  std::vector<std::shared_ptr<grpc::Channel>> channels_;
  std::vector<std::unique_ptr<mor::v1::MorService::Stub>> stubs_;
  std::atomic<int64_t> cached_tokens_{0};

  mutable absl::Mutex mu_;
  int32_t in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  absl::flat_hash_map<StreamCall*, std::unique_ptr<StreamCall>> calls_ ABSL_GUARDED_BY(mu_);
};

// The GenerateRequest of one workload request.
mor::v1::GenerateRequest MakeRequest(const RequestSpec& spec, const mor::v1::GenerateRequest& base);

}  // namespace mor::loadgen

#endif  // MOR_BENCH_LOADGEN_LOAD_RUNNER_H_
