// The requests of one load-generator run: prompts, output lengths, recursion
// policies and arrival times, all drawn from one seed so that every server
// configuration of a benchmark sees exactly the same workload.
#ifndef MOR_BENCH_LOADGEN_WORKLOAD_H_
#define MOR_BENCH_LOADGEN_WORKLOAD_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "bench/loadgen/prompt_source.h"

namespace mor::loadgen {

// The recursion policy one request asks for.
struct PolicySpec {
  enum class Kind { kServerDefault, kAdaptive, kFixed };
  Kind kind = Kind::kAdaptive;
  int32_t depth = 0;  // kFixed: 1..Nr

  // "default", "adaptive" or "depth<d>".
  std::string Name() const;
  bool operator==(const PolicySpec& o) const { return kind == o.kind && depth == o.depth; }
};

// A colon-separated mix: "adaptive", "1:2:3" (a third at each fixed depth),
// "adaptive:3", "default". Request i gets entry i mod (number of entries), so
// repeating an entry weights it ("1:1:2": two thirds at depth 1).
absl::StatusOr<std::vector<PolicySpec>> ParsePolicyMix(absl::string_view text);

// Checks the fixed depths against the model's Nr.
absl::Status CheckPolicyDepths(const std::vector<PolicySpec>& mix, int32_t num_recursions);

struct WorkloadOptions {
  int32_t num_prompts = 100;
  // Lengths are uniform in [len x (1 - ratio), len x (1 + ratio)] (at least 1),
  // as vLLM's random dataset; ratio 0 = every request the same length.
  int32_t input_len = 32;
  double input_range_ratio = 0.0;
  int32_t output_len = 32;
  double output_range_ratio = 0.0;
  // Requests per second; infinity = every request at t = 0. Inter-arrival
  // times are gamma distributed with shape `burstiness` (1 = Poisson).
  double request_rate = 0.0;
  double burstiness = 1.0;
  std::vector<PolicySpec> policies;
  uint64_t seed = 0;
};

// One request of the run.
struct RequestSpec {
  int32_t index = 0;
  std::vector<uint32_t> prompt;
  int32_t max_tokens = 1;
  PolicySpec policy;
  double arrival_seconds = 0.0;  // offset from the start of the run
};

// Draws the requests; prompts, lengths and arrivals use separate random
// streams, so a different rate keeps the same prompts.
absl::StatusOr<std::vector<RequestSpec>> BuildWorkload(const WorkloadOptions& options,
                                                       const PromptSource& prompts);

}  // namespace mor::loadgen

#endif  // MOR_BENCH_LOADGEN_WORKLOAD_H_
