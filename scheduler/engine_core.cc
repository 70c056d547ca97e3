#include "scheduler/engine_core.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "scheduler/flops_estimate.h"

namespace mor {
namespace {

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

SchedulerModelInfo ModelInfoOf(const ModelRunner& runner) {
  SchedulerModelInfo info;
  info.num_recursions = runner.config().num_recursions;
  info.num_depth_levels = runner.kv_geometry().num_depth_levels;
  info.max_context = static_cast<int32_t>(runner.config().max_position_embeddings);
  info.num_state_slots = runner.num_state_slots();
  return info;
}

}  // namespace

EngineCore::EngineCore(std::unique_ptr<ModelRunner> runner, std::unique_ptr<KvCacheManager> kv,
                       SchedulerConfig config, uint64_t seed)
    : runner_(std::move(runner)),
      kv_(std::move(kv)),
      scheduler_(config, ModelInfoOf(*runner_), kv_.get()),
      seed_source_(seed),
      flops_per_token_recursion_(FlopsPerTokenRecursion(runner_->config())) {}

absl::Status EngineCore::ValidateRequest(const GenerationRequest& request) const {
  const ModelConfig& config = runner_->config();
  if (request.prompt.empty()) return absl::InvalidArgumentError("prompt is empty");
  for (int32_t token : request.prompt) {
    if (token < 0 || token >= config.vocab_size) {
      return absl::InvalidArgumentError(
          absl::StrCat("prompt token id ", token, " outside [0, ", config.vocab_size, ")"));
    }
  }
  if (request.policy.fixed_depth < 0 || request.policy.fixed_depth > config.num_recursions) {
    return absl::InvalidArgumentError(
        absl::StrCat("depth ", request.policy.fixed_depth, " outside 1..", config.num_recursions));
  }
  if (request.max_tokens < 1) return absl::InvalidArgumentError("max_tokens must be >= 1");
  return request.sampling.Validate(config.vocab_size);
}

absl::Status EngineCore::Submit(uint64_t id, GenerationRequest request, GenerationSink* sink,
                                absl::Time now) {
  if (absl::Status s = ValidateRequest(request); !s.ok()) return s;
  auto seq = std::make_unique<SequenceState>();
  seq->id = id;
  seq->sink = sink;
  seq->tokens = request.prompt;
  seq->arrival_time = now;
  seq->sampler =
      std::make_unique<SequenceSampler>(request.sampling, seed_source_(), request.prompt);
  seq->request = std::move(request);
  return scheduler_.Add(std::move(seq));
}

void EngineCore::Deliver(std::unique_ptr<SequenceState> seq, absl::Status status,
                         FinishReason reason, absl::Time now) {
  GenerationResult result;
  result.status = std::move(status);
  result.reason = reason;
  GenerationUsage& usage = result.usage;
  usage.prompt_tokens = seq->num_prompt;
  usage.completion_tokens = std::max(0, seq->num_generated());
  usage.token_steps_per_depth = seq->token_steps_per_depth;
  double steps = 0;
  for (int64_t s : seq->token_steps_per_depth) steps += static_cast<double>(s);
  usage.estimated_flops = steps * flops_per_token_recursion_;
  if (seq->first_scheduled_time != absl::InfiniteFuture()) {
    usage.queue_seconds = absl::ToDoubleSeconds(seq->first_scheduled_time - seq->arrival_time);
    usage.compute_seconds = absl::ToDoubleSeconds(now - seq->first_scheduled_time);
  } else {
    usage.queue_seconds = absl::ToDoubleSeconds(now - seq->arrival_time);
  }
  GenerationSink* sink = seq->sink;
  seq.reset();  // blocks were freed by the scheduler already
  sink->OnFinished(result);
}

bool EngineCore::Abort(uint64_t id, FinishReason reason) {
  std::unique_ptr<SequenceState> seq = scheduler_.Remove(id);
  if (!seq) return false;
  Deliver(std::move(seq), absl::OkStatus(), reason, absl::Now());
  return true;
}

void EngineCore::FailAll(const absl::Status& status) {
  for (std::unique_ptr<SequenceState>& seq : scheduler_.Drain()) {
    Deliver(std::move(seq), status, FinishReason::kCancelled, absl::Now());
  }
}

void EngineCore::SampleAndDeliver(SequenceState* seq, const float* logits, int32_t depth,
                                  absl::Time now) {
  const int64_t vocab = runner_->config().vocab_size;
  const GenerationRequest& request = seq->request;
  absl::Span<const float> row(logits, vocab);
  // Before min_tokens, EOS and stop tokens cannot be drawn.
  if (seq->num_generated() < request.min_tokens) {
    masked_logits_.assign(logits, logits + vocab);
    const float kNegInf = -std::numeric_limits<float>::infinity();
    if (!request.ignore_eos) {
      for (int64_t eos : runner_->config().eos_token_ids) {
        if (eos >= 0 && eos < vocab) masked_logits_[eos] = kNegInf;
      }
    }
    for (int32_t stop : request.sampling.stop_token_ids) masked_logits_[stop] = kNegInf;
    row = absl::Span<const float>(masked_logits_);
  }
  const SampledToken sampled = seq->sampler->Sample(row, workspace_);
  scheduler_.AppendToken(seq, sampled.token_id);
  if (seq->first_token_time == absl::InfiniteFuture()) seq->first_token_time = now;
  GeneratedToken token;
  token.token_id = sampled.token_id;
  token.depth = depth;
  token.logprob = sampled.logprob;
  token.top_logprobs = sampled.top_logprobs;
  seq->sink->OnTokens(absl::Span<const GeneratedToken>(&token, 1));

  std::optional<FinishReason> reason;
  const auto& eos = runner_->config().eos_token_ids;
  if (sampled.is_stop_token) {
    reason = FinishReason::kStopToken;
  } else if (!request.ignore_eos &&
             std::find(eos.begin(), eos.end(), sampled.token_id) != eos.end()) {
    reason = FinishReason::kEos;
  } else if (seq->num_generated() >= request.max_tokens) {
    reason = FinishReason::kMaxTokens;
  }
  if (reason) Deliver(scheduler_.Finish(seq), absl::OkStatus(), *reason, now);
}

absl::Status EngineCore::RunGrouped(const StepPlan& plan, absl::Time now) {
  std::vector<SequenceChunk> chunks;
  chunks.reserve(plan.chunks.size());
  for (const ScheduledChunk& planned : plan.chunks) {
    SequenceState* seq = planned.seq;
    SequenceChunk chunk;
    chunk.tokens = std::span<const int32_t>(seq->tokens.data() + planned.start, planned.num_tokens);
    chunk.start_position = planned.start;
    chunk.policy = seq->request.policy;
    chunk.kv = &seq->kv;
    chunk.logits = planned.sample ? LogitsRequest::kLast : LogitsRequest::kNone;
    chunks.push_back(chunk);
  }
  auto start = Clock::now();
  absl::StatusOr<StepResult> result = runner_->Step(chunks, *kv_);
  last_step_.model_seconds = SecondsSince(start);
  if (!result.ok()) return result.status();
  last_step_.stage_seconds[0] = result->stats.embed_seconds + result->stats.unique_layers_seconds;
  for (double s : result->stats.recursion_seconds) last_step_.stage_seconds[1] += s;
  last_step_.stage_seconds[2] = result->stats.lm_head_seconds;
  last_step_.token_steps_per_depth = result->stats.token_steps_per_depth;

  start = Clock::now();
  size_t row = 0;
  for (size_t c = 0; c < plan.chunks.size(); ++c) {
    const ScheduledChunk& planned = plan.chunks[c];
    SequenceState* seq = planned.seq;
    for (int32_t i = 0; i < planned.num_tokens; ++i) {
      for (int r = 1; r <= result->token_depth[row + i]; ++r) ++seq->token_steps_per_depth[r - 1];
    }
    row += planned.num_tokens;
    scheduler_.CommitChunk(planned);
    if (planned.sample) {
      const float* logits = result->logits.data() + result->logits_row[c] * result->vocab_size;
      SampleAndDeliver(seq, logits, result->token_depth[row - 1], now);
      ++last_step_.sampled_tokens;
    }
  }
  last_step_.sample_seconds = SecondsSince(start);
  return absl::OkStatus();
}

absl::Status EngineCore::RunDepthwise(const StepPlan& plan, absl::Time now) {
  std::vector<DepthwiseGroup> groups;
  groups.reserve(plan.groups.size());
  for (const ScheduledGroup& planned : plan.groups) {
    SequenceState* seq = planned.seq;
    const InFlightGroup& flight = *seq->group;
    DepthwiseGroup group;
    group.kv = &seq->kv;
    group.policy = seq->request.policy;
    group.start_position = flight.start;
    group.tokens = std::span<const int32_t>(seq->tokens.data() + flight.start, flight.slots.size());
    group.slots = flight.slots;
    group.enter = planned.enter;
    group.depth = planned.depth;
    group.active = flight.active;
    group.logits = planned.sample ? LogitsRequest::kLast : LogitsRequest::kNone;
    groups.push_back(group);
  }
  auto start = Clock::now();
  absl::StatusOr<DepthwiseStepResult> result = runner_->StepDepthwise(groups, *kv_);
  last_step_.model_seconds = SecondsSince(start);
  if (!result.ok()) return result.status();
  last_step_.stage_seconds[0] = result->enter_seconds;
  last_step_.stage_seconds[1] = result->block_seconds;
  last_step_.stage_seconds[2] = result->exit_seconds;
  last_step_.token_steps_per_depth = result->token_steps_per_depth;
  last_step_.block_calls = result->block_calls;

  start = Clock::now();
  for (size_t g = 0; g < plan.groups.size(); ++g) {
    const ScheduledGroup& planned = plan.groups[g];
    const DepthwiseGroupResult& out = result->groups[g];
    const int32_t last_depth = scheduler_.CommitGroup(planned, out);
    if (out.exited && planned.sample) {
      const float* logits = result->logits.data() + out.logits_row * result->vocab_size;
      SampleAndDeliver(planned.seq, logits, last_depth, now);
      ++last_step_.sampled_tokens;
    }
  }
  last_step_.sample_seconds = SecondsSince(start);
  return absl::OkStatus();
}

absl::StatusOr<bool> EngineCore::Step(absl::Time now) {
  const auto step_start = Clock::now();
  for (std::unique_ptr<SequenceState>& seq : scheduler_.TakeExpired(now)) {
    Deliver(std::move(seq), absl::OkStatus(), FinishReason::kDeadline, now);
  }
  last_step_ = EngineStepStats{};
  last_step_.mode = scheduler_.config().mode;
  auto start = Clock::now();
  StepPlan plan = scheduler_.Schedule(now);
  last_step_.schedule_seconds = SecondsSince(start);
  last_step_.preemptions = static_cast<int64_t>(plan.preempted.size());
  if (plan.empty()) return false;
  last_step_.step = ++steps_;
  last_step_.scheduled_tokens = plan.scheduled_tokens;

  const absl::Status status = scheduler_.config().mode == BatchingMode::kContinuousDepthwise
                                  ? RunDepthwise(plan, now)
                                  : RunGrouped(plan, now);
  if (!status.ok()) {
    // The step's tables are unspecified after a failed step: end the
    // requests it carried with the error, keep serving the rest.
    std::vector<uint64_t> ids;
    for (const ScheduledChunk& c : plan.chunks) ids.push_back(c.seq->id);
    for (const ScheduledGroup& g : plan.groups) ids.push_back(g.seq->id);
    for (uint64_t id : ids) {
      if (std::unique_ptr<SequenceState> seq = scheduler_.Remove(id)) {
        Deliver(std::move(seq),
                absl::InternalError(absl::StrCat("model step failed: ", status.message())),
                FinishReason::kCancelled, now);
      }
    }
  }
  const SchedulerStats stats = scheduler_.Stats();
  last_step_.num_running = stats.num_running;
  last_step_.num_waiting = stats.num_waiting;
  last_step_.kv = stats.kv;
  last_step_.total_seconds = SecondsSince(step_start);
  return true;
}

}  // namespace mor
