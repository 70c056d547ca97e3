// Plain data exchanged between the gRPC layer and the Engine: one generation
// request, the tokens it produces and how it ended. Torch-free and gRPC-free.
#ifndef MOR_SERVER_GENERATION_TYPES_H_
#define MOR_SERVER_GENERATION_TYPES_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "model/model_runner.h"
#include "model/sampler.h"

namespace mor {

// A validated request (server/request_validation.h builds it from the proto).
struct GenerationRequest {
  std::string request_id;       // for logs and the final message; never empty
  std::vector<int32_t> prompt;  // non-empty, every id < vocab_size
  DepthPolicy policy;
  // Sampling, stop_token_ids and num_logprobs; must pass Validate(vocab_size).
  SamplingParams sampling;
  int32_t max_tokens = 16;  // >= 1; prompt + max_tokens <= max_position_embeddings
  int32_t min_tokens = 0;   // EOS / stop tokens are masked out before this many
  bool ignore_eos = false;
  int32_t priority = 0;  // not yet used by the FIFO engine
  // The engine stops the request (FinishReason::kDeadline) once this passes.
  absl::Time deadline = absl::InfiniteFuture();
};

// One generated token.
struct GeneratedToken {
  int32_t token_id = 0;
  // Recursions applied at the position whose output is this token (the
  // compute spent to produce it), 1..Nr.
  int32_t depth = 0;
  float logprob = 0.0f;                                 // raw log-softmax (sampler.h)
  std::vector<std::pair<int32_t, float>> top_logprobs;  // when num_logprobs > 0
};

enum class FinishReason { kEos, kStopToken, kStopString, kMaxTokens, kCancelled, kDeadline };

// "EOS", "STOP_TOKEN", "STOP_STRING", "MAX_TOKENS", "CANCELLED", "DEADLINE".
std::string_view FinishReasonName(FinishReason reason);

struct GenerationUsage {
  int32_t prompt_tokens = 0;
  int32_t completion_tokens = 0;
  // [r-1]: tokens (prompt + generated tokens fed back) that ran recursion r.
  std::vector<int64_t> token_steps_per_depth;
  double estimated_flops = 0;  // see server/flops_estimate.h
  double queue_seconds = 0;
  double compute_seconds = 0;
};

struct GenerationResult {
  // OK when the request ended by a FinishReason; otherwise the error that
  // ended it (e.g. Unavailable when the engine stopped before running it) and
  // `reason` is meaningless.
  absl::Status status;
  FinishReason reason = FinishReason::kMaxTokens;
  GenerationUsage usage;
};

}  // namespace mor

#endif  // MOR_SERVER_GENERATION_TYPES_H_
