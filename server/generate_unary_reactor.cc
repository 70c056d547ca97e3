#include "server/generate_unary_reactor.h"

#include <utility>

#include "server/grpc_status.h"

namespace mor {

GenerateUnaryReactor::GenerateUnaryReactor(Engine* engine,
                                           absl::StatusOr<GenerationRequest> request,
                                           OutputOptions options,
                                           v1::GenerateUnaryResponse* response,
                                           ServingMetrics* metrics)
    : options_(options), response_(response), handle_(engine, metrics) {
  if (options_.tokenizer != nullptr) text_.emplace(options_.tokenizer, options_.stop_strings);
  absl::Status status = request.status();
  if (status.ok()) {
    response_->set_request_id(request->request_id);
    // Not yet bound to the call: OnDone cannot run before this returns.
    status = handle_.Submit(*std::move(request), this);
  }
  if (!status.ok()) {
    handle_.Reject(status);
    Finish(ToGrpcStatus(status));
  }
}

void GenerateUnaryReactor::OnTokens(absl::Span<const GeneratedToken> tokens) {
  if (text_ && text_->stopped()) return;  // tokens after a stop string are dropped
  AppendTokens(tokens, options_, response_);
  if (!text_) return;
  std::vector<int32_t> ids;
  for (const GeneratedToken& token : tokens) ids.push_back(token.token_id);
  const TextStream::Delta delta = text_->Push(ids);
  response_->mutable_text()->append(delta.text);
  if (delta.stopped) handle_.Stop(FinishReason::kStopString);
}

void GenerateUnaryReactor::OnFinished(const GenerationResult& result) {
  if (result.status.ok()) {
    if (text_ && !text_->stopped()) response_->mutable_text()->append(text_->Finish());
    response_->set_finish_reason(ToProto(result.reason));
    FillUsage(result.usage, response_->mutable_usage());
  }
  Finish(ToGrpcStatus(result.status));  // last use of `this`
}

void GenerateUnaryReactor::OnCancel() { handle_.Cancel(); }

void GenerateUnaryReactor::OnDone() { delete this; }

}  // namespace mor
