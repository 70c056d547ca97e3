#include "server/engine_request_handle.h"

#include <utility>

#include "server/request_metrics_sink.h"

namespace mor {

absl::Status EngineRequestHandle::Submit(GenerationRequest request, GenerationSink* sink) {
  const DepthPolicy policy = request.policy;
  RequestMetricsSink* metered = nullptr;
  if (metrics_ != nullptr) {
    metered = new RequestMetricsSink(metrics_, sink, policy.adaptive());
    sink = metered;
  }
  absl::StatusOr<uint64_t> id = engine_->Submit(std::move(request), sink);
  if (!id.ok()) {
    delete metered;  // the engine never saw it
    return id.status();
  }
  if (metrics_ != nullptr) metrics_->RequestAccepted(policy);
  bool cancelled = false;
  {
    absl::MutexLock lock(&mu_);
    id_ = *id;
    cancelled = cancelled_;
  }
  if (cancelled) engine_->Abort(*id);
  return absl::OkStatus();
}

void EngineRequestHandle::Cancel() {
  uint64_t id = 0;
  {
    absl::MutexLock lock(&mu_);
    cancelled_ = true;
    id = id_;
  }
  if (id != 0) engine_->Abort(id);
}

void EngineRequestHandle::Stop(FinishReason reason) {
  uint64_t id = 0;
  {
    absl::MutexLock lock(&mu_);
    id = id_;
  }
  if (id != 0) engine_->Abort(id, reason);
}

void EngineRequestHandle::Reject(const absl::Status& status) {
  if (metrics_ != nullptr && !status.ok()) metrics_->RequestRejected(status);
}

}  // namespace mor
