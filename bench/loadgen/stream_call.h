// One streaming Generate call on the gRPC async API, and what it measured.
#ifndef MOR_BENCH_LOADGEN_STREAM_CALL_H_
#define MOR_BENCH_LOADGEN_STREAM_CALL_H_

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "grpcpp/grpcpp.h"
#include "proto/mor/v1/mor.grpc.pb.h"

namespace mor::loadgen {

using Clock = std::chrono::steady_clock;

// Client-side measurements of one request. Times are seconds since the
// start of the run (the first dispatch).
struct RequestRecord {
  int32_t index = 0;
  std::string policy;  // PolicySpec::Name()
  int32_t prompt_tokens = 0;
  int32_t max_tokens = 0;
  bool sent = false;
  bool done = false;  // the call finished (OK or not)
  grpc::StatusCode code = grpc::StatusCode::OK;
  std::string error;
  double scheduled_seconds = 0;  // arrival time of the workload
  double send_seconds = 0;       // when the call started (after the concurrency limit)
  double first_token_seconds = -1;
  double end_seconds = 0;     // the final message (or the end of a failed call)
  int32_t output_tokens = 0;  // token ids received in chunks
  int32_t chunks = 0;
  std::vector<float> itl_seconds;     // gap between consecutive chunks
  std::vector<int32_t> depth_counts;  // [d-1]: generated tokens that reached depth d
  bool has_final = false;
  mor::v1::FinishReason finish_reason = mor::v1::FINISH_REASON_UNSPECIFIED;
  mor::v1::Usage usage;

  bool ok() const { return done && code == grpc::StatusCode::OK && has_final; }
  double ttft() const { return first_token_seconds - send_seconds; }
  double e2e() const { return end_seconds - send_seconds; }
};

// The state machine of one call: StartCall -> Read ... Read -> Finish, with
// exactly one operation pending on the completion queue at a time, so the
// call itself is the tag. Not thread-safe except Cancel(); every other
// method runs on the thread that polls the call's completion queue.
class StreamCall {
 public:
  // `record` and `cached_tokens` outlive the call. `cached_tokens` counts the
  // prompt and received tokens of the calls in flight (the KV sampler's
  // estimate of the tokens whose K/V the server holds).
  StreamCall(RequestRecord* record, Clock::time_point run_start,
             std::atomic<int64_t>* cached_tokens);

  // Sends `request` with the given deadline; events arrive on `cq`.
  void Start(mor::v1::MorService::Stub& stub, grpc::CompletionQueue* cq,
             const mor::v1::GenerateRequest& request, Clock::time_point deadline);

  // Handles the completion of the pending operation; returns true when the
  // call is over (the record is final and the call may be deleted).
  bool Proceed(bool ok);

  // Cancels the call (thread-safe); it then ends with CANCELLED.
  void Cancel() { context_.TryCancel(); }

 private:
  enum class State { kStarting, kReading, kFinishing };

  double Now() const;
  void OnResponse(double now);

  RequestRecord* const record_;
  const Clock::time_point run_start_;
  std::atomic<int64_t>* const cached_tokens_;
  grpc::ClientContext context_;
  std::unique_ptr<grpc::ClientAsyncReader<mor::v1::GenerateResponse>> reader_;
  mor::v1::GenerateResponse response_;
  grpc::Status status_;
  State state_ = State::kStarting;
  double last_chunk_seconds_ = 0;
};

}  // namespace mor::loadgen

#endif  // MOR_BENCH_LOADGEN_STREAM_CALL_H_
