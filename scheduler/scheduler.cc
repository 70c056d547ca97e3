#include "scheduler/scheduler.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"

namespace mor {
namespace {

// Blocks a table needs to hold `n` more entries.
int64_t BlocksToAppend(const KvTable& table, int64_t n, int32_t block_size) {
  const int64_t needed = (table.num_tokens + n + block_size - 1) / block_size;
  return std::max<int64_t>(0, needed - static_cast<int64_t>(table.blocks.size()));
}

}  // namespace

const char* BatchingModeName(BatchingMode mode) {
  switch (mode) {
    case BatchingMode::kDepthGrouped:
      return "depth_grouped";
    case BatchingMode::kContinuousDepthwise:
      return "continuous_depthwise";
    case BatchingMode::kNoDepthAwareness:
      return "no_depth_awareness";
  }
  return "unknown";
}

absl::StatusOr<BatchingMode> ParseBatchingMode(const std::string& name) {
  for (BatchingMode mode : {BatchingMode::kDepthGrouped, BatchingMode::kContinuousDepthwise,
                            BatchingMode::kNoDepthAwareness}) {
    if (name == BatchingModeName(mode)) return mode;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("batching mode '", name,
                   "': expected continuous_depthwise, depth_grouped or no_depth_awareness"));
}

Scheduler::Scheduler(SchedulerConfig config, SchedulerModelInfo model, KvCacheManager* kv)
    : config_(config), model_(model), kv_(kv) {
  for (int32_t slot = model_.num_state_slots - 1; slot >= 0; --slot) free_slots_.push_back(slot);
}

int32_t Scheduler::MaxLevels(const SequenceState& seq) const {
  if (model_.num_depth_levels == 1) return 1;
  const int fixed = seq.request.policy.fixed_depth;
  return fixed > 0 ? std::min(fixed, model_.num_depth_levels) : model_.num_depth_levels;
}

BlockDemand Scheduler::DemandFor(const SequenceState& seq, int32_t n) const {
  return kv_->WorstCaseDemand(seq.kv, n, MaxLevels(seq));
}

BlockDemand Scheduler::InFlightDemand(const SequenceState& seq) const {
  BlockDemand demand;
  if (!seq.group) return demand;
  const InFlightGroup& group = *seq.group;
  const int64_t active = std::count(group.active.begin(), group.active.end(), 1);
  for (int level = group.depth + 1; level <= MaxLevels(seq); ++level) {
    demand.depth_blocks +=
        BlocksToAppend(seq.kv.depths[level - 1], active, kv_->geometry().block_size);
  }
  return demand;
}

bool Scheduler::Before(const SequenceState& seq, const SequenceState& other) const {
  if (config_.priority_scheduling && seq.request.priority != other.request.priority) {
    return seq.request.priority > other.request.priority;
  }
  return seq.arrival_order < other.arrival_order;
}

void Scheduler::InsertWaiting(SequenceState* seq) {
  auto it = std::find_if(waiting_.begin(), waiting_.end(),
                         [&](const SequenceState* other) { return Before(*seq, *other); });
  waiting_.insert(it, seq);
}

absl::Status Scheduler::Add(std::unique_ptr<SequenceState> seq) {
  if (static_cast<int32_t>(waiting_.size()) >= config_.max_queued_requests) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "server overloaded: ", waiting_.size(), " requests already queued (max_queued_requests ",
        config_.max_queued_requests, ")"));
  }
  if (absl::Status status = CheckAdmissible(seq->request); !status.ok()) return status;
  seq->status = SequenceStatus::kWaiting;
  seq->arrival_order = next_arrival_++;
  seq->num_prompt = static_cast<int32_t>(seq->request.prompt.size());
  seq->kv.depths.assign(model_.num_depth_levels, KvTable{});
  seq->token_steps_per_depth.assign(model_.num_recursions, 0);
  SequenceState* raw = seq.get();
  all_[seq->id] = std::move(seq);
  InsertWaiting(raw);
  return absl::OkStatus();
}

