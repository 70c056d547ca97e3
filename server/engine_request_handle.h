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

namespace mor {

// Thread-safe. `engine` must outlive the handle.
class EngineRequestHandle {
 public:
  explicit EngineRequestHandle(Engine* engine) : engine_(engine) {}

  // Engine::Submit; if Cancel() already ran, the request is aborted at once
  // (the sink still gets OnFinished). On error the sink is never called.
  absl::Status Submit(GenerationRequest request, GenerationSink* sink);
  // Aborts the submitted request, or marks the handle so that Submit aborts it.
  void Cancel();

 private:
  Engine* const engine_;
  absl::Mutex mu_;
  uint64_t id_ ABSL_GUARDED_BY(mu_) = 0;  // 0: not submitted
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace mor

#endif  // MOR_SERVER_ENGINE_REQUEST_HANDLE_H_
