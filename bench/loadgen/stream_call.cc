#include "bench/loadgen/stream_call.h"

#include <chrono>

namespace mor::loadgen {

StreamCall::StreamCall(RequestRecord* record, Clock::time_point run_start,
                       std::atomic<int64_t>* cached_tokens)
    : record_(record), run_start_(run_start), cached_tokens_(cached_tokens) {}

double StreamCall::Now() const {
  return std::chrono::duration<double>(Clock::now() - run_start_).count();
}

void StreamCall::Start(mor::v1::MorService::Stub& stub, grpc::CompletionQueue* cq,
                       const mor::v1::GenerateRequest& request, Clock::time_point deadline) {
  context_.set_deadline(
      std::chrono::system_clock::now() +
      std::chrono::duration_cast<std::chrono::system_clock::duration>(deadline - Clock::now()));
  record_->sent = true;
  record_->send_seconds = Now();
  cached_tokens_->fetch_add(record_->prompt_tokens, std::memory_order_relaxed);
  reader_ = stub.PrepareAsyncGenerate(&context_, request, cq);
  state_ = State::kStarting;
  reader_->StartCall(this);
}

void StreamCall::OnResponse(double now) {
  if (response_.has_chunk()) {
    const mor::v1::GenerateResponse::Chunk& chunk = response_.chunk();
    if (chunk.token_ids_size() == 0) return;
    if (record_->chunks == 0) {
      record_->first_token_seconds = now;
    } else {
      record_->itl_seconds.push_back(static_cast<float>(now - last_chunk_seconds_));
    }
    last_chunk_seconds_ = now;
    ++record_->chunks;
    record_->output_tokens += chunk.token_ids_size();
    cached_tokens_->fetch_add(chunk.token_ids_size(), std::memory_order_relaxed);
    for (uint32_t depth : chunk.depths()) {
      if (depth < 1 || depth > 64) continue;
      if (record_->depth_counts.size() < depth) record_->depth_counts.resize(depth, 0);
      ++record_->depth_counts[depth - 1];
    }
  } else if (response_.has_final()) {
    record_->has_final = true;
    record_->end_seconds = now;
    record_->finish_reason = response_.final().finish_reason();
    record_->usage = response_.final().usage();
  }
}

bool StreamCall::Proceed(bool ok) {
  switch (state_) {
    case State::kStarting:
    case State::kReading:
      if (state_ == State::kReading && ok) OnResponse(Now());
      if (ok) {
        state_ = State::kReading;
        reader_->Read(&response_, this);
      } else {
        state_ = State::kFinishing;
        reader_->Finish(&status_, this);
      }
      return false;
    case State::kFinishing:
      if (!record_->has_final) record_->end_seconds = Now();
      record_->done = true;
      record_->code = status_.error_code();
      if (!status_.ok()) record_->error = status_.error_message();
      if (status_.ok() && !record_->has_final) {
        record_->code = grpc::StatusCode::DATA_LOSS;
        record_->error = "the stream ended without a final message";
      }
      cached_tokens_->fetch_sub(record_->prompt_tokens + record_->output_tokens,
                                std::memory_order_relaxed);
      return true;
  }
  return true;
}

}  // namespace mor::loadgen
