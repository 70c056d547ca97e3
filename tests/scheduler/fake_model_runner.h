// A deterministic, torch-free ModelRunner for scheduler and engine tests.
//
// KV behaviour mirrors the real model (model/mor_model*.cc) exactly:
//  * every token's depth is 1 + Hash(token, position) % Nr (a fixed policy d
//    overrides it); it takes recursions 1..depth;
//  * Step(): each token appends one unique-table entry (models with unique
//    layers) and one entry to each depth table 1..depth (recursive sharing:
//    depth 1 only), drawing a block through the allocator exactly when a
//    table needs one more (blocks * block_size < entries);
//  * StepDepthwise(): a group's entry appends the unique entries and the
//    depth-1 entries, recursion r appends the depth-r entries of the tokens
//    still active, and a group exits in the step in which no token continues.
//    Tokens at different depths share one block call (recursive sharing: one
//    call per depth, as in the real model).
// Logits are a one-hot peak, so the greedy next token after `token` at
// `position` is NextToken(token, position), never the EOS id unless
// `eos_when` says so (EOS then gets the peak and the regular token a lower
// one, so masking EOS yields the regular token).
//
// Inputs are validated like TorchModelRunner does, plus the depth-wise group
// protocol (a group continues exactly where it stopped, a sequence never has
// two groups in flight, slots are never shared): violations return
// InvalidArgument and are counted in num_errors(), so scheduler bugs surface.
//
// Threading: Step/StepDepthwise on one thread; the call log and counters are
// guarded and may be read from any thread.
#ifndef MOR_TESTS_SCHEDULER_FAKE_MODEL_RUNNER_H_
#define MOR_TESTS_SCHEDULER_FAKE_MODEL_RUNNER_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "model/model_runner.h"
#include "scheduler/engine_core.h"
#include "scheduler/generation_sink.h"
#include "scheduler/kv_cache_manager.h"
#include "scheduler/scheduler.h"

namespace mor::scheduler_testing {

struct FakeRunnerOptions {
  int32_t vocab_size = 64;
  int32_t num_recursions = 3;
  int32_t block_size = 4;
  bool unique_layers = true;       // middle_cycle (unique pool); false: cycle
  bool recursive_sharing = false;  // one depth level (depth 1 only)
  int64_t num_depth_blocks = 256;  // incl. the reserved block 0
  int64_t num_unique_blocks = 0;   // 0: same as num_depth_blocks
  int32_t num_state_slots = 64;
  int64_t eos_token_id = 63;  // -1: none
  int64_t max_position_embeddings = 256;
  // When set and true for (last input token, its position), EOS wins.
  std::function<bool(int32_t token, int32_t position)> eos_when;
};

// One call of Step or StepDepthwise, as the runner saw it.
struct FakeCall {
  bool depthwise = false;
  bool ok = true;
  // Per chunk / group, in call order.
  std::vector<const SequenceKv*> kvs;
  std::vector<int32_t> start_positions;
  std::vector<int32_t> num_tokens;   // tokens of the chunk / group
  std::vector<bool> enter;           // depth-wise: entering groups
  std::vector<int32_t> group_depth;  // depth-wise: recursion the group takes
  // Token ids of each chunk / entering group (empty for continuing groups).
  std::vector<std::vector<int32_t>> tokens;
  int64_t entering_tokens = 0;  // tokens entering the model
  int64_t block_rows = 0;       // depth-wise: rows of all shared-block calls
  // Depth-wise: the depths present in each shared-block call.
  std::vector<std::vector<int32_t>> block_call_depths;
  std::vector<int64_t> token_steps_per_depth;
};

class FakeModelRunner : public ModelRunner {
 public:
  explicit FakeModelRunner(FakeRunnerOptions options = {});

  // The greedy next token after `token` at `position` (without eos_when).
  int32_t NextToken(int32_t token, int32_t position) const;
  // The adaptive depth of `token` at `position`.
  int32_t AdaptiveDepth(int32_t token, int32_t position) const;
  // The depth a token reaches under `policy`.
  int32_t DepthOf(const DepthPolicy& policy, int32_t token, int32_t position) const;
  // The first `n` greedy tokens after `prompt` (ignoring eos_when).
  std::vector<int32_t> GreedyContinuation(const std::vector<int32_t>& prompt, int32_t n) const;

  const ModelConfig& config() const override { return config_; }
  const KvCacheGeometry& kv_geometry() const override { return geometry_; }
  std::string device() const override { return "cpu"; }
  std::string dtype() const override { return "float32"; }
  int32_t num_state_slots() const override { return options_.num_state_slots; }

  absl::StatusOr<StepResult> Step(std::span<const SequenceChunk> chunks,
                                  KvBlockAllocator& allocator) override;
  absl::StatusOr<DepthwiseStepResult> StepDepthwise(std::span<const DepthwiseGroup> groups,
                                                    KvBlockAllocator& allocator) override;

