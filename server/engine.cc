#include "server/engine.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <span>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "model/status_macros.h"
#include "server/flops_estimate.h"

namespace mor {
namespace {

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

std::string PolicyName(const DepthPolicy& policy) {
  return policy.adaptive() ? "adaptive" : absl::StrCat("fixed=", policy.fixed_depth);
}

bool Contains(const std::vector<int64_t>& ids, int32_t token) {
  return std::find(ids.begin(), ids.end(), static_cast<int64_t>(token)) != ids.end();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(std::unique_ptr<ModelRunner> runner) {
  if (runner == nullptr) return absl::InvalidArgumentError("Engine needs a model runner");
  const KvCacheGeometry& geometry = runner->kv_geometry();
  if (geometry.block_size <= 0 || geometry.num_depth_blocks < 2 || geometry.num_depth_levels < 1) {
    return absl::InvalidArgumentError("the model runner reports an unusable KV geometry");
  }
  return std::unique_ptr<Engine>(new Engine(std::move(runner)));
}

Engine::Engine(std::unique_ptr<ModelRunner> runner)
    : runner_(std::move(runner)),
      allocator_(std::make_unique<SimpleBlockAllocator>(runner_->kv_geometry())),
      seed_source_(std::random_device{}()),
      config_(runner_->config()),
      geometry_(runner_->kv_geometry()),
      device_(runner_->device()),
      dtype_(runner_->dtype()) {
  flops_per_token_recursion_ = FlopsPerTokenRecursion(config_);
  PublishFreeBlocks();
  thread_ = std::thread([this] { Loop(); });
}

Engine::~Engine() { Stop(); }

void Engine::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    work_ready_.SignalAll();
  }
  std::call_once(join_once_, [this] {
    if (thread_.joinable()) thread_.join();
  });
}

int64_t Engine::WorstCaseBlocks(const GenerationRequest& request, KvPool pool) const {
  // Tokens fed to the model: the prompt and every generated token but the last.
  const int64_t tokens = static_cast<int64_t>(request.prompt.size()) + request.max_tokens - 1;
  const int64_t per_table = CeilDiv(tokens, geometry_.block_size);
  if (pool == KvPool::kUnique) return geometry_.num_unique_layers > 0 ? per_table : 0;
  int64_t levels = geometry_.num_depth_levels;
  if (!request.policy.adaptive() && levels > 1) {
    levels = std::min<int64_t>(levels, request.policy.fixed_depth);
  }
  return levels * per_table;
}

absl::StatusOr<uint64_t> Engine::Submit(GenerationRequest request, GenerationSink* sink) {
  if (sink == nullptr) return absl::InvalidArgumentError("Submit needs a sink");
  if (request.prompt.empty()) return absl::InvalidArgumentError("the prompt is empty");
  for (int32_t id : request.prompt) {
    if (id < 0 || id >= config_.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat(
          "prompt token id ", id, " is outside the vocabulary [0, ", config_.vocab_size, ")"));
    }
  }
  if (request.max_tokens < 1 || request.min_tokens < 0 || request.min_tokens > request.max_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("need 0 <= min_tokens <= max_tokens >= 1 (got ",
                                                   request.min_tokens, ", ", request.max_tokens,
                                                   ")"));
  }
  const int64_t total = static_cast<int64_t>(request.prompt.size()) + request.max_tokens;
  if (total > config_.max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrCat("prompt + max_tokens = ", total,
                                                   " exceeds the model's context of ",
                                                   config_.max_position_embeddings, " tokens"));
  }
  if (request.policy.fixed_depth < 0 || request.policy.fixed_depth > config_.num_recursions) {
    return absl::InvalidArgumentError(absl::StrCat("fixed depth ", request.policy.fixed_depth,
                                                   " outside 1..", config_.num_recursions));
  }
  MOR_RETURN_IF_ERROR(request.sampling.Validate(config_.vocab_size));
  for (KvPool pool : {KvPool::kUnique, KvPool::kDepth}) {
    if (pool == KvPool::kUnique && geometry_.num_unique_layers == 0) continue;
    const int64_t capacity =
        (pool == KvPool::kUnique ? geometry_.num_unique_blocks : geometry_.num_depth_blocks) - 1;
    const int64_t need = WorstCaseBlocks(request, pool);
    if (need > capacity) {
      return absl::ResourceExhaustedError(
          absl::StrCat("prompt + max_tokens may need ", need, " blocks of the ",
                       pool == KvPool::kUnique ? "unique" : "depth", " KV pool, which holds ",
                       capacity, " (lower max_tokens, or start the server with more --kv_blocks)"));
    }
  }
  absl::MutexLock lock(&mu_);
  if (stopping_) return absl::UnavailableError("the engine is shutting down");
  const uint64_t id = next_id_++;
  queue_.push_back(Pending{id, std::move(request), sink, absl::Now()});
  live_ids_.insert(id);
  ++counters_.requests_submitted;
  work_ready_.Signal();
  return id;
}