absl::Status Scheduler::CheckAdmissible(const GenerationRequest& request) const {
  const int64_t total = static_cast<int64_t>(request.prompt.size()) + request.max_tokens;
  if (total > model_.max_context) {
    return absl::InvalidArgumentError(
        absl::StrCat("prompt (", request.prompt.size(), " tokens) + max_tokens (",
                     request.max_tokens, ") exceeds the ", model_.max_context, "-token context"));
  }
  // A request that could not run even alone would wait forever: reject it.
  int levels = model_.num_depth_levels;
  if (levels > 1 && request.policy.fixed_depth > 0) {
    levels = std::min(levels, request.policy.fixed_depth);
  }
  const BlockDemand alone = kv_->WorstCaseDemand(SequenceKv{}, total, levels);
  // Pool capacities only (fixed at construction): Usage() would read the
  // engine thread's free lists, and this runs on client threads.
  const int64_t depth_capacity = kv_->block_pool(KvPool::kDepth).capacity();
  const int64_t unique_capacity = kv_->block_pool(KvPool::kUnique).capacity();
  if (alone.depth_blocks > depth_capacity || alone.unique_blocks > unique_capacity) {
    return absl::ResourceExhaustedError(
        absl::StrCat("request needs up to ", alone.depth_blocks, " KV blocks for ", total,
                     " tokens, more than the whole KV cache holds (", depth_capacity,
                     "); raise the KV memory budget or lower max_tokens"));
  }
  return absl::OkStatus();
}

void Scheduler::ReleaseResources(SequenceState* seq) {
  kv_->Free(seq->kv);
  seq->kv.depths.assign(model_.num_depth_levels, KvTable{});
  if (seq->group) {
    free_slots_.insert(free_slots_.end(), seq->group->slots.begin(), seq->group->slots.end());
    seq->group.reset();
  }
}

std::unique_ptr<SequenceState> Scheduler::Remove(uint64_t id) {
  auto it = all_.find(id);
  if (it == all_.end()) return nullptr;
  SequenceState* seq = it->second.get();
  ReleaseResources(seq);
  running_.erase(std::remove(running_.begin(), running_.end(), seq), running_.end());
  waiting_.erase(std::remove(waiting_.begin(), waiting_.end(), seq), waiting_.end());
  std::unique_ptr<SequenceState> out = std::move(it->second);
  all_.erase(it);
  return out;
}

std::unique_ptr<SequenceState> Scheduler::Finish(SequenceState* seq) {
  seq->status = SequenceStatus::kFinished;
  return Remove(seq->id);
}

std::vector<std::unique_ptr<SequenceState>> Scheduler::TakeExpired(absl::Time now) {
  std::vector<uint64_t> expired;
  for (const auto& [id, seq] : all_) {
    if (seq->request.deadline <= now) expired.push_back(id);
  }
  std::vector<std::unique_ptr<SequenceState>> out;
  for (uint64_t id : expired) out.push_back(Remove(id));
  return out;
}

std::vector<std::unique_ptr<SequenceState>> Scheduler::Drain() {
  std::vector<uint64_t> ids;
  for (const auto& [id, seq] : all_) ids.push_back(id);
  std::vector<std::unique_ptr<SequenceState>> out;
  for (uint64_t id : ids) out.push_back(Remove(id));
  return out;
}

SequenceState* Scheduler::PickVictim() const {
  SequenceState* victim = nullptr;
  for (SequenceState* seq : running_) {
    if (victim == nullptr) {
      victim = seq;
      continue;
    }
    const bool lower_priority =
        config_.priority_scheduling && seq->request.priority < victim->request.priority;
    const bool same_priority =
        !config_.priority_scheduling || seq->request.priority == victim->request.priority;
    if (lower_priority || (same_priority && seq->admit_order > victim->admit_order)) victim = seq;
  }
  return victim;
}

void Scheduler::Preempt(SequenceState* victim, StepPlan& plan) {
  ReleaseResources(victim);
  victim->num_computed = 0;
  victim->status = SequenceStatus::kWaiting;
  ++victim->preemptions;
  ++preemptions_total_;
  running_.erase(std::remove(running_.begin(), running_.end(), victim), running_.end());
  InsertWaiting(victim);
  plan.preempted.push_back(victim->id);
}

bool Scheduler::TakeSlots(SequenceState* seq, int32_t n) {
  if (static_cast<int32_t>(free_slots_.size()) < n) return false;
  InFlightGroup group;
  group.start = seq->num_computed;
  group.slots.assign(free_slots_.end() - n, free_slots_.end());
  free_slots_.resize(free_slots_.size() - n);
  group.active.assign(n, 1);
  group.reached.assign(n, 0);
  seq->group = std::move(group);
  return true;
}

