#include "server/request_metrics_sink.h"

namespace mor {
namespace {

double Seconds(std::chrono::steady_clock::duration d) {
  return std::chrono::duration<double>(d).count();
}

}  // namespace

RequestMetricsSink::RequestMetricsSink(ServingMetrics* metrics, GenerationSink* inner,
                                       bool adaptive)
    : metrics_(metrics), inner_(inner), adaptive_(adaptive), start_(Clock::now()) {}

void RequestMetricsSink::OnTokens(absl::Span<const GeneratedToken> tokens) {
  const Clock::time_point now = Clock::now();
  const bool first = num_tokens_ == 0;
  if (first) first_token_ = now;
  metrics_->TokensDelivered(adaptive_, tokens, first,
                            Seconds(now - (first ? start_ : last_token_)));
  last_token_ = now;
  num_tokens_ += static_cast<int64_t>(tokens.size());
  inner_->OnTokens(tokens);
}

void RequestMetricsSink::OnFinished(const GenerationResult& result) {
  RequestTiming timing;
  timing.e2e_seconds = Seconds(Clock::now() - start_);
  timing.num_tokens = num_tokens_;
  if (num_tokens_ > 0) {
    timing.first_token_seconds = Seconds(first_token_ - start_);
    timing.decode_seconds = Seconds(last_token_ - first_token_);
  }
  // Recorded before the reactor sees the result, so a client that has its
  // final message also finds the request in the metrics.
  metrics_->RequestFinished(result, timing);
  GenerationSink* inner = inner_;
  delete this;
  inner->OnFinished(result);
}

}  // namespace mor
