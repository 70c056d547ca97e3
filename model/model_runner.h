// The model as the scheduler sees it: a torch-free interface that runs one
// batched step over a ragged batch of sequence chunks (prefill chunks and
// decode tokens mixed) against the paged KV cache.
//
// Threading: a ModelRunner is used by one thread at a time (the engine thread).
#ifndef MOR_MODEL_MODEL_RUNNER_H_
#define MOR_MODEL_MODEL_RUNNER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "model/kv_cache_types.h"
#include "model/model_config.h"

namespace mor {

// How deep a sequence's tokens recurse: the router decides (adaptive), or a
// fixed depth d in [1, Nr] for every token (test-time scaling; the router's
// gate values are still applied).
struct DepthPolicy {
  int fixed_depth = 0;  // 0 = adaptive

  static DepthPolicy Adaptive() { return DepthPolicy{0}; }
  static DepthPolicy Fixed(int depth) { return DepthPolicy{depth}; }
  bool adaptive() const { return fixed_depth == 0; }
};

enum class LogitsRequest { kNone, kLast, kAll };

// New tokens of one sequence for this step.
struct SequenceChunk {
  std::span<const int32_t> tokens;  // non-empty
  int32_t start_position = 0;       // absolute position of tokens[0]
  DepthPolicy policy;
  SequenceKv* kv = nullptr;  // the sequence's tables; appended to in place
  LogitsRequest logits = LogitsRequest::kLast;
};

// Per-step counters (plain numbers; metrics live elsewhere).
struct StepStats {
  // token_steps[r-1]: tokens that executed recursion r in this step.
  std::vector<int64_t> token_steps_per_depth;
  double embed_seconds = 0;
  double unique_layers_seconds = 0;
  std::vector<double> recursion_seconds;  // per depth
  double lm_head_seconds = 0;
  double total_seconds = 0;
};

struct StepResult {
  int64_t vocab_size = 0;
  // fp32 logits, row-major [num_rows, vocab_size].
  std::vector<float> logits;
  // Per chunk: first logits row (kLast: one row, kAll: one row per token), or -1.
  std::vector<int32_t> logits_row;
  // Per input token, in chunk order: the depth it reached (1..Nr).
  std::vector<int8_t> token_depth;
  // Per input token: Nr router scores (see docs/model-format.md), NaN where the
  // router was not evaluated. Empty for models without a router.
  std::vector<float> router_scores;
  StepStats stats;
};

// Continuous depth-wise execution (the paper's "continuous depth-wise
// batching"): one call of the shared block carries tokens of many sequences
// that are at different recursion depths; each token advances one recursion
// per step, and a token that stops frees its place in the batch at once.
//
// Unit of work: a *group*, the tokens of one sequence that entered the model
// together (a prefill chunk, or one decode token). Between steps the tokens'
// hidden states live in runner-owned state slots chosen by the caller. A
// group's tokens advance in lockstep (at recursion r all of its tokens still
// active take r in the same call, since they attend to each other causally),
// and the group leaves the model (unique last layer + LM head) in the step in
// which none of its tokens continues: the last layer attends across the whole
// group, so tokens that stopped early wait in their slots.
struct DepthwiseGroup {
  SequenceKv* kv = nullptr;  // at most one group per sequence in flight
  DepthPolicy policy;
  int32_t start_position = 0;       // position of the group's first token
  std::span<const int32_t> tokens;  // token ids (read when entering)
  std::span<const int32_t> slots;   // one state slot per token, distinct across groups
  // True in the group's first step: embedding and the unique first layer
  // run before recursion 1 (the depth-1 table must hold start_position
  // entries). An entering group takes recursion 1 with every token.
  bool enter = false;
  // The recursion (1..Nr) the group's active tokens take in this step.
  int32_t depth = 1;
  // Per token: 1 if it takes `depth` now (ignored when entering: all do).
  std::span<const uint8_t> active;
  LogitsRequest logits = LogitsRequest::kLast;  // on exit
};

struct DepthwiseGroupResult {
  // Per token: 1 if it takes recursion depth + 1 in the next step.
  std::vector<uint8_t> continues;
  bool exited = false;      // left the model in this step
  int32_t logits_row = -1;  // first logits row when exited and logits requested
};

struct DepthwiseStepResult {
  int64_t vocab_size = 0;
  std::vector<float> logits;                 // [rows, vocab] of exited groups
  std::vector<DepthwiseGroupResult> groups;  // parallel to the step's groups
  // token_steps_per_depth[r-1]: tokens that took recursion r in this step.
  std::vector<int64_t> token_steps_per_depth;
  int64_t block_calls = 0;  // shared-block invocations (one per weight set)
  double enter_seconds = 0;
  double block_seconds = 0;
  double exit_seconds = 0;
  double total_seconds = 0;
};

class ModelRunner {
 public:
  virtual ~ModelRunner() = default;

