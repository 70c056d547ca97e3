#include "tests/scheduler/fake_model_runner.h"

#include <algorithm>
#include <map>
#include <set>
#include <unordered_set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "model/status_macros.h"

namespace mor::scheduler_testing {
namespace {

uint32_t Mix(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352dU;
  x ^= x >> 15;
  x *= 0x846ca68bU;
  x ^= x >> 16;
  return x;
}

constexpr float kPeak = 10.0f;
constexpr float kEosPeak = 20.0f;

}  // namespace

FakeModelRunner::FakeModelRunner(FakeRunnerOptions options) : options_(std::move(options)) {
  const int nr = options_.num_recursions;
  config_.model_type = "mor";
  config_.hidden_size = 8;
  config_.intermediate_size = 16;
  config_.num_attention_heads = 2;
  config_.num_key_value_heads = 1;
  config_.head_dim = 4;
  config_.vocab_size = options_.vocab_size;
  config_.max_position_embeddings = options_.max_position_embeddings;
  if (options_.eos_token_id >= 0) config_.eos_token_ids = {options_.eos_token_id};
  config_.num_recursions = nr;
  config_.sharing =
      options_.unique_layers ? SharingStrategy::kMiddleCycle : SharingStrategy::kCycle;
  config_.num_hidden_layers = options_.unique_layers ? nr + 2 : nr;
  config_.kv_mode = options_.recursive_sharing ? KvMode::kRecursiveSharing : KvMode::kRecursionWise;

  geometry_.block_size = options_.block_size;
  geometry_.num_unique_layers = options_.unique_layers ? 2 : 0;
  geometry_.block_layers = 1;
  geometry_.num_depth_levels = options_.recursive_sharing ? 1 : nr;
  geometry_.num_kv_heads = 1;
  geometry_.head_dim = 4;
  geometry_.dtype_bytes = 4;
  geometry_.num_depth_blocks = options_.num_depth_blocks;
  geometry_.num_unique_blocks = options_.unique_layers
                                    ? (options_.num_unique_blocks > 0 ? options_.num_unique_blocks
                                                                      : options_.num_depth_blocks)
                                    : 0;
  slot_owner_.assign(options_.num_state_slots, nullptr);
}

int32_t FakeModelRunner::NextToken(int32_t token, int32_t position) const {
  const int32_t vocab = options_.vocab_size;
  int32_t next = static_cast<int32_t>((int64_t{31} * token + position) % vocab);
  if (next == options_.eos_token_id) next = (next + 1) % vocab;
  return next;
}

int32_t FakeModelRunner::AdaptiveDepth(int32_t token, int32_t position) const {
  const uint32_t h = Mix(static_cast<uint32_t>(token) * 1000003U + static_cast<uint32_t>(position));
  return 1 + static_cast<int32_t>(h % static_cast<uint32_t>(options_.num_recursions));
}

int32_t FakeModelRunner::DepthOf(const DepthPolicy& policy, int32_t token, int32_t position) const {
  return policy.adaptive() ? AdaptiveDepth(token, position) : policy.fixed_depth;
}

std::vector<int32_t> FakeModelRunner::GreedyContinuation(const std::vector<int32_t>& prompt,
                                                         int32_t n) const {
  std::vector<int32_t> out;
  int32_t token = prompt.back();
  int32_t position = static_cast<int32_t>(prompt.size()) - 1;
  for (int32_t i = 0; i < n; ++i) {
    token = NextToken(token, position++);
    out.push_back(token);
  }
  return out;
}

void FakeModelRunner::WriteLogits(int32_t token, int32_t position, float* row) const {
  std::fill(row, row + options_.vocab_size, 0.0f);
  row[NextToken(token, position)] = kPeak;
  if (options_.eos_token_id >= 0 && options_.eos_when && options_.eos_when(token, position)) {
    row[options_.eos_token_id] = kEosPeak;
  }
}

absl::Status FakeModelRunner::Ensure(KvTable& table, int64_t entries, KvPool pool, int depth,
                                     KvBlockAllocator& allocator) {
  while (static_cast<int64_t>(table.blocks.size()) * options_.block_size < entries) {
    absl::StatusOr<int32_t> block = allocator.Allocate(pool, depth);
    if (!block.ok()) {
      // The scheduler promises enough blocks for every step: count it.
      std::lock_guard<std::mutex> lock(mu_);
      ++num_errors_;
      last_error_ = block.status().ToString();
      return block.status();
    }
    table.blocks.push_back(*block);
  }
  return absl::OkStatus();
}

void FakeModelRunner::set_step_hook(std::function<void()> hook) {
  std::lock_guard<std::mutex> lock(mu_);
  step_hook_ = std::move(hook);
}

void FakeModelRunner::BeforeCall() {
  std::function<void()> hook;
  {
    std::lock_guard<std::mutex> lock(mu_);
    hook = step_hook_;
  }
  if (hook) hook();
  if (const int64_t ns = step_delay_ns_.load(); ns > 0) absl::SleepFor(absl::Nanoseconds(ns));
}

void FakeModelRunner::FailNextCall(absl::Status status) {
  std::lock_guard<std::mutex> lock(mu_);
  injected_ = std::move(status);
}

absl::Status FakeModelRunner::TakeInjectedError() {
  std::lock_guard<std::mutex> lock(mu_);
  absl::Status status = std::move(injected_);
  injected_ = absl::OkStatus();
  return status;
}

void FakeModelRunner::Record(FakeCall call) {
  std::lock_guard<std::mutex> lock(mu_);
  ++num_calls_;
  calls_.push_back(std::move(call));
}

absl::Status FakeModelRunner::Fail(FakeCall call, absl::Status status) {
  call.ok = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++num_errors_;
    last_error_ = status.ToString();
  }
  Record(std::move(call));
  return status;
}

