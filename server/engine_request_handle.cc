#include "server/engine_request_handle.h"

#include <utility>

namespace mor {

absl::Status EngineRequestHandle::Submit(GenerationRequest request, GenerationSink* sink) {
  absl::StatusOr<uint64_t> id = engine_->Submit(std::move(request), sink);
  if (!id.ok()) return id.status();
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

}  // namespace mor
