#include "server/generate_stream_reactor.h"

#include <utility>

#include "server/grpc_status.h"

namespace mor {

GenerateStreamReactor::GenerateStreamReactor(Engine* engine,
                                             absl::StatusOr<GenerationRequest> request,
                                             OutputOptions options, ServingMetrics* metrics)
    : options_(options), handle_(engine, metrics) {
  if (options_.tokenizer != nullptr) text_.emplace(options_.tokenizer, options_.stop_strings);
  absl::Status status = request.status();
  if (status.ok()) {
    {
      absl::MutexLock lock(&mu_);
      final_.mutable_final()->set_request_id(request->request_id);
    }
    // The reactor is not yet bound to the call, so OnDone cannot run (and
    // delete it) before this constructor returns, even if the engine finishes.
    status = handle_.Submit(*std::move(request), this);
  }
  if (!status.ok()) {
    handle_.Reject(status);
    Finish(ToGrpcStatus(status));
  }
}

void GenerateStreamReactor::OnTokens(absl::Span<const GeneratedToken> tokens) {
  // Text first (engine thread only): a stop string ends the stream; tokens
  // after it are dropped and the engine request is stopped.
  if (text_ && text_->stopped()) return;
  TextStream::Delta delta;
  if (text_) {
    std::vector<int32_t> ids;
    for (const GeneratedToken& token : tokens) ids.push_back(token.token_id);
    delta = text_->Push(ids);
  }
  Next next;
  {
    absl::MutexLock lock(&mu_);
    if (write_failed_) return;
    v1::GenerateResponse::Chunk* chunk = pending_chunk_.mutable_chunk();
    AppendTokens(tokens, options_, chunk);
    chunk->mutable_text()->append(delta.text);
    next = NextLocked();
  }
  if (delta.stopped) handle_.Stop(FinishReason::kStopString);
  Start(next);
}

void GenerateStreamReactor::OnFinished(const GenerationResult& result) {
  Next next;
  {
    absl::MutexLock lock(&mu_);
    finished_ = true;
    status_ = ToGrpcStatus(result.status);
    if (result.status.ok()) {
      if (text_ && !text_->stopped()) {
        // The held-back tail (a possible stop-string prefix that never completed).
        const std::string rest = text_->Finish();
        if (!rest.empty()) pending_chunk_.mutable_chunk()->mutable_text()->append(rest);
      }
      v1::GenerateResponse::Final* final = final_.mutable_final();
      final->set_finish_reason(ToProto(result.reason));
      FillUsage(result.usage, final->mutable_usage());
    }
    next = NextLocked();
  }
  Start(next);
}

void GenerateStreamReactor::OnWriteDone(bool ok) {
  Next next;
  {
    absl::MutexLock lock(&mu_);
    writing_ = false;
    if (!ok) write_failed_ = true;  // the call is over for the client
    next = NextLocked();
  }
  if (!ok) handle_.Cancel();
  Start(next);
}

void GenerateStreamReactor::OnCancel() { handle_.Cancel(); }

void GenerateStreamReactor::OnDone() { delete this; }

GenerateStreamReactor::Next GenerateStreamReactor::NextLocked() {
  Next next;
  if (writing_ || finish_called_) return next;
  if (!write_failed_) {
    if (pending_chunk_.has_chunk() &&
        (pending_chunk_.chunk().token_ids_size() > 0 || !pending_chunk_.chunk().text().empty())) {
      in_flight_ = std::move(pending_chunk_);
      pending_chunk_.Clear();
      writing_ = true;
      next.kind = Next::kWrite;
      return next;
    }
    if (finished_ && status_.ok() && !final_sent_) {
      in_flight_ = final_;
      final_sent_ = true;
      writing_ = true;
      next.kind = Next::kWrite;
      return next;
    }
  }
  if (finished_) {
    finish_called_ = true;
    next.kind = Next::kFinish;
    next.status = status_;
  }
  return next;
}

void GenerateStreamReactor::Start(const Next& next) {
  // `in_flight_` is not touched again until OnWriteDone, so no lock is needed.
  switch (next.kind) {
    case Next::kNone:
      return;
    case Next::kWrite:
      StartWrite(&in_flight_);
      return;
    case Next::kFinish:
      Finish(next.status);  // last use of `this`: OnDone may follow at once
      return;
  }
}

}  // namespace mor