  virtual const ModelConfig& config() const = 0;
  virtual const KvCacheGeometry& kv_geometry() const = 0;
  // "cpu", "cuda:0", ... and "float32" / "bfloat16" / "float16".
  virtual std::string device() const = 0;
  virtual std::string dtype() const = 0;

  // Runs `chunks` (each sequence at most once) through the model, writing
  // their K/V and drawing new blocks from `allocator` as tables fill up.
  // Invalid input (token id out of range, context overflow, bad depth, table
  // shorter than num_tokens implies) -> InvalidArgument before any work.
  // If the allocator fails mid-step the step returns its error and the
  // tables of every chunk in the batch are unspecified: the caller must
  // release them (the scheduler checks capacity before stepping).
  virtual absl::StatusOr<StepResult> Step(std::span<const SequenceChunk> chunks,
                                          KvBlockAllocator& allocator) = 0;

  // One continuous depth-wise step over `groups` (see DepthwiseGroup).
  // Slots index [0, num_state_slots()). Invalid plans -> InvalidArgument
  // before any work; allocator failure as for Step.
  virtual int32_t num_state_slots() const { return 0; }
  // False when Step runs every token through all recursions and masks the
  // results (ModelRunnerOptions::depth_aware).
  virtual bool depth_aware() const { return true; }
  virtual absl::StatusOr<DepthwiseStepResult> StepDepthwise(std::span<const DepthwiseGroup> groups,
                                                            KvBlockAllocator& allocator) {
    return absl::UnimplementedError("this runner has no depth-wise step");
  }
};

// Block counts of the two KV pools, each including the reserved block 0.
struct KvPoolBlocks {
  int64_t num_depth_blocks = 0;
  int64_t num_unique_blocks = 0;  // 0: same as num_depth_blocks
};

// Sizes the KV pools from inside model loading: called once the weights are
// on the device and before the pools (and the depth-wise state slots) are
// allocated, with the model's KV geometry (block counts 0, dtype_bytes of the
// compute dtype). Its error is returned by CreateTorchModelRunner as is.
using KvPoolSizer = std::function<absl::StatusOr<KvPoolBlocks>(const KvCacheGeometry& geometry)>;

// Memory of one CUDA device, in bytes.
struct DeviceMemoryInfo {
  // What new allocations on the device can take: the memory the CUDA driver
  // reports free (cudaMemGetInfo, all processes counted) plus the memory
  // LibTorch's caching allocator holds without a live tensor in it (it
  // reuses that first).
  int64_t free_bytes = 0;
  int64_t total_bytes = 0;      // the device's memory
  int64_t allocated_bytes = 0;  // in live LibTorch tensors of this process
};

// The memory of `device` ("cuda" = "cuda:0", or "cuda:N") now; queried after
// the weights are loaded (e.g. from a KvPoolSizer) it reflects them.
// FailedPrecondition for "cpu" (host memory is not reported) and when this
// LibTorch has no usable CUDA device; InvalidArgument for a malformed name or
// an index past the device count. Implemented with LibTorch (mor_model_torch).
absl::StatusOr<DeviceMemoryInfo> QueryDeviceMemory(const std::string& device);

struct ModelRunnerOptions {
  std::string model_dir;
  std::string device = "cpu";     // cpu | cuda | cuda:N
  std::string dtype = "float32";  // float32 | bfloat16 | float16 (cuda only)
  int32_t block_size = 16;
  int64_t num_depth_blocks = 1024;  // depth-pool capacity (incl. reserved block 0)
  int64_t num_unique_blocks = 0;    // 0: same as num_depth_blocks
  // Optional: when set, its counts replace num_depth_blocks /
  // num_unique_blocks (see KvPoolSizer).
  KvPoolSizer kv_pool_sizer;
  int32_t num_threads = 0;  // intra-op CPU threads; 0 = all cores
  // Attention kernel: "auto" (paged CPU kernel on CPU, gather + SDPA on CUDA)
  // or "sdpa" (gather + SDPA everywhere; for comparison).
  std::string attention = "auto";
  // Hidden-state slots for tokens in flight between depth-wise steps.
  int32_t num_state_slots = 4096;
  // False: Step runs every token through all Nr recursions and masks the
  // results (outputs unchanged; the no-depth-awareness benchmark reference).
  bool depth_aware = true;
};

// Loads the model in `options.model_dir` with LibTorch. Errors name the file,
// tensor and problem; nothing throws.
absl::StatusOr<std::unique_ptr<ModelRunner>> CreateTorchModelRunner(
    const ModelRunnerOptions& options);

}  // namespace mor

#endif  // MOR_MODEL_MODEL_RUNNER_H_
