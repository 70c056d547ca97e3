#include "server/mor_server.h"

#include <algorithm>
#include <cstdint>
#include <utility>

#include "absl/strings/str_cat.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"

namespace mor {
namespace {

constexpr char kServiceName[] = "mor.v1.MorService";

// "host:port" -> host ("[::1]:80" -> "[::1]").
std::string HostOf(const std::string& address) {
  const size_t colon = address.rfind(':');
  return colon == std::string::npos ? address : address.substr(0, colon);
}

}  // namespace

MorServer::MorServer(std::unique_ptr<Engine> engine, const MorServerOptions& options)
    : engine_(std::move(engine)), host_(HostOf(options.listen_address)) {
  if (!options.metrics_address.empty()) {
    metrics_ = std::make_shared<ServingMetrics>(*engine_, options.metrics);
    ServingMetrics* metrics = metrics_.get();
    engine_->SetStepObserver(
        [metrics](const EngineStepStats& stats) { metrics->ObserveStep(stats); });
  }
  service_ = std::make_unique<MorServiceImpl>(engine_.get(), options.limits, metrics_.get(),
                                              options.tokenizer);
}

absl::StatusOr<std::unique_ptr<MorServer>> MorServer::Start(std::unique_ptr<Engine> engine,
                                                            const MorServerOptions& options) {
  if (engine == nullptr) return absl::InvalidArgumentError("MorServer needs an engine");
  std::unique_ptr<MorServer> server(new MorServer(std::move(engine), options));
  if (server->metrics_ != nullptr) {
    auto exposer = metrics::Exposer::Create(options.metrics_address);
    if (!exposer.ok()) {
      server->engine_->Stop();
      return exposer.status();
    }
    server->exposer_ = std::move(*exposer);
    server->exposer_->RegisterCollectable(server->metrics_);
  }
  // Both are process-wide switches read when a server is built.
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();

  grpc::ServerBuilder builder;
  // gRPC sets SO_REUSEPORT by default, which would let a second server
  // silently share the port; a taken port must be an error instead.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  auto to_ms = [](absl::Duration d) {
    return static_cast<int>(std::min<int64_t>(absl::ToInt64Milliseconds(d), INT32_MAX));
  };
  if (options.max_connection_age != absl::InfiniteDuration()) {
    builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_MS, to_ms(options.max_connection_age));
  }
  if (options.max_connection_age_grace != absl::InfiniteDuration()) {
    builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_GRACE_MS,
                               to_ms(options.max_connection_age_grace));
  }
  builder.AddListeningPort(options.listen_address, grpc::InsecureServerCredentials(),
                           &server->port_);
  builder.RegisterService(server->service_.get());
  server->server_ = builder.BuildAndStart();
  if (server->server_ == nullptr || server->port_ == 0) {
    server->engine_->Stop();
    return absl::UnavailableError(absl::StrCat("cannot listen on ", options.listen_address,
                                               " (address in use, or not a valid host:port?)"));
  }
  grpc::HealthCheckServiceInterface* health = server->server_->GetHealthCheckService();
  if (health != nullptr) {
    health->SetServingStatus(true);
    health->SetServingStatus(kServiceName, true);
  }
  return server;
}

MorServer::~MorServer() {
  Shutdown(absl::ZeroDuration());
  exposer_.reset();  // before the engine goes: scrapes ask it whether it is idle
}

std::string MorServer::address() const { return absl::StrCat(host_, ":", port_); }

void MorServer::Shutdown(absl::Duration grace) {
  absl::MutexLock lock(&shutdown_mu_);
  if (shut_down_) return;
  shut_down_ = true;
  if (server_ != nullptr) {
    if (grpc::HealthCheckServiceInterface* health = server_->GetHealthCheckService()) {
      health->SetServingStatus(false);  // also every named service
    }
    // The engine keeps running meanwhile: calls cancelled at the deadline
    // need it to finish their requests.
    server_->Shutdown(absl::ToChronoTime(absl::Now() + grace));
    server_->Wait();
  }
  engine_->Stop();
}

}  // namespace mor
