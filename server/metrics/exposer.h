// Serves registered Collectables on GET /metrics in the text format 0.0.4,
// over HTTP with civetweb (prometheus-cpp's Exposer; ours reports a failed
// start through a Status instead of throwing).
#ifndef MOR_SERVER_METRICS_EXPOSER_H_
#define MOR_SERVER_METRICS_EXPOSER_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "server/metrics/metric_family.h"

struct mg_context;
struct mg_connection;

namespace mor::metrics {

struct ExposerOptions {
  std::string uri = "/metrics";
  int num_threads = 2;  // civetweb worker threads (concurrent scrapes)
};

// Thread-safe. Scrapes run on civetweb's worker threads and call Collect on
// every registered collectable still alive.
class Exposer {
 public:
  // Listens on `bind_address`, "host:port" with a numeric host ("127.0.0.1",
  // "[::1]"); port 0 picks a free port (see port()). Unavailable when civetweb
  // cannot start (address in use, malformed address).
  static absl::StatusOr<std::unique_ptr<Exposer>> Create(const std::string& bind_address,
                                                         ExposerOptions options = {});
  // Stops civetweb: waits for scrapes in progress; takes about 2 s (civetweb's
  // master thread polls its sockets with a fixed timeout).
  ~Exposer();
  Exposer(const Exposer&) = delete;
  Exposer& operator=(const Exposer&) = delete;

  // Adds `collectable` to every later scrape. Held weakly: once it is
  // destroyed it is skipped (and dropped).
  void RegisterCollectable(const std::weak_ptr<Collectable>& collectable);
  void RemoveCollectable(const std::weak_ptr<Collectable>& collectable);

  std::vector<int> GetListeningPorts() const;
  // The first listening port.
  int port() const;

 private:
  explicit Exposer(ExposerOptions options) : options_(std::move(options)) {}
  static int HandleRequest(mg_connection* connection, void* self);
  std::string Scrape();

  const ExposerOptions options_;
  mg_context* context_ = nullptr;
  absl::Mutex mu_;
  std::vector<std::weak_ptr<Collectable>> collectables_ ABSL_GUARDED_BY(mu_);
};

}  // namespace mor::metrics

#endif  // MOR_SERVER_METRICS_EXPOSER_H_