void Engine::Abort(uint64_t id) {
  absl::MutexLock lock(&mu_);
  if (!live_ids_.contains(id)) return;
  aborted_.insert(id);
  work_ready_.Signal();
}

int64_t Engine::free_blocks(KvPool pool) const {
  return pool == KvPool::kUnique ? free_unique_blocks_.load() : free_depth_blocks_.load();
}

bool Engine::idle() const {
  absl::MutexLock lock(&mu_);
  return live_ids_.empty();
}

EngineCounters Engine::counters() const {
  absl::MutexLock lock(&mu_);
  return counters_;
}

void Engine::PublishFreeBlocks() {
  free_unique_blocks_.store(allocator_->num_free(KvPool::kUnique));
  free_depth_blocks_.store(allocator_->num_free(KvPool::kDepth));
}

std::deque<Engine::Pending> Engine::TakeAbortedLocked() {
  std::deque<Pending> taken;
  if (aborted_.empty()) return taken;
  for (auto it = queue_.begin(); it != queue_.end();) {
    if (aborted_.contains(it->id)) {
      aborted_.erase(it->id);
      live_ids_.erase(it->id);
      ++counters_.requests_finished;
      ++counters_.requests_cancelled;
      taken.push_back(std::move(*it));
      it = queue_.erase(it);
    } else {
      ++it;
    }
  }
  return taken;
}

Engine::Interrupt Engine::CheckInterrupt(uint64_t id) {
  std::deque<Pending> aborted;
  Interrupt interrupt = Interrupt::kNone;
  {
    absl::MutexLock lock(&mu_);
    aborted = TakeAbortedLocked();
    if (stopping_) {
      interrupt = Interrupt::kStop;
    } else if (aborted_.contains(id)) {
      interrupt = Interrupt::kAbort;
    }
  }
  // Queued requests aborted meanwhile finish now, not after the running one.
  for (Pending& p : aborted) {
    GenerationResult result;
    result.reason = FinishReason::kCancelled;
    result.usage.prompt_tokens = static_cast<int32_t>(p.request.prompt.size());
    result.usage.token_steps_per_depth.assign(config_.num_recursions, 0);
    result.usage.queue_seconds = absl::ToDoubleSeconds(absl::Now() - p.arrival);
    LogFinished(p, result, 0);
    p.sink->OnFinished(result);
  }
  return interrupt;
}

void Engine::Loop() {
  while (true) {
    Pending next;
    bool have_next = false;
    std::deque<Pending> rejected;
    {
      absl::MutexLock lock(&mu_);
      while (!stopping_ && queue_.empty()) work_ready_.Wait(&mu_);
      if (stopping_) {
        rejected.swap(queue_);
        for (const Pending& p : rejected) {
          live_ids_.erase(p.id);
          aborted_.erase(p.id);
          ++counters_.requests_failed;
        }
      } else {
        next = std::move(queue_.front());
        queue_.pop_front();
        running_id_ = next.id;
        have_next = true;
      }
    }
    for (Pending& p : rejected) {
      GenerationResult result;
      result.status = absl::UnavailableError("the server is shutting down");
      LogFinished(p, result, 0);
      p.sink->OnFinished(result);
    }
    if (!have_next) return;  // stopping

    const GenerationResult result = Run(next);
    {
      absl::MutexLock lock(&mu_);
      running_id_ = 0;
      live_ids_.erase(next.id);
      aborted_.erase(next.id);
      counters_.tokens_generated += result.usage.completion_tokens;
      if (result.status.ok()) {
        ++counters_.requests_finished;
        if (result.reason == FinishReason::kCancelled) ++counters_.requests_cancelled;
      } else {
        ++counters_.requests_failed;
      }
    }
    LogFinished(next, result, result.usage.completion_tokens);
    next.sink->OnFinished(result);
  }
}