StepPlan Scheduler::Schedule(absl::Time now) {
  return config_.mode == BatchingMode::kContinuousDepthwise ? ScheduleDepthwise(now)
                                                            : ScheduleGrouped(now);
}

StepPlan Scheduler::ScheduleGrouped(absl::Time now) {
  StepPlan plan;
  const bool may_admit = !config_.static_batching || running_.empty();
  int64_t budget = config_.max_num_batched_tokens;
  BlockDemand reserved;
  // Running requests first, in admission order; a request whose step does
  // not fit preempts the latest admitted ones (possibly itself).
  std::vector<SequenceState*> order = running_;
  for (SequenceState* seq : order) {
    if (budget <= 0) break;
    if (seq->status != SequenceStatus::kRunning) continue;  // preempted below
    const int32_t n = static_cast<int32_t>(std::min<int64_t>(seq->num_pending(), budget));
    if (n <= 0) continue;
    const BlockDemand demand = DemandFor(*seq, n);
    bool self_preempted = false;
    while (!kv_->CanAllocate(reserved + demand)) {
      SequenceState* victim = PickVictim();
      Preempt(victim, plan);
      if (victim == seq) {
        self_preempted = true;
        break;
      }
      // A victim already planned for this step gives its reservation back.
      auto planned = std::find_if(plan.chunks.begin(), plan.chunks.end(),
                                  [&](const ScheduledChunk& c) { return c.seq == victim; });
      if (planned != plan.chunks.end()) {
        budget += planned->num_tokens;
        plan.scheduled_tokens -= planned->num_tokens;
        plan.chunks.erase(planned);
        reserved = BlockDemand{};
        for (const ScheduledChunk& c : plan.chunks)
          reserved = reserved + DemandFor(*c.seq, c.num_tokens);
      }
    }
    if (self_preempted) continue;
    plan.chunks.push_back({seq, seq->num_computed, n, n == seq->num_pending()});
    plan.scheduled_tokens += n;
    reserved = reserved + demand;
    budget -= n;
  }
  if (!plan.preempted.empty() || !may_admit) return plan;
  while (!waiting_.empty() && budget > 0 &&
         static_cast<int32_t>(running_.size()) < config_.max_num_seqs) {
    SequenceState* seq = waiting_.front();
    const int32_t n = static_cast<int32_t>(std::min<int64_t>(seq->num_pending(), budget));
    const BlockDemand demand = DemandFor(*seq, n);
    if (!kv_->CanAllocate(reserved + demand)) break;
    waiting_.pop_front();
    seq->status = SequenceStatus::kRunning;
    seq->admit_order = next_admit_++;
    if (seq->first_scheduled_time == absl::InfiniteFuture()) seq->first_scheduled_time = now;
    running_.push_back(seq);
    plan.chunks.push_back({seq, seq->num_computed, n, n == seq->num_pending()});
    plan.scheduled_tokens += n;
    reserved = reserved + demand;
    budget -= n;
  }
  return plan;
}

