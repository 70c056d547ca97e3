// Server side of one MorService.GenerateUnary call (gRPC callback API).
#ifndef MOR_SERVER_GENERATE_UNARY_REACTOR_H_
#define MOR_SERVER_GENERATE_UNARY_REACTOR_H_

#include <optional>

#include "absl/status/statusor.h"
#include "grpcpp/grpcpp.h"
#include "proto/mor/v1/mor.pb.h"
#include "scheduler/engine.h"
#include "scheduler/generation_sink.h"
#include "server/engine_request_handle.h"
#include "server/response_conversion.h"
#include "server/serving_metrics.h"
#include "server/text_stream.h"

namespace mor {

// Collects the tokens into the response and finishes when the engine does.
// OnCancel aborts the engine request; Finish always follows the engine's
// OnFinished. Deletes itself in OnDone.
class GenerateUnaryReactor final : public grpc::ServerUnaryReactor, public GenerationSink {
 public:
  // Create with `new` inside the method handler. `response` is the call's.
  // `metrics` (may be null) records the call.
  GenerateUnaryReactor(Engine* engine, absl::StatusOr<GenerationRequest> request,
                       OutputOptions options, v1::GenerateUnaryResponse* response,
                       ServingMetrics* metrics = nullptr);

  // GenerationSink (engine thread; the response is only touched there until
  // Finish).
  void OnTokens(absl::Span<const GeneratedToken> tokens) override;
  void OnFinished(const GenerationResult& result) override;

  // ServerUnaryReactor.
  void OnCancel() override;
  void OnDone() override;

 private:
  const OutputOptions options_;
  v1::GenerateUnaryResponse* const response_;
  EngineRequestHandle handle_;
  std::optional<TextStream> text_;  // engine thread only
};

}  // namespace mor

#endif  // MOR_SERVER_GENERATE_UNARY_REACTOR_H_