GenerationResult Engine::Run(const Pending& pending) {
  const GenerationRequest& request = pending.request;
  GenerationResult result;
  GenerationUsage& usage = result.usage;
  usage.prompt_tokens = static_cast<int32_t>(request.prompt.size());
  usage.token_steps_per_depth.assign(config_.num_recursions, 0);
  usage.queue_seconds = absl::ToDoubleSeconds(absl::Now() - pending.arrival);

  SequenceKv kv;
  kv.depths.resize(geometry_.num_depth_levels);
  SequenceSampler sampler(request.sampling, seed_source_(), request.prompt);
  const bool eos_stops = !request.ignore_eos;
  std::vector<int32_t> input = request.prompt;
  std::vector<float> masked_logits;
  int32_t position = 0;
  absl::Duration compute;

  while (true) {
    const Interrupt interrupt = CheckInterrupt(pending.id);
    if (interrupt != Interrupt::kNone) {
      result.reason = FinishReason::kCancelled;
      break;
    }
    if (absl::Now() >= request.deadline) {
      result.reason = FinishReason::kDeadline;
      break;
    }
    const absl::Time step_start = absl::Now();
    SequenceChunk chunk;
    chunk.tokens = std::span<const int32_t>(input);
    chunk.start_position = position;
    chunk.policy = request.policy;
    chunk.kv = &kv;
    chunk.logits = LogitsRequest::kLast;
    absl::StatusOr<StepResult> step =
        runner_->Step(std::span<const SequenceChunk>(&chunk, 1), *allocator_);
    if (!step.ok()) {
      result.status = step.status();
      break;
    }
    position += static_cast<int32_t>(input.size());
    const std::vector<int64_t>& steps = step->stats.token_steps_per_depth;
    for (size_t r = 0; r < steps.size() && r < usage.token_steps_per_depth.size(); ++r) {
      usage.token_steps_per_depth[r] += steps[r];
    }

    absl::Span<const float> logits(step->logits.data() + step->logits_row[0] * step->vocab_size,
                                   static_cast<size_t>(step->vocab_size));
    if (usage.completion_tokens < request.min_tokens) {
      // EOS and stop tokens may not end the request yet: mask them out.
      masked_logits.assign(logits.begin(), logits.end());
      const float kMasked = -std::numeric_limits<float>::infinity();
      if (eos_stops) {
        for (int64_t id : config_.eos_token_ids) {
          if (id >= 0 && id < step->vocab_size) masked_logits[id] = kMasked;
        }
      }
      for (int32_t id : request.sampling.stop_token_ids) masked_logits[id] = kMasked;
      logits = absl::Span<const float>(masked_logits);
    }
    SampledToken sampled = sampler.Sample(logits);
    GeneratedToken token;
    token.token_id = sampled.token_id;
    token.depth = step->token_depth.back();
    token.logprob = sampled.logprob;
    token.top_logprobs = std::move(sampled.top_logprobs);
    ++usage.completion_tokens;
    compute += absl::Now() - step_start;
    pending.sink->OnTokens(absl::Span<const GeneratedToken>(&token, 1));

    if (eos_stops && Contains(config_.eos_token_ids, token.token_id)) {
      result.reason = FinishReason::kEos;
      break;
    }
    if (sampled.is_stop_token) {
      result.reason = FinishReason::kStopToken;
      break;
    }
    if (usage.completion_tokens >= request.max_tokens) {
      result.reason = FinishReason::kMaxTokens;
      break;
    }
    input.assign(1, token.token_id);
  }

  allocator_->Release(kv);
  PublishFreeBlocks();
  usage.compute_seconds = absl::ToDoubleSeconds(compute);
  double token_steps = 0;
  for (int64_t n : usage.token_steps_per_depth) token_steps += static_cast<double>(n);
  usage.estimated_flops = token_steps * flops_per_token_recursion_;
  return result;
}

void Engine::LogFinished(const Pending& pending, const GenerationResult& result,
                         int64_t completion) {
  const std::string outcome = result.status.ok()
                                  ? std::string(FinishReasonName(result.reason))
                                  : absl::StrCat("error: ", result.status.ToString());
  const std::string line = absl::StrFormat(
      "mor_server: request %s prompt_tokens=%d completion_tokens=%d policy=%s finish=%s "
      "latency=%.3fs queue=%.3fs compute=%.3fs\n",
      pending.request.request_id, pending.request.prompt.size(), completion,
      PolicyName(pending.request.policy), outcome,
      absl::ToDoubleSeconds(absl::Now() - pending.arrival), result.usage.queue_seconds,
      result.usage.compute_seconds);
  std::fputs(line.c_str(), stderr);
}

}  // namespace mor
