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

OutputOptions OutputOptionsOf(const v1::GenerateRequest& request) {
  OutputOptions options;
  options.return_depths = request.return_depths();
  options.return_logprobs = request.top_logprobs() > 0;
  return options;
}

}  // namespace

MorServiceImpl::MorServiceImpl(Engine* engine, RequestLimits limits, ServingMetrics* metrics)
    : engine_(engine),
      limits_(limits),
      metrics_(metrics),
      model_info_(MakeModelInfo(*engine, limits)) {}

absl::StatusOr<GenerationRequest> MorServiceImpl::Prepare(
    const grpc::CallbackServerContext& context, const v1::GenerateRequest& request) {
  absl::StatusOr<GenerationRequest> parsed = ParseGenerateRequest(
      request, engine_->config(), limits_, absl::StrCat("req-", next_request_number_.fetch_add(1)));
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
  return new GenerateStreamReactor(engine_, Prepare(*context, *request), OutputOptionsOf(*request),
                                   metrics_);
}

grpc::ServerUnaryReactor* MorServiceImpl::GenerateUnary(grpc::CallbackServerContext* context,
                                                        const v1::GenerateRequest* request,
                                                        v1::GenerateUnaryResponse* response) {
  return new GenerateUnaryReactor(engine_, Prepare(*context, *request), OutputOptionsOf(*request),
                                  response, metrics_);
}

grpc::ServerUnaryReactor* MorServiceImpl::Tokenize(grpc::CallbackServerContext* context,
                                                   const v1::TokenizeRequest* request,
                                                   v1::TokenizeResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(
      ToGrpcStatus(absl::UnimplementedError("Tokenize needs the tokenizer (not yet available)")));
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
