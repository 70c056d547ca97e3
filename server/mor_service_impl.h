// mor.v1.MorService on the gRPC callback API. Every handler returns at once:
// generation runs on the Engine thread and reaches the call through a reactor.
#ifndef MOR_SERVER_MOR_SERVICE_IMPL_H_
#define MOR_SERVER_MOR_SERVICE_IMPL_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "grpcpp/grpcpp.h"
#include "model/tokenizer.h"
#include "proto/mor/v1/mor.grpc.pb.h"
#include "scheduler/engine.h"
#include "server/request_validation.h"
#include "server/serving_metrics.h"

namespace mor {

// Thread-safe (gRPC calls the handlers from its own threads). `engine` must
// outlive the service and keep running until the gRPC server has shut down;
// so must `metrics` (null: no metrics), which records every Generate call.
class MorServiceImpl final : public v1::MorService::CallbackService {
 public:
  // `tokenizer` (may be null) enables text input and output, stop strings and
  // Tokenize.
  MorServiceImpl(Engine* engine, RequestLimits limits, ServingMetrics* metrics = nullptr,
                 std::shared_ptr<const Tokenizer> tokenizer = nullptr);

  grpc::ServerWriteReactor<v1::GenerateResponse>* Generate(
      grpc::CallbackServerContext* context, const v1::GenerateRequest* request) override;
  grpc::ServerUnaryReactor* GenerateUnary(grpc::CallbackServerContext* context,
                                          const v1::GenerateRequest* request,
                                          v1::GenerateUnaryResponse* response) override;
  grpc::ServerUnaryReactor* Tokenize(grpc::CallbackServerContext* context,
                                     const v1::TokenizeRequest* request,
                                     v1::TokenizeResponse* response) override;
  grpc::ServerUnaryReactor* GetModelInfo(grpc::CallbackServerContext* context,
                                         const v1::GetModelInfoRequest* request,
                                         v1::ModelInfo* response) override;

 private:
  // Validates `request`, names it (client id or "req-<n>") and sets the
  // engine deadline from the call's.
  absl::StatusOr<GenerationRequest> Prepare(const grpc::CallbackServerContext& context,
                                            const v1::GenerateRequest& request);

  Engine* const engine_;
  const RequestLimits limits_;
  ServingMetrics* const metrics_;
  const std::shared_ptr<const Tokenizer> tokenizer_;
  const v1::ModelInfo model_info_;
  std::atomic<uint64_t> next_request_number_{1};
};

}  // namespace mor

#endif  // MOR_SERVER_MOR_SERVICE_IMPL_H_
