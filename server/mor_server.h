// The gRPC server around an Engine: MorService, the standard grpc.health.v1
// service and server reflection on one listening address.
#ifndef MOR_SERVER_MOR_SERVER_H_
#define MOR_SERVER_MOR_SERVER_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "scheduler/engine.h"
#include "server/metrics/exposer.h"
#include "server/mor_service_impl.h"
#include "server/request_validation.h"
#include "server/serving_metrics.h"

namespace mor {

struct MorServerOptions {
  // host:port; port 0 picks a free port (see MorServer::port()).
  std::string listen_address = "127.0.0.1:50051";
  RequestLimits limits;
  // host:port of the Prometheus /metrics endpoint (port 0 picks a free port,
  // see MorServer::metrics_port()); empty: no metrics.
  std::string metrics_address;
  ServingMetricsOptions metrics;
  // The model's tokenizer for text input/output, Tokenize and stop strings;
  // null: token ids only.
  std::shared_ptr<const Tokenizer> tokenizer;
  // Connections older than this are sent GOAWAY (after `max_connection_age_grace`
  // for calls in flight), so clients that balance over DNS (a Kubernetes headless
  // Service) re-resolve and reach new replicas. Infinite: never.
  absl::Duration max_connection_age = absl::InfiniteDuration();
  absl::Duration max_connection_age_grace = absl::InfiniteDuration();
};

// Owns the engine and the gRPC server. Thread-safe.
class MorServer {
 public:
  // Starts serving `engine` (health SERVING), and /metrics when
  // options.metrics_address is set. Fails when an address cannot be bound.
  static absl::StatusOr<std::unique_ptr<MorServer>> Start(std::unique_ptr<Engine> engine,
                                                          const MorServerOptions& options);
  // Shutdown(absl::ZeroDuration()) unless already shut down, then stops the
  // metrics endpoint (about 2 s, see metrics::Exposer).
  ~MorServer();
  MorServer(const MorServer&) = delete;
  MorServer& operator=(const MorServer&) = delete;

  // The bound port.
  int port() const { return port_; }
  // "127.0.0.1:<port>"-style address clients can dial.
  std::string address() const;
  Engine& engine() { return *engine_; }
  // The /metrics port, 0 without metrics.
  int metrics_port() const { return exposer_ == nullptr ? 0 : exposer_->port(); }
  // Null without metrics.
  ServingMetrics* metrics() { return metrics_.get(); }

  // Graceful stop: health NOT_SERVING, no new calls, in-flight calls get
  // `grace` to finish and are then cancelled (their engine requests abort),
  // then the engine stops. Blocks until done. Idempotent.
  void Shutdown(absl::Duration grace);

 private:
  MorServer(std::unique_ptr<Engine> engine, const MorServerOptions& options);

  // Before engine_, so that metrics_ outlives the engine thread that feeds it;
  // the destructor stops exposer_ before engine_ goes (scrapes query it).
  std::shared_ptr<ServingMetrics> metrics_;
  std::unique_ptr<metrics::Exposer> exposer_;
  std::unique_ptr<Engine> engine_;
  std::unique_ptr<MorServiceImpl> service_;
  std::unique_ptr<grpc::Server> server_;
  std::string host_;
  int port_ = 0;
  absl::Mutex shutdown_mu_;
  bool shut_down_ ABSL_GUARDED_BY(shutdown_mu_) = false;
};

}  // namespace mor

#endif  // MOR_SERVER_MOR_SERVER_H_
