#include "server/mor_service_impl.h"

#include <chrono>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "server/generate_stream_reactor.h"
#include "server/generate_unary_reactor.h"
#include "server/grpc_status.h"
#include "server/response_conversion.h"

namespace mor {
namespace {

OutputOptions OutputOptionsOf(const v1::GenerateRequest& request, const Tokenizer* tokenizer) {
  OutputOptions options;
  options.return_depths = request.return_depths();
  options.return_logprobs = request.top_logprobs() > 0;
  options.tokenizer = tokenizer;
  options.stop_strings.assign(request.stopping().stop().begin(), request.stopping().stop().end());
  return options;
}

}  // namespace

MorServiceImpl::MorServiceImpl(Engine* engine, RequestLimits limits, ServingMetrics* metrics,
                               std::shared_ptr<const Tokenizer> tokenizer)
    : engine_(engine),
      limits_(limits),
      metrics_(metrics),
      tokenizer_(std::move(tokenizer)),
      model_info_(MakeModelInfo(*engine, limits)) {}

absl::StatusOr<GenerationRequest> MorServiceImpl::Prepare(
    const grpc::CallbackServerContext& context, const v1::GenerateRequest& request) {
  absl::StatusOr<GenerationRequest> parsed = ParseGenerateRequest(
      request, engine_->config(), limits_, absl::StrCat("req-", next_request_number_.fetch_add(1)),
      tokenizer_.get());
  if (parsed.ok()) {
    const auto deadline = context.deadline();
    if (deadline != std::chrono::system_clock::time_point::max()) {
      parsed->deadline = absl::FromChrono(deadline);
    }
    // The server's cap applies even when the client set no deadline.
    parsed->deadline = std::min(parsed->deadline, absl::Now() + limits_.max_request_duration);
  }
  return parsed;
}

grpc::ServerWriteReactor<v1::GenerateResponse>* MorServiceImpl::Generate(
    grpc::CallbackServerContext* context, const v1::GenerateRequest* request) {
  return new GenerateStreamReactor(engine_, Prepare(*context, *request),
                                   OutputOptionsOf(*request, tokenizer_.get()), metrics_);
}

grpc::ServerUnaryReactor* MorServiceImpl::GenerateUnary(grpc::CallbackServerContext* context,
                                                        const v1::GenerateRequest* request,
                                                        v1::GenerateUnaryResponse* response) {
  return new GenerateUnaryReactor(engine_, Prepare(*context, *request),
                                  OutputOptionsOf(*request, tokenizer_.get()), response, metrics_);
}

grpc::ServerUnaryReactor* MorServiceImpl::Tokenize(grpc::CallbackServerContext* context,
                                                   const v1::TokenizeRequest* request,
                                                   v1::TokenizeResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  if (tokenizer_ == nullptr) {
    reactor->Finish(ToGrpcStatus(
        absl::FailedPreconditionError("Tokenize: this model has no tokenizer (tokenizer.json)")));
    return reactor;
  }
  if (request->text().size() > (size_t{1} << 24)) {
    reactor->Finish(ToGrpcStatus(absl::InvalidArgumentError("text is longer than 16 MiB")));
    return reactor;
  }
  for (int32_t id : tokenizer_->Encode(request->text(), request->add_bos())) {
    response->add_token_ids(static_cast<uint32_t>(id));
  }
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* MorServiceImpl::GetModelInfo(grpc::CallbackServerContext* context,
                                                       const v1::GetModelInfoRequest* request,
                                                       v1::ModelInfo* response) {
  *response = model_info_;
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

}  // namespace mor
