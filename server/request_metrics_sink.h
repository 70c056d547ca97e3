// Times one request for ServingMetrics on its way from the engine to the gRPC
// reactor.
#ifndef MOR_SERVER_REQUEST_METRICS_SINK_H_
#define MOR_SERVER_REQUEST_METRICS_SINK_H_

#include <chrono>
#include <cstdint>

#include "absl/types/span.h"
#include "scheduler/generation_sink.h"
#include "scheduler/generation_types.h"
#include "server/serving_metrics.h"

namespace mor {

// Forwards every callback to `inner` after recording it: the time to the
// first token, the gaps between deliveries, generated tokens and their exit
// depths, and at the end the request's outcome and latencies. The clock starts
// at construction (just before Engine::Submit). Callbacks come on the engine
// thread only, so no lock is needed. Owned by the engine from a successful
// Submit: deletes itself after forwarding OnFinished (if Submit fails, the
// submitter deletes it).
class RequestMetricsSink final : public GenerationSink {
 public:
  RequestMetricsSink(ServingMetrics* metrics, GenerationSink* inner, bool adaptive);

  void OnTokens(absl::Span<const GeneratedToken> tokens) override;
  void OnFinished(const GenerationResult& result) override;

 private:
  using Clock = std::chrono::steady_clock;

  ServingMetrics* const metrics_;
  GenerationSink* const inner_;
  const bool adaptive_;
  const Clock::time_point start_;
  Clock::time_point first_token_;
  Clock::time_point last_token_;
  int64_t num_tokens_ = 0;
};

}  // namespace mor

#endif  // MOR_SERVER_REQUEST_METRICS_SINK_H_
