// Turns a mor.v1.GenerateRequest into a validated GenerationRequest.
#ifndef MOR_SERVER_REQUEST_VALIDATION_H_
#define MOR_SERVER_REQUEST_VALIDATION_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "model/model_config.h"
#include "model/tokenizer.h"
#include "proto/mor/v1/mor.pb.h"
#include "scheduler/generation_types.h"

namespace mor {

// Server-side limits that are not part of the model.
struct RequestLimits {
  int32_t max_tokens_cap = 4096;  // largest StoppingCriteria.max_tokens
  size_t max_request_id_length = 256;
  size_t max_stop_strings = 16;        // StoppingCriteria.stop entries
  size_t max_stop_string_bytes = 256;  // each
  // Used when a request sets no RecursionPolicy.
  DepthPolicy default_policy = DepthPolicy::Adaptive();
  // Longest a request may run; a client deadline further away is shortened.
  absl::Duration max_request_duration = absl::InfiniteDuration();
};

// Checks every field against the model and `limits`. Errors name the field and
// the value: InvalidArgument (e.g. "sampling.top_p must be in (0, 1] (got 0)"),
// or Unimplemented for features that need the tokenizer (text input, stop
// strings). request_id must be at most max_request_id_length printable ASCII
// characters (it goes into the log); `request_id` is used when the request
// carries none. The deadline is left for the caller to set.
// `tokenizer` (may be null) encodes text prompts; without one, text input and
// stop strings are FailedPrecondition.
absl::StatusOr<GenerationRequest> ParseGenerateRequest(const v1::GenerateRequest& request,
                                                       const ModelConfig& config,
                                                       const RequestLimits& limits,
                                                       const std::string& request_id,
                                                       const Tokenizer* tokenizer = nullptr);

}  // namespace mor

#endif  // MOR_SERVER_REQUEST_VALIDATION_H_
