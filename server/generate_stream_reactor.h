// Server side of one MorService.Generate call (gRPC callback API).
#ifndef MOR_SERVER_GENERATE_STREAM_REACTOR_H_
#define MOR_SERVER_GENERATE_STREAM_REACTOR_H_

#include <optional>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "grpcpp/grpcpp.h"
#include "proto/mor/v1/mor.pb.h"
#include "scheduler/engine.h"
#include "scheduler/generation_sink.h"
#include "server/engine_request_handle.h"
#include "server/response_conversion.h"
#include "server/serving_metrics.h"
#include "server/text_stream.h"

namespace mor {

// Streams a request's tokens as they come out of the engine. No reaction ever
// blocks: tokens arriving while a write is in flight are merged into the next
// Chunk, so at most one write is in flight and at most one chunk is queued.
// The Final message follows the last chunk, then Finish(OK); an engine error
// finishes with that error instead. OnCancel (client gone, deadline) aborts the
// engine request; Finish is always called after the engine's OnFinished, so
// the engine never sees a deleted sink. Deletes itself in OnDone.
class GenerateStreamReactor final : public grpc::ServerWriteReactor<v1::GenerateResponse>,
                                    public GenerationSink {
 public:
  // Create with `new` inside the method handler (which returns it). Submits
  // `request` to `engine`, or finishes at once with its (or Submit's) error.
  // `metrics` (may be null) records the call.
  GenerateStreamReactor(Engine* engine, absl::StatusOr<GenerationRequest> request,
                        OutputOptions options, ServingMetrics* metrics = nullptr);

  // GenerationSink (engine thread).
  void OnTokens(absl::Span<const GeneratedToken> tokens) override;
  void OnFinished(const GenerationResult& result) override;

  // ServerWriteReactor.
  void OnWriteDone(bool ok) override;
  void OnCancel() override;
  void OnDone() override;

 private:
  // The next library operation to start, decided under the lock and started
  // after releasing it (a reaction may run, and OnDone delete `this`, as soon
  // as it is started).
  struct Next {
    enum Kind { kNone, kWrite, kFinish } kind = kNone;
    grpc::Status status;
  };
  Next NextLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Start(const Next& next);

  const OutputOptions options_;
  EngineRequestHandle handle_;
  // Text output (when the model has a tokenizer); engine thread only.
  std::optional<TextStream> text_;

  absl::Mutex mu_;
  // The message being written: set under the lock with writing_, then read by
  // the library until OnWriteDone, so it is not guarded.
  v1::GenerateResponse in_flight_;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  v1::GenerateResponse pending_chunk_ ABSL_GUARDED_BY(mu_);  // tokens not yet written
  bool finished_ ABSL_GUARDED_BY(mu_) = false;               // the engine is done
  v1::GenerateResponse final_ ABSL_GUARDED_BY(mu_);
  bool final_sent_ ABSL_GUARDED_BY(mu_) = false;
  grpc::Status status_ ABSL_GUARDED_BY(mu_);
  bool write_failed_ ABSL_GUARDED_BY(mu_) = false;
  bool finish_called_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace mor

#endif  // MOR_SERVER_GENERATE_STREAM_REACTOR_H_