StepPlan Scheduler::ScheduleDepthwise(absl::Time now) {
  StepPlan plan;
  const bool may_admit = !config_.static_batching || running_.empty();
  int64_t budget = config_.max_num_batched_tokens;
  BlockDemand reserved;
  // Groups in flight take their next recursion: they hold slots and their
  // deeper levels stay reserved until they leave.
  for (SequenceState* seq : running_) {
    if (!seq->group) continue;
    const InFlightGroup& group = *seq->group;
    budget -= std::count(group.active.begin(), group.active.end(), 1);
    reserved = reserved + InFlightDemand(*seq);
    const bool ends_at_last = group.start + static_cast<int32_t>(group.slots.size()) ==
                              static_cast<int32_t>(seq->tokens.size());
    plan.groups.push_back({seq, false, group.depth + 1, ends_at_last});
  }
  // Running sequences between tokens enter their next tokens.
  std::vector<SequenceState*> order = running_;
  for (SequenceState* seq : order) {
    if (budget <= 0) break;
    if (seq->status != SequenceStatus::kRunning || seq->group || seq->num_pending() <= 0) continue;
    const int32_t n =
        static_cast<int32_t>(std::min<int64_t>({static_cast<int64_t>(seq->num_pending()), budget,
                                                static_cast<int64_t>(free_slots_.size())}));
    if (n <= 0) break;
    const BlockDemand demand = DemandFor(*seq, n);
    bool self_preempted = false;
    while (!kv_->CanAllocate(reserved + demand)) {
      // Victim: the lowest priority / latest admitted running request, as
      // in depth-grouped mode (possibly `seq` itself). A victim already in
      // this step's plan (in flight, or entered above) leaves the plan and
      // gives its rows and reserved blocks back.
      SequenceState* victim = PickVictim();
      const bool planned = victim->group.has_value();
      Preempt(victim, plan);
      if (victim == seq) {
        self_preempted = true;
        break;
      }
      if (planned) {
        std::erase_if(plan.groups, [&](const ScheduledGroup& g) { return g.seq == victim; });
        budget = config_.max_num_batched_tokens;
        reserved = BlockDemand{};
        plan.scheduled_tokens = 0;
        for (const ScheduledGroup& g : plan.groups) {
          const InFlightGroup& group = *g.seq->group;
          if (g.enter) {
            const int32_t entering = static_cast<int32_t>(group.slots.size());
            budget -= entering;
            plan.scheduled_tokens += entering;
            reserved = reserved + DemandFor(*g.seq, entering);
          } else {
            budget -= std::count(group.active.begin(), group.active.end(), 1);
            reserved = reserved + InFlightDemand(*g.seq);
          }
        }
      }
    }
    if (self_preempted) continue;
    TakeSlots(seq, n);
    plan.groups.push_back({seq, true, 1, n == seq->num_pending()});
    plan.scheduled_tokens += n;
    reserved = reserved + demand;
    budget -= n;
  }
  if (!plan.preempted.empty() || !may_admit) return plan;
  while (!waiting_.empty() && budget > 0 &&
         static_cast<int32_t>(running_.size()) < config_.max_num_seqs) {
    SequenceState* seq = waiting_.front();
    const int32_t n =
        static_cast<int32_t>(std::min<int64_t>({static_cast<int64_t>(seq->num_pending()), budget,
                                                static_cast<int64_t>(free_slots_.size())}));
    if (n <= 0) break;
    const BlockDemand demand = DemandFor(*seq, n);
    if (!kv_->CanAllocate(reserved + demand)) break;
    waiting_.pop_front();
    seq->status = SequenceStatus::kRunning;
    seq->admit_order = next_admit_++;
    if (seq->first_scheduled_time == absl::InfiniteFuture()) seq->first_scheduled_time = now;
    running_.push_back(seq);
    TakeSlots(seq, n);
    plan.groups.push_back({seq, true, 1, n == seq->num_pending()});
    plan.scheduled_tokens += n;
    reserved = reserved + demand;
    budget -= n;
  }
  return plan;
}

void Scheduler::CommitChunk(const ScheduledChunk& chunk) {
  chunk.seq->num_computed += chunk.num_tokens;
}

int32_t Scheduler::CommitGroup(const ScheduledGroup& planned, const DepthwiseGroupResult& result) {
  SequenceState* seq = planned.seq;
  InFlightGroup& group = *seq->group;
  int64_t took = 0;
  for (size_t i = 0; i < group.slots.size(); ++i) {
    if (planned.enter || group.active[i]) {
      group.reached[i] = planned.depth;
      ++took;
    }
  }
  seq->token_steps_per_depth[planned.depth - 1] += took;
  group.depth = planned.depth;
  group.active = result.continues;
  if (!result.exited) return 0;
  const int32_t last_depth = group.reached.back();
  seq->num_computed += static_cast<int32_t>(group.slots.size());
  free_slots_.insert(free_slots_.end(), group.slots.begin(), group.slots.end());
  seq->group.reset();
  return last_depth;
}

void Scheduler::AppendToken(SequenceState* seq, int32_t token) { seq->tokens.push_back(token); }

SchedulerStats Scheduler::Stats() const {
  SchedulerStats stats;
  stats.num_running = num_running();
  stats.num_waiting = num_waiting();
  stats.preemptions_total = preemptions_total_;
  stats.kv = kv_->Usage();
  return stats;
}

}  // namespace mor
