#include "scheduler/engine.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "model/status_macros.h"

namespace mor {

// Wraps a request's sink to keep the engine's counters; deletes itself after
// forwarding OnFinished.
class Engine::CountingSink : public GenerationSink {
 public:
  CountingSink(Engine* engine, GenerationSink* inner) : engine_(engine), inner_(inner) {}

  void OnTokens(absl::Span<const GeneratedToken> tokens) override {
    {
      absl::MutexLock lock(&engine_->mu_);
      engine_->counters_.tokens_generated += static_cast<int64_t>(tokens.size());
    }
    inner_->OnTokens(tokens);
  }

  void OnFinished(const GenerationResult& result) override {
    {
      absl::MutexLock lock(&engine_->mu_);
      --engine_->live_;
      if (!result.status.ok()) {
        ++engine_->counters_.requests_failed;
      } else {
        ++engine_->counters_.requests_finished;
        if (result.reason == FinishReason::kCancelled) ++engine_->counters_.requests_cancelled;
      }
    }
    GenerationSink* inner = inner_;
    delete this;
    inner->OnFinished(result);
  }

 private:
  Engine* engine_;
  GenerationSink* inner_;
};

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(std::unique_ptr<ModelRunner> runner,
                                                       EngineOptions options) {
  if (runner == nullptr) return absl::InvalidArgumentError("no model runner");
  const SchedulerConfig& sc = options.scheduler;
  if (sc.max_num_batched_tokens < 1 || sc.max_num_seqs < 1 || sc.max_queued_requests < 0) {
    return absl::InvalidArgumentError(
        "max_num_batched_tokens and max_num_seqs must be >= 1, max_queued_requests >= 0");
  }
  if ((sc.mode == BatchingMode::kNoDepthAwareness) == runner->depth_aware()) {
    return absl::InvalidArgumentError(
        "batching mode no_depth_awareness needs a model runner created with depth_aware = "
        "false, and the other modes one with depth_aware = true");
  }
  if (sc.mode == BatchingMode::kContinuousDepthwise && runner->num_state_slots() < 1) {
    return absl::InvalidArgumentError(
        "continuous depth-wise batching needs model state slots (num_state_slots)");
  }
  MOR_ASSIGN_OR_RETURN(std::unique_ptr<KvCacheManager> kv,
                       KvCacheManager::Create(runner->kv_geometry()));
  auto core = std::make_unique<EngineCore>(std::move(runner), std::move(kv), options.scheduler,
                                           options.seed);
  return std::unique_ptr<Engine>(new Engine(std::move(core), std::move(options)));
}

Engine::Engine(std::unique_ptr<EngineCore> core, EngineOptions options)
    : core_(std::move(core)),
      config_(core_->runner().config()),
      geometry_(core_->runner().kv_geometry()),
      device_(core_->runner().device()),
      dtype_(core_->runner().dtype()),
      scheduler_config_(options.scheduler) {
  Publish();
  thread_ = std::thread([this] { Loop(); });
}

Engine::~Engine() { Stop(); }

void Engine::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    work_ready_.Signal();
  }
  std::call_once(join_once_, [this] {
    if (thread_.joinable()) thread_.join();
  });
}

void Engine::SetStepObserver(std::function<void(const EngineStepStats&)> observer) {
  absl::MutexLock lock(&mu_);
  observer_ = std::move(observer);
}

absl::StatusOr<uint64_t> Engine::Submit(GenerationRequest request, GenerationSink* sink) {
  if (sink == nullptr) return absl::InvalidArgumentError("no sink");
  // Immutable checks first (no lock needed): the request must be well formed
  // and fit alone.
  MOR_RETURN_IF_ERROR(core_->ValidateRequest(request));
  MOR_RETURN_IF_ERROR(core_->scheduler().CheckAdmissible(request));
  absl::MutexLock lock(&mu_);
  if (stopping_) return absl::UnavailableError("the engine is shutting down");
  const int64_t queued = waiting_ + static_cast<int64_t>(inbox_.size());
  if (queued >= scheduler_config_.max_queued_requests) {
    return absl::ResourceExhaustedError(absl::StrCat("server overloaded: ", queued,
                                                     " requests queued (max_queued_requests ",
                                                     scheduler_config_.max_queued_requests, ")"));
  }
  const uint64_t id = next_id_++;
  inbox_.push_back(Pending{id, std::move(request), new CountingSink(this, sink), absl::Now()});
  ++live_;
  ++counters_.requests_submitted;
  work_ready_.Signal();
  return id;
}

void Engine::Abort(uint64_t id, FinishReason reason) {
  absl::MutexLock lock(&mu_);
  aborts_.emplace_back(id, reason);
  work_ready_.Signal();
}

int64_t Engine::free_blocks(KvPool pool) const {
  return pool == KvPool::kUnique ? free_unique_blocks_.load() : free_depth_blocks_.load();
}

bool Engine::idle() const {
  absl::MutexLock lock(&mu_);
  return live_ == 0;
}

EngineCounters Engine::counters() const {
  absl::MutexLock lock(&mu_);
  return counters_;
}

void Engine::Publish() {
  const KvUsage usage = core_->kv().Usage();
  free_unique_blocks_ = usage.unique.free;
  free_depth_blocks_ = usage.depth.free;
}

void Engine::Loop() {
  while (true) {
    std::deque<Pending> submitted;
    std::vector<std::pair<uint64_t, FinishReason>> aborts;
    bool stopping = false;
    std::function<void(const EngineStepStats&)> observer;
    {
      absl::MutexLock lock(&mu_);
      auto has_input = [this] {
        mu_.AssertHeld();
        return stopping_ || !inbox_.empty() || !aborts_.empty();
      };
      if (!core_->has_work()) mu_.Await(absl::Condition(&has_input));
      submitted.swap(inbox_);
      aborts.swap(aborts_);
      stopping = stopping_;
      observer = observer_;
    }
    const absl::Time now = absl::Now();
    for (Pending& p : submitted) {
      // Aborted before the engine saw it: finish it without running.
      bool aborted = false;
      for (const auto& [id, reason] : aborts) aborted |= id == p.id;
      GenerationSink* sink = p.sink;
      if (aborted) {
        GenerationResult result;
        result.reason = FinishReason::kCancelled;
        sink->OnFinished(result);
        continue;
      }
      absl::Status status = core_->Submit(p.id, std::move(p.request), sink, p.arrival);
      if (!status.ok()) {
        GenerationResult result;
        result.status = std::move(status);
        sink->OnFinished(result);
      }
    }
    for (const auto& [id, reason] : aborts) core_->Abort(id, reason);
    if (stopping) {
      core_->FailAll(absl::OkStatus());
      Publish();
      return;
    }
    absl::StatusOr<bool> stepped = core_->Step(now);
    Publish();
    if (stepped.ok() && *stepped) {
      {
        absl::MutexLock lock(&mu_);
        ++counters_.steps;
        counters_.preemptions += core_->last_step().preemptions;
        waiting_ = core_->last_step().num_waiting;
      }
      if (observer) observer(core_->last_step());
    } else {
      absl::MutexLock lock(&mu_);
      waiting_ = core_->scheduler().num_waiting();
    }
  }
}

}  // namespace mor