  // Test hooks (any thread).
  void set_step_delay(absl::Duration delay) { step_delay_ns_ = absl::ToInt64Nanoseconds(delay); }
  // Runs at the start of every Step / StepDepthwise (on the engine thread),
  // e.g. to hold the engine inside a step.
  void set_step_hook(std::function<void()> hook);
  // The next call fails with `status` before any work.
  void FailNextCall(absl::Status status);
  std::vector<FakeCall> calls() const;
  int64_t num_calls() const;
  // Errors returned: invalid plans, failed allocations, injected errors.
  int64_t num_errors() const;
  std::string last_error() const;
  void ClearCalls();

 private:
  // A depth-wise group between steps (what the real model keeps in its slots).
  struct Flight {
    int32_t start = 0;
    std::vector<int32_t> slots;
    std::vector<int32_t> tokens;
    std::vector<int32_t> depth;  // assigned depth per token
    std::vector<uint8_t> continues;
    int32_t recursion = 0;  // last recursion taken
    bool stolen = false;    // another group took one of its slots
  };

  absl::Status Validate(std::span<const SequenceChunk> chunks) const;
  absl::Status ValidateDepthwise(std::span<const DepthwiseGroup> groups) const;
  absl::Status TakeInjectedError();
  void BeforeCall();
  absl::Status Fail(FakeCall call, absl::Status status);
  void Record(FakeCall call);
  void WriteLogits(int32_t token, int32_t position, float* row) const;
  // Draws blocks until `table` holds `entries`; an allocation failure is
  // counted in num_errors().
  absl::Status Ensure(KvTable& table, int64_t entries, KvPool pool, int depth,
                      KvBlockAllocator& allocator);
  int32_t num_levels() const { return geometry_.num_depth_levels; }

  FakeRunnerOptions options_;
  ModelConfig config_;
  KvCacheGeometry geometry_;
  std::atomic<int64_t> step_delay_ns_{0};

  // Depth-wise state (engine thread only).
  std::unordered_map<const SequenceKv*, Flight> flights_;
  std::vector<const SequenceKv*> slot_owner_;

  mutable std::mutex mu_;
  std::vector<FakeCall> calls_;
  int64_t num_calls_ = 0;
  int64_t num_errors_ = 0;
  std::string last_error_;
  absl::Status injected_;
  std::function<void()> step_hook_;
};

// Records what a request's sink receives and checks the sink contract
// (tokens only before OnFinished, OnFinished exactly once). Thread-safe.
class RecordingSink : public GenerationSink {
 public:
  void OnTokens(absl::Span<const GeneratedToken> tokens) override;
  void OnFinished(const GenerationResult& result) override;

  // Called (on the engine thread, without the sink's lock) after each token.
  std::function<void(const GeneratedToken&)> on_token;

  bool WaitFinished(absl::Duration timeout) const;
  bool WaitTokens(int64_t n, absl::Duration timeout) const;
  bool finished() const;
  int32_t finish_calls() const;
  int32_t contract_violations() const;  // tokens after finish, second finish
  std::vector<int32_t> token_ids() const;
  std::vector<GeneratedToken> tokens() const;
  GenerationResult result() const;

 private:
  mutable absl::Mutex mu_;
  std::vector<GeneratedToken> tokens_ ABSL_GUARDED_BY(mu_);
  GenerationResult result_ ABSL_GUARDED_BY(mu_);
  int32_t finish_calls_ ABSL_GUARDED_BY(mu_) = 0;
  int32_t violations_ ABSL_GUARDED_BY(mu_) = 0;
};

// An EngineCore over a FakeModelRunner; `runner` stays owned by `core`.
struct FakeCore {
  std::unique_ptr<EngineCore> core;
  FakeModelRunner* runner = nullptr;
};
FakeCore MakeFakeCore(FakeRunnerOptions runner_options, SchedulerConfig config, uint64_t seed = 0);

// A greedy request for `prompt`.
GenerationRequest MakeRequest(std::vector<int32_t> prompt, int32_t max_tokens,
                              DepthPolicy policy = DepthPolicy::Adaptive(), int32_t priority = 0);

// Cross-checks the KV cache against the scheduler's live sequences: per-depth
// usage equals the sum of the sequences' tables, no block is owned twice,
// every owned block is allocated, tables hold their entries, in-flight
// groups use distinct slots and free + used slots = all slots. Returns an
// empty string when consistent, else what is wrong.
std::string CheckKvInvariants(const Scheduler& scheduler, const KvCacheManager& kv);

}  // namespace mor::scheduler_testing

#endif  // MOR_TESTS_SCHEDULER_FAKE_MODEL_RUNNER_H_
