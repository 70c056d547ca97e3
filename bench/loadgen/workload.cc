#include "bench/loadgen/workload.h"

#include <algorithm>
#include <cmath>
#include <random>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace mor::loadgen {
namespace {

// Uniform integer in [len x (1 - ratio), len x (1 + ratio)], at least 1.
int32_t DrawLength(int32_t len, double ratio, std::mt19937_64& rng) {
  if (ratio <= 0) return std::max(1, len);
  const auto lo = static_cast<int32_t>(std::max(1.0, std::floor(len * (1.0 - ratio))));
  const auto hi = static_cast<int32_t>(std::max<double>(lo, std::floor(len * (1.0 + ratio))));
  return std::uniform_int_distribution<int32_t>(lo, hi)(rng);
}

}  // namespace

std::string PolicySpec::Name() const {
  switch (kind) {
    case Kind::kServerDefault:
      return "default";
    case Kind::kAdaptive:
      return "adaptive";
    case Kind::kFixed:
      return absl::StrCat("depth", depth);
  }
  return "?";
}

absl::StatusOr<std::vector<PolicySpec>> ParsePolicyMix(absl::string_view text) {
  std::vector<PolicySpec> mix;
  for (absl::string_view part : absl::StrSplit(text, absl::ByAnyChar(":,"))) {
    part = absl::StripAsciiWhitespace(part);
    PolicySpec p;
    int32_t depth = 0;
    if (part == "adaptive" || part == "a") {
      p.kind = PolicySpec::Kind::kAdaptive;
    } else if (part == "default") {
      p.kind = PolicySpec::Kind::kServerDefault;
    } else if (absl::SimpleAtoi(absl::StripPrefix(part, "depth"), &depth) && depth >= 1) {
      p.kind = PolicySpec::Kind::kFixed;
      p.depth = depth;
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("--policy: '", part,
                       "' is not adaptive, default or a depth >= 1 (e.g. adaptive, 1:2:3)"));
    }
    mix.push_back(p);
  }
  if (mix.empty()) return absl::InvalidArgumentError("--policy is empty");
  return mix;
}

absl::Status CheckPolicyDepths(const std::vector<PolicySpec>& mix, int32_t num_recursions) {
  for (const PolicySpec& p : mix) {
    if (p.kind == PolicySpec::Kind::kFixed && p.depth > num_recursions) {
      return absl::InvalidArgumentError(
          absl::StrCat("--policy: depth ", p.depth, " exceeds the model's Nr = ", num_recursions));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<RequestSpec>> BuildWorkload(const WorkloadOptions& options,
                                                       const PromptSource& prompts) {
  if (options.num_prompts < 1) return absl::InvalidArgumentError("--num_prompts must be >= 1");
  if (options.policies.empty()) return absl::InvalidArgumentError("no recursion policy");
  if (options.request_rate <= 0) return absl::InvalidArgumentError("--request_rate must be > 0");
  if (options.burstiness <= 0) return absl::InvalidArgumentError("--burstiness must be > 0");
  std::mt19937_64 prompt_rng(options.seed);
  std::mt19937_64 length_rng(options.seed ^ 0x9e3779b97f4a7c15ULL);
  std::mt19937_64 arrival_rng(options.seed ^ 0xc2b2ae3d27d4eb4fULL);
  // Gamma(shape k, scale 1 / (rate k)): mean 1 / rate; k = 1 is exponential.
  std::gamma_distribution<double> gap(options.burstiness,
                                      1.0 / (options.request_rate * options.burstiness));
  const bool all_at_once = std::isinf(options.request_rate);
  std::vector<RequestSpec> out(static_cast<size_t>(options.num_prompts));
  double t = 0;
  for (int32_t i = 0; i < options.num_prompts; ++i) {
    RequestSpec& r = out[static_cast<size_t>(i)];
    r.index = i;
    const int32_t input_len = DrawLength(options.input_len, options.input_range_ratio, length_rng);
    r.max_tokens = DrawLength(options.output_len, options.output_range_ratio, length_rng);
    auto prompt = prompts.Make(input_len, prompt_rng);
    if (!prompt.ok()) return prompt.status();
    r.prompt = std::move(*prompt);
    r.policy = options.policies[static_cast<size_t>(i) % options.policies.size()];
    if (!all_at_once && i > 0) t += gap(arrival_rng);
    r.arrival_seconds = all_at_once ? 0.0 : t;
  }
  return out;
}

}  // namespace mor::loadgen
