// A gRPC call's link to its request in the Engine: submits once and aborts on
// cancellation, whichever order the two happen in (a call can be cancelled
// while Submit is still running).
#ifndef MOR_SERVER_ENGINE_REQUEST_HANDLE_H_
#define MOR_SERVER_ENGINE_REQUEST_HANDLE_H_

#include <cstdint>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "scheduler/engine.h"
#include "scheduler/generation_sink.h"
#include "scheduler/generation_types.h"
#include "server/serving_metrics.h"

namespace mor {

// Thread-safe. `engine` (and `metrics`, when not null) must outlive the
// handle; with `metrics`, the request is recorded in it (RequestMetricsSink).
class EngineRequestHandle {
 public:
  explicit EngineRequestHandle(Engine* engine, ServingMetrics* metrics = nullptr)
      : engine_(engine), metrics_(metrics) {}

  // Engine::Submit; if Cancel() already ran, the request is aborted at once
  // (the sink still gets OnFinished). On error the sink is never called.
  absl::Status Submit(GenerationRequest request, GenerationSink* sink);
  // Aborts the submitted request, or marks the handle so that Submit aborts it.
  void Cancel();
  // Ends the submitted request with `reason` (e.g. a stop string matched).
  void Stop(FinishReason reason);
  // Records that the call ends with `status` (not OK) without reaching the
  // engine: a validation error, or Submit's error.
  void Reject(const absl::Status& status);

 private:
  Engine* const engine_;
  ServingMetrics* const metrics_;
  absl::Mutex mu_;
  uint64_t id_ ABSL_GUARDED_BY(mu_) = 0;  // 0: not submitted
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace mor

#endif  // MOR_SERVER_ENGINE_REQUEST_HANDLE_H_