std::vector<FakeCall> FakeModelRunner::calls() const {
  std::lock_guard<std::mutex> lock(mu_);
  return calls_;
}

int64_t FakeModelRunner::num_calls() const {
  std::lock_guard<std::mutex> lock(mu_);
  return num_calls_;
}

int64_t FakeModelRunner::num_errors() const {
  std::lock_guard<std::mutex> lock(mu_);
  return num_errors_;
}

std::string FakeModelRunner::last_error() const {
  std::lock_guard<std::mutex> lock(mu_);
  return last_error_;
}

void FakeModelRunner::ClearCalls() {
  std::lock_guard<std::mutex> lock(mu_);
  calls_.clear();
}

// ---------------------------------------------------------------------------
// Depth-grouped step.

absl::Status FakeModelRunner::Validate(std::span<const SequenceChunk> chunks) const {
  std::unordered_set<const SequenceKv*> seen;
  for (size_t c = 0; c < chunks.size(); ++c) {
    const SequenceChunk& chunk = chunks[c];
    auto error = [&](auto&&... parts) {
      return absl::InvalidArgumentError(absl::StrCat("chunk ", c, ": ", parts...));
    };
    if (chunk.tokens.empty()) return error("no tokens");
    if (chunk.kv == nullptr) return error("no KV tables");
    if (!seen.insert(chunk.kv).second) return error("sequence appears twice in one step");
    if (chunk.start_position < 0 ||
        chunk.start_position + static_cast<int64_t>(chunk.tokens.size()) >
            config_.max_position_embeddings) {
      return error("positions exceed max_position_embeddings");
    }
    for (int32_t id : chunk.tokens) {
      if (id < 0 || id >= config_.vocab_size) return error("token id ", id, " out of range");
    }
    if (chunk.policy.fixed_depth < 0 || chunk.policy.fixed_depth > config_.num_recursions) {
      return error("depth ", chunk.policy.fixed_depth, " out of range");
    }
    if (static_cast<int>(chunk.kv->depths.size()) != num_levels()) {
      return error("expected ", num_levels(), " depth tables, got ", chunk.kv->depths.size());
    }
    auto check_table = [&](const KvTable& table) -> absl::Status {
      if (table.num_tokens < 0 ||
          static_cast<int64_t>(table.blocks.size()) * options_.block_size < table.num_tokens) {
        return error("table holds ", table.num_tokens, " entries in ", table.blocks.size(),
                     " blocks");
      }
      return absl::OkStatus();
    };
    MOR_RETURN_IF_ERROR(check_table(chunk.kv->unique));
    for (const KvTable& table : chunk.kv->depths) MOR_RETURN_IF_ERROR(check_table(table));
    if (chunk.kv->depths[0].num_tokens != chunk.start_position ||
        (options_.unique_layers && chunk.kv->unique.num_tokens != chunk.start_position)) {
      return error("start_position ", chunk.start_position, " does not match the KV cache (",
                   chunk.kv->depths[0].num_tokens, " tokens)");
    }
    if (flights_.contains(chunk.kv)) {
      // Only possible if modes were mixed; the tables would be inconsistent.
      return error("sequence has a depth-wise group in flight");
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<StepResult> FakeModelRunner::Step(std::span<const SequenceChunk> chunks,
                                                 KvBlockAllocator& allocator) {
  BeforeCall();
  const int nr = options_.num_recursions;
  const bool sharing = options_.recursive_sharing;
  FakeCall call;
  for (const SequenceChunk& chunk : chunks) {
    call.kvs.push_back(chunk.kv);
    call.start_positions.push_back(chunk.start_position);
    call.num_tokens.push_back(static_cast<int32_t>(chunk.tokens.size()));
    call.tokens.emplace_back(chunk.tokens.begin(), chunk.tokens.end());
    call.entering_tokens += static_cast<int64_t>(chunk.tokens.size());
  }
  if (absl::Status s = TakeInjectedError(); !s.ok()) return Fail(std::move(call), s);
  if (absl::Status s = Validate(chunks); !s.ok()) return Fail(std::move(call), s);

  StepResult result;
  result.vocab_size = options_.vocab_size;
  result.stats.token_steps_per_depth.assign(nr, 0);
  result.stats.recursion_seconds.assign(nr, 0.0);
  result.logits_row.assign(chunks.size(), -1);
  std::vector<std::vector<int32_t>> depth(chunks.size());
  for (size_t c = 0; c < chunks.size(); ++c) {
    for (size_t i = 0; i < chunks[c].tokens.size(); ++i) {
      const int32_t d = DepthOf(chunks[c].policy, chunks[c].tokens[i],
                                chunks[c].start_position + static_cast<int32_t>(i));
      depth[c].push_back(d);
      result.token_depth.push_back(static_cast<int8_t>(d));
    }
  }
  // Unique first layer: every token's entry (committed after the last layer).
  if (options_.unique_layers) {
    for (const SequenceChunk& chunk : chunks) {
      MOR_RETURN_IF_ERROR(Ensure(
          chunk.kv->unique, chunk.kv->unique.num_tokens + static_cast<int64_t>(chunk.tokens.size()),
          KvPool::kUnique, 0, allocator));
    }
  }
  for (int r = 1; r <= nr; ++r) {
    const bool write = !sharing || r == 1;
    const int level = sharing ? 1 : r;
    std::vector<int32_t> count(chunks.size(), 0);
    for (size_t c = 0; c < chunks.size(); ++c) {
      for (int32_t d : depth[c]) count[c] += d >= r ? 1 : 0;
      result.stats.token_steps_per_depth[r - 1] += count[c];
    }
    if (!write) continue;
    for (size_t c = 0; c < chunks.size(); ++c) {
      if (count[c] == 0) continue;
      KvTable& table = chunks[c].kv->depths[level - 1];
      MOR_RETURN_IF_ERROR(
          Ensure(table, int64_t{table.num_tokens} + count[c], KvPool::kDepth, level, allocator));
    }
    for (size_t c = 0; c < chunks.size(); ++c)
      chunks[c].kv->depths[level - 1].num_tokens += count[c];
  }
  if (options_.unique_layers) {
    for (const SequenceChunk& chunk : chunks) {
      chunk.kv->unique.num_tokens += static_cast<int32_t>(chunk.tokens.size());
    }
  }
  // LM head.
  int32_t rows = 0;
  for (size_t c = 0; c < chunks.size(); ++c) {
    const SequenceChunk& chunk = chunks[c];
    const int32_t n = static_cast<int32_t>(chunk.tokens.size());
    if (chunk.logits == LogitsRequest::kNone) continue;
    result.logits_row[c] = rows;
    const int32_t first = chunk.logits == LogitsRequest::kLast ? n - 1 : 0;
    for (int32_t i = first; i < n; ++i) {
      result.logits.resize(static_cast<size_t>(rows + 1) * options_.vocab_size);
      WriteLogits(chunk.tokens[i], chunk.start_position + i,
                  result.logits.data() + static_cast<size_t>(rows) * options_.vocab_size);
      ++rows;
    }
  }
  call.token_steps_per_depth = result.stats.token_steps_per_depth;
  Record(std::move(call));
  return result;
}

// ---------------------------------------------------------------------------
// Continuous depth-wise step.

absl::Status FakeModelRunner::ValidateDepthwise(std::span<const DepthwiseGroup> groups) const {
  std::unordered_set<const SequenceKv*> seen_kv;
  std::unordered_set<int32_t> seen_slots;
  for (size_t g = 0; g < groups.size(); ++g) {
    const DepthwiseGroup& group = groups[g];
    auto error = [&](auto&&... parts) {
      return absl::InvalidArgumentError(absl::StrCat("group ", g, ": ", parts...));
    };
    if (group.kv == nullptr) return error("no KV tables");
    if (!seen_kv.insert(group.kv).second) return error("sequence appears twice in one step");
    if (group.slots.empty()) return error("no tokens");
    if (static_cast<int>(group.kv->depths.size()) != num_levels()) {
      return error("expected ", num_levels(), " depth tables, got ", group.kv->depths.size());
    }
    for (int32_t slot : group.slots) {
      if (slot < 0 || slot >= options_.num_state_slots)
        return error("state slot ", slot, " out of range");
      if (!seen_slots.insert(slot).second) return error("state slot ", slot, " used twice");
    }
    const int64_t end = group.start_position + static_cast<int64_t>(group.slots.size());
    if (group.start_position < 0 || end > config_.max_position_embeddings) {
      return error("positions exceed max_position_embeddings");
    }
    if (group.policy.fixed_depth < 0 || group.policy.fixed_depth > config_.num_recursions) {
      return error("depth ", group.policy.fixed_depth, " out of range");
    }
    auto flight = flights_.find(group.kv);
    if (group.enter) {
      if (group.tokens.size() != group.slots.size()) return error("tokens and slots differ");
      for (int32_t id : group.tokens) {
        if (id < 0 || id >= config_.vocab_size) return error("token id ", id, " out of range");
      }
      if (group.kv->depths[0].num_tokens != group.start_position ||
          (options_.unique_layers && group.kv->unique.num_tokens != group.start_position)) {
        return error("start_position ", group.start_position, " does not match the KV cache (",
                     group.kv->depths[0].num_tokens, " tokens)");
      }
      if (flight != flights_.end() &&
          group.start_position >=
              flight->second.start + static_cast<int32_t>(flight->second.slots.size())) {
        return error("enters at ", group.start_position, " while its previous group (from ",
                     flight->second.start, ") is still in flight");
      }
    } else {
      if (group.depth < 2 || group.depth > config_.num_recursions) {
        return error("recursion ", group.depth, " outside 2..", config_.num_recursions);
      }
      if (group.active.size() != group.slots.size()) return error("active mask size differs");
      if (std::none_of(group.active.begin(), group.active.end(), [](uint8_t a) { return a; })) {
        return error("no active token");
      }
      if (flight == flights_.end()) return error("continues, but has no group in flight");
      const Flight& f = flight->second;
      if (f.stolen) return error("continues after its slots were given to another group");
      if (f.start != group.start_position ||
          !std::equal(f.slots.begin(), f.slots.end(), group.slots.begin(), group.slots.end())) {
        return error("continues with other positions or slots than it entered with");
      }
      if (group.depth != f.recursion + 1) {
        return error("takes recursion ", group.depth, " after recursion ", f.recursion);
      }
      for (size_t i = 0; i < f.continues.size(); ++i) {
        if ((group.active[i] != 0) != (f.continues[i] != 0)) {
          return error("active mask differs from the previous step's continues at token ", i);
        }
      }
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<DepthwiseStepResult> FakeModelRunner::StepDepthwise(
    std::span<const DepthwiseGroup> groups, KvBlockAllocator& allocator) {
  BeforeCall();
  const int nr = options_.num_recursions;
  const bool sharing = options_.recursive_sharing;
  FakeCall call;
  call.depthwise = true;
  for (const DepthwiseGroup& group : groups) {
    call.kvs.push_back(group.kv);
    call.start_positions.push_back(group.start_position);
    call.num_tokens.push_back(static_cast<int32_t>(group.slots.size()));
    call.enter.push_back(group.enter);
    call.group_depth.push_back(group.enter ? 1 : group.depth);
    if (group.enter) {
      call.tokens.emplace_back(group.tokens.begin(), group.tokens.end());
      call.entering_tokens += static_cast<int64_t>(group.tokens.size());
    } else {
      call.tokens.emplace_back();
    }
  }
  if (absl::Status s = TakeInjectedError(); !s.ok()) return Fail(std::move(call), s);
  if (absl::Status s = ValidateDepthwise(groups); !s.ok()) return Fail(std::move(call), s);

  DepthwiseStepResult result;
  result.vocab_size = options_.vocab_size;
  result.token_steps_per_depth.assign(nr, 0);
  result.groups.resize(groups.size());
  for (size_t g = 0; g < groups.size(); ++g) {
    result.groups[g].continues.assign(groups[g].slots.size(), 0);
  }

  // Enter: embedding + unique first layer; the group's state moves into its slots.
  for (const DepthwiseGroup& group : groups) {
    if (!group.enter) continue;
    if (auto stale = flights_.find(group.kv); stale != flights_.end()) {
      // The group of a sequence that was aborted or preempted while in flight.
      for (int32_t slot : stale->second.slots) {
        if (slot_owner_[slot] == group.kv) slot_owner_[slot] = nullptr;
      }
      flights_.erase(stale);
    }
    Flight f;
    f.start = group.start_position;
    f.slots.assign(group.slots.begin(), group.slots.end());
    f.tokens.assign(group.tokens.begin(), group.tokens.end());
    for (size_t i = 0; i < f.tokens.size(); ++i) {
      f.depth.push_back(DepthOf(group.policy, f.tokens[i], f.start + static_cast<int32_t>(i)));
    }
    f.continues.assign(f.slots.size(), 1);
    for (int32_t slot : f.slots) {
      const SequenceKv* owner = slot_owner_[slot];
      if (owner != nullptr && owner != group.kv) {
        if (auto it = flights_.find(owner); it != flights_.end()) it->second.stolen = true;
      }
      slot_owner_[slot] = group.kv;
    }
    flights_[group.kv] = std::move(f);
    if (options_.unique_layers) {
      KvTable& table = group.kv->unique;
      MOR_RETURN_IF_ERROR(
          Ensure(table, int64_t{group.start_position} + static_cast<int64_t>(group.slots.size()),
                 KvPool::kUnique, 0, allocator));
      table.num_tokens += static_cast<int32_t>(group.slots.size());
    }
  }

  // Recursions: one shared-block call for every row (recursive sharing: one
  // call per depth, as the real model does).
  struct Row {
    int32_t group;
    int32_t token;
    int32_t depth;
  };
  std::map<int, std::vector<Row>> block_calls;
  for (size_t g = 0; g < groups.size(); ++g) {
    const DepthwiseGroup& group = groups[g];
    const int32_t r = group.enter ? 1 : group.depth;
    for (size_t i = 0; i < group.slots.size(); ++i) {
      if (!group.enter && !group.active[i]) continue;
      block_calls[sharing ? r : 0].push_back(
          Row{static_cast<int32_t>(g), static_cast<int32_t>(i), r});
    }
  }
  for (const auto& [key, rows] : block_calls) {
    const bool write = !sharing || rows.front().depth == 1;
    struct Append {
      KvTable* table;
      int level;
      int32_t count;
    };
    std::vector<Append> appended;  // in order of first appearance
    std::set<int32_t> depths;
    for (const Row& row : rows) {
      depths.insert(row.depth);
      if (!write) continue;
      const int level = sharing ? 1 : row.depth;
      KvTable* table = &groups[row.group].kv->depths[level - 1];
      auto it = std::find_if(appended.begin(), appended.end(),
                             [&](const Append& a) { return a.table == table; });
      if (it == appended.end()) {
        appended.push_back(Append{table, level, 1});
      } else {
        ++it->count;
      }
    }
    for (const Append& a : appended) {
      MOR_RETURN_IF_ERROR(Ensure(*a.table, int64_t{a.table->num_tokens} + a.count, KvPool::kDepth,
                                 a.level, allocator));
    }
    for (const Append& a : appended) a.table->num_tokens += a.count;
    ++result.block_calls;
    call.block_call_depths.emplace_back(depths.begin(), depths.end());
    call.block_rows += static_cast<int64_t>(rows.size());
    for (const Row& row : rows) {
      const Flight& f = flights_.at(groups[row.group].kv);
      result.groups[row.group].continues[row.token] = row.depth < f.depth[row.token] ? 1 : 0;
      ++result.token_steps_per_depth[row.depth - 1];
    }
  }

  // Exit: unique last layer (its entries were allocated on entry) + LM head.
  int32_t rows = 0;
  for (size_t g = 0; g < groups.size(); ++g) {
    const DepthwiseGroup& group = groups[g];
    DepthwiseGroupResult& out = result.groups[g];
    Flight& f = flights_.at(group.kv);
    f.recursion = group.enter ? 1 : group.depth;
    f.continues = out.continues;
    if (std::any_of(out.continues.begin(), out.continues.end(), [](uint8_t c) { return c; })) {
      continue;
    }
    out.exited = true;
    const int32_t n = static_cast<int32_t>(f.tokens.size());
    if (group.logits != LogitsRequest::kNone) {
      out.logits_row = rows;
      const int32_t first = group.logits == LogitsRequest::kLast ? n - 1 : 0;
      for (int32_t i = first; i < n; ++i) {
        result.logits.resize(static_cast<size_t>(rows + 1) * options_.vocab_size);
        WriteLogits(f.tokens[i], f.start + i,
                    result.logits.data() + static_cast<size_t>(rows) * options_.vocab_size);
        ++rows;
      }
    }
    for (int32_t slot : f.slots) {
      if (slot_owner_[slot] == group.kv) slot_owner_[slot] = nullptr;
    }
    flights_.erase(group.kv);
  }
  call.token_steps_per_depth = result.token_steps_per_depth;
  Record(std::move(call));
  return result;
}

// ---------------------------------------------------------------------------
// RecordingSink.

void RecordingSink::OnTokens(absl::Span<const GeneratedToken> tokens) {
  {
    absl::MutexLock lock(&mu_);
    if (finish_calls_ > 0 || tokens.empty()) ++violations_;
    tokens_.insert(tokens_.end(), tokens.begin(), tokens.end());
  }
  if (on_token) {
    for (const GeneratedToken& token : tokens) on_token(token);
  }
}

void RecordingSink::OnFinished(const GenerationResult& result) {
  absl::MutexLock lock(&mu_);
  if (finish_calls_ > 0) ++violations_;
  ++finish_calls_;
  result_ = result;
}

bool RecordingSink::WaitFinished(absl::Duration timeout) const {
  absl::MutexLock lock(&mu_);
  auto done = [this] {
    mu_.AssertHeld();
    return finish_calls_ > 0;
  };
  return mu_.AwaitWithTimeout(absl::Condition(&done), timeout);
}

bool RecordingSink::WaitTokens(int64_t n, absl::Duration timeout) const {
  absl::MutexLock lock(&mu_);
  auto done = [this, n] {
    mu_.AssertHeld();
    return static_cast<int64_t>(tokens_.size()) >= n || finish_calls_ > 0;
  };
  mu_.AwaitWithTimeout(absl::Condition(&done), timeout);
  return static_cast<int64_t>(tokens_.size()) >= n;
}

bool RecordingSink::finished() const {
  absl::MutexLock lock(&mu_);
  return finish_calls_ > 0;
}

int32_t RecordingSink::finish_calls() const {
  absl::MutexLock lock(&mu_);
  return finish_calls_;
}

int32_t RecordingSink::contract_violations() const {
  absl::MutexLock lock(&mu_);
  return violations_;
}

std::vector<int32_t> RecordingSink::token_ids() const {
  absl::MutexLock lock(&mu_);
  std::vector<int32_t> ids;
  for (const GeneratedToken& token : tokens_) ids.push_back(token.token_id);
  return ids;
}

std::vector<GeneratedToken> RecordingSink::tokens() const {
  absl::MutexLock lock(&mu_);
  return tokens_;
}

GenerationResult RecordingSink::result() const {
  absl::MutexLock lock(&mu_);
  return result_;
}

// ---------------------------------------------------------------------------
// Helpers.

FakeCore MakeFakeCore(FakeRunnerOptions runner_options, SchedulerConfig config, uint64_t seed) {
  auto runner = std::make_unique<FakeModelRunner>(std::move(runner_options));
  FakeCore out;
  out.runner = runner.get();
  absl::StatusOr<std::unique_ptr<KvCacheManager>> kv =
      KvCacheManager::Create(runner->kv_geometry());
  if (!kv.ok()) return out;
  out.core = std::make_unique<EngineCore>(std::move(runner), std::move(*kv), config, seed);
  return out;
}

GenerationRequest MakeRequest(std::vector<int32_t> prompt, int32_t max_tokens, DepthPolicy policy,
                              int32_t priority) {
  GenerationRequest request;
  request.request_id = "req";
  request.prompt = std::move(prompt);
  request.max_tokens = max_tokens;
  request.policy = policy;
  request.priority = priority;
  return request;
}

std::string CheckKvInvariants(const Scheduler& scheduler, const KvCacheManager& kv) {
  const KvCacheGeometry& g = kv.geometry();
  const KvUsage usage = kv.Usage();
  const int levels = g.num_depth_levels;
  std::vector<int64_t> per_depth(levels + 1, 0);
  std::set<int32_t> unique_blocks, depth_blocks;
  std::set<int32_t> slots;
  int64_t slots_held = 0;
  for (const SequenceState* seq : scheduler.sequences()) {
    const std::string who = absl::StrCat("request ", seq->id, ": ");
    if (static_cast<int>(seq->kv.depths.size()) != levels) return who + "wrong number of tables";
    auto check = [&](const KvTable& table, int depth, std::set<int32_t>& owned,
                     const BlockPool& pool) -> std::string {
      if (static_cast<int64_t>(table.blocks.size()) * g.block_size < table.num_tokens) {
        return absl::StrCat(who, "depth ", depth, " table holds ", table.num_tokens, " entries in ",
                            table.blocks.size(), " blocks");
      }
      // Blocks are drawn only when needed: never a whole spare block.
      if (static_cast<int64_t>(table.blocks.size()) * g.block_size >=
          table.num_tokens + int64_t{g.block_size}) {
        return absl::StrCat(who, "depth ", depth, " table has a spare block");
      }
      for (int32_t id : table.blocks) {
        if (!owned.insert(id).second) return absl::StrCat(who, "block ", id, " owned twice");
        if (!pool.is_allocated(id)) return absl::StrCat(who, "block ", id, " is not allocated");
      }
      per_depth[depth] += static_cast<int64_t>(table.blocks.size());
      return "";
    };
    std::string err = check(seq->kv.unique, 0, unique_blocks, kv.block_pool(KvPool::kUnique));
    if (!err.empty()) return err;
    for (int r = 1; r <= levels; ++r) {
      err = check(seq->kv.depths[r - 1], r, depth_blocks, kv.block_pool(KvPool::kDepth));
      if (!err.empty()) return err;
    }
    if (seq->status == SequenceStatus::kWaiting &&
        (KvCacheManager::BlocksHeld(seq->kv) != BlockDemand{} || seq->group)) {
      return who + "waiting but holds blocks or slots";
    }
    if (seq->group) {
      for (int32_t slot : seq->group->slots) {
        ++slots_held;
        if (!slots.insert(slot).second) return absl::StrCat(who, "slot ", slot, " held twice");
      }
    }
  }
  for (int r = 0; r <= levels; ++r) {
    if (usage.used_blocks_per_depth[r] != per_depth[r]) {
      return absl::StrCat("depth ", r, ": the KV manager counts ", usage.used_blocks_per_depth[r],
                          " blocks, the live sequences hold ", per_depth[r]);
    }
  }
  if (usage.unique.used != static_cast<int64_t>(unique_blocks.size()) ||
      usage.depth.used != static_cast<int64_t>(depth_blocks.size())) {
    return absl::StrCat("pool usage ", usage.unique.used, "/", usage.depth.used,
                        " differs from the blocks owned ", unique_blocks.size(), "/",
                        depth_blocks.size());
  }
  if (usage.invalid_releases != 0) return "invalid block releases";
  if (scheduler.num_free_slots() + slots_held != scheduler.model_info().num_state_slots) {
    return absl::StrCat(scheduler.num_free_slots(), " free + ", slots_held,
                        " held slots != ", scheduler.model_info().num_state_slots);
  }
  return "";
}

}  // namespace mor::scheduler_testing
