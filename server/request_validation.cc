#include "server/request_validation.h"

#include <cmath>
#include <limits>
#include <string>

#include "absl/strings/str_cat.h"
#include "model/sampler.h"
#include "model/status_macros.h"

namespace mor {
namespace {

std::string Num(float v) { return absl::StrCat(v); }

absl::Status Invalid(const std::string& message) { return absl::InvalidArgumentError(message); }

absl::StatusOr<std::vector<int32_t>> ParsePrompt(const v1::GenerateRequest& request,
                                                 const ModelConfig& config,
                                                 const Tokenizer* tokenizer) {
  switch (request.input_case()) {
    case v1::GenerateRequest::INPUT_NOT_SET:
      return Invalid("input is empty: set tokens.ids (or text)");
    case v1::GenerateRequest::kText: {
      if (request.text().empty()) return Invalid("text is empty");
      if (tokenizer == nullptr) {
        return absl::FailedPreconditionError(
            "text: this model has no tokenizer (tokenizer.json); send tokens.ids instead");
      }
      std::vector<int32_t> prompt = tokenizer->Encode(request.text(), /*add_special_tokens=*/true);
      if (prompt.empty()) return Invalid("text encodes to no tokens");
      for (int32_t id : prompt) {
        if (id >= config.vocab_size) {
          return absl::FailedPreconditionError(absl::StrCat(
              "text: the tokenizer produced id ", id, ", outside the model's vocabulary of ",
              config.vocab_size, " (tokenizer and model do not match)"));
        }
      }
      return prompt;
    }
    case v1::GenerateRequest::kTokens:
      break;
  }
  const auto& ids = request.tokens().ids();
  if (ids.empty()) return Invalid("tokens.ids is empty: the prompt needs at least one token");
  std::vector<int32_t> prompt;
  prompt.reserve(ids.size());
  for (int i = 0; i < ids.size(); ++i) {
    if (static_cast<int64_t>(ids[i]) >= config.vocab_size) {
      return Invalid(absl::StrCat("tokens.ids[", i, "] = ", ids[i],
                                  " is outside the vocabulary [0, ", config.vocab_size, ")"));
    }
    prompt.push_back(static_cast<int32_t>(ids[i]));
  }
  return prompt;
}

absl::StatusOr<DepthPolicy> ParsePolicy(const v1::RecursionPolicy& policy,
                                        const ModelConfig& config, DepthPolicy default_policy) {
  if (policy.policy_case() == v1::RecursionPolicy::POLICY_NOT_SET) return default_policy;
  if (policy.policy_case() != v1::RecursionPolicy::kFixedDepth) return DepthPolicy::Adaptive();
  const uint32_t depth = policy.fixed_depth();
  if (depth < 1 || depth > static_cast<uint32_t>(config.num_recursions)) {
    return Invalid(absl::StrCat("recursion.fixed_depth must be in 1..", config.num_recursions,
                                " (got ", depth, ")"));
  }
  return DepthPolicy::Fixed(static_cast<int>(depth));
}

absl::StatusOr<SamplingParams> ParseSampling(const v1::GenerateRequest& request,
                                             const ModelConfig& config) {
  const v1::SamplingParams& in = request.sampling();
  SamplingParams out;
  if (!std::isfinite(in.temperature()) || in.temperature() < 0) {
    return Invalid(
        absl::StrCat("sampling.temperature must be >= 0 (got ", Num(in.temperature()), ")"));
  }
  out.temperature = in.temperature();
  if (in.top_k() > static_cast<uint32_t>(std::numeric_limits<int32_t>::max())) {
    return Invalid(absl::StrCat("sampling.top_k is too large (got ", in.top_k(), ")"));
  }
  out.top_k = static_cast<int32_t>(in.top_k());
  if (in.has_top_p()) {
    if (!(in.top_p() > 0 && in.top_p() <= 1)) {
      return Invalid(absl::StrCat("sampling.top_p must be in (0, 1] (got ", Num(in.top_p()), ")"));
    }
    out.top_p = in.top_p();
  }
  if (!(in.min_p() >= 0 && in.min_p() < 1)) {
    return Invalid(absl::StrCat("sampling.min_p must be in [0, 1) (got ", Num(in.min_p()), ")"));
  }
  out.min_p = in.min_p();
  if (in.has_repetition_penalty()) {
    if (!(in.repetition_penalty() > 0) || !std::isfinite(in.repetition_penalty())) {
      return Invalid(absl::StrCat("sampling.repetition_penalty must be finite and > 0 (got ",
                                  Num(in.repetition_penalty()), ")"));
    }
    out.repetition_penalty = in.repetition_penalty();
  }
  if (in.has_seed()) out.seed = in.seed();
  if (request.top_logprobs() > static_cast<uint32_t>(kMaxNumLogprobs)) {
    return Invalid(absl::StrCat("top_logprobs must be in 0..", kMaxNumLogprobs, " (got ",
                                request.top_logprobs(), ")"));
  }
  out.num_logprobs = static_cast<int32_t>(request.top_logprobs());
  const auto& stop_ids = request.stopping().stop_token_ids();
  for (int i = 0; i < stop_ids.size(); ++i) {
    if (static_cast<int64_t>(stop_ids[i]) >= config.vocab_size) {
      return Invalid(absl::StrCat("stopping.stop_token_ids[", i, "] = ", stop_ids[i],
                                  " is outside the vocabulary [0, ", config.vocab_size, ")"));
    }
    out.stop_token_ids.push_back(static_cast<int32_t>(stop_ids[i]));
  }
  // Anything the checks above missed, in the sampler's own words.
  const absl::Status status = out.Validate(config.vocab_size);
  if (!status.ok()) return Invalid(absl::StrCat("sampling: ", status.message()));
  return out;
}

}  // namespace

absl::StatusOr<GenerationRequest> ParseGenerateRequest(const v1::GenerateRequest& request,
                                                       const ModelConfig& config,
                                                       const RequestLimits& limits,
                                                       const std::string& request_id,
                                                       const Tokenizer* tokenizer) {
  GenerationRequest out;
  if (request.request_id().size() > limits.max_request_id_length) {
    return Invalid(
        absl::StrCat("request_id is longer than ", limits.max_request_id_length, " characters"));
  }
  for (size_t i = 0; i < request.request_id().size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(request.request_id()[i]);
    if (c < 0x20 || c > 0x7e) {
      return Invalid(absl::StrCat("request_id must be printable ASCII (byte ", i, " is 0x",
                                  absl::Hex(c, absl::kZeroPad2), ")"));
    }
  }
  out.request_id = request.request_id().empty() ? request_id : request.request_id();
  MOR_ASSIGN_OR_RETURN(out.prompt, ParsePrompt(request, config, tokenizer));
  MOR_ASSIGN_OR_RETURN(out.policy, ParsePolicy(request.recursion(), config, limits.default_policy));
  MOR_ASSIGN_OR_RETURN(out.sampling, ParseSampling(request, config));

  const v1::StoppingCriteria& stopping = request.stopping();
  if (!stopping.stop().empty()) {
    if (tokenizer == nullptr) {
      return absl::FailedPreconditionError(
          "stopping.stop: this model has no tokenizer (tokenizer.json) to produce text; use "
          "stopping.stop_token_ids");
    }
    if (static_cast<size_t>(stopping.stop_size()) > limits.max_stop_strings) {
      return Invalid(absl::StrCat("stopping.stop has ", stopping.stop_size(), " strings; at most ",
                                  limits.max_stop_strings));
    }
    for (int i = 0; i < stopping.stop_size(); ++i) {
      const size_t size = stopping.stop(i).size();
      if (size == 0 || size > limits.max_stop_string_bytes) {
        return Invalid(absl::StrCat("stopping.stop[", i, "] must be 1..",
                                    limits.max_stop_string_bytes, " bytes (got ", size, ")"));
      }
    }
  }
  const int64_t context = config.max_position_embeddings;
  const int64_t prompt_len = static_cast<int64_t>(out.prompt.size());
  if (prompt_len >= context) {
    return Invalid(absl::StrCat(
        request.has_text() ? "text encodes to " : "tokens.ids has ", prompt_len,
        " tokens, which leaves no room in the model's context of ", context, " tokens"));
  }
  int64_t max_tokens = 0;
  if (stopping.has_max_tokens()) {
    max_tokens = stopping.max_tokens();
    if (max_tokens < 1) return Invalid("stopping.max_tokens must be >= 1 (got 0)");
    if (max_tokens > limits.max_tokens_cap) {
      return Invalid(absl::StrCat("stopping.max_tokens must be <= ", limits.max_tokens_cap,
                                  " (the server's --max_tokens_cap) (got ", max_tokens, ")"));
    }
    if (prompt_len + max_tokens > context) {
      return Invalid(absl::StrCat("stopping.max_tokens = ", max_tokens, " plus the prompt's ",
                                  prompt_len, " tokens exceeds the model's context of ", context,
                                  " tokens"));
    }
  } else {
    max_tokens = std::min<int64_t>(limits.max_tokens_cap, context - prompt_len);
  }
  out.max_tokens = static_cast<int32_t>(max_tokens);
  if (stopping.min_tokens() > static_cast<uint32_t>(out.max_tokens)) {
    return Invalid(absl::StrCat("stopping.min_tokens = ", stopping.min_tokens(),
                                " must be <= max_tokens = ", out.max_tokens));
  }
  out.min_tokens = static_cast<int32_t>(stopping.min_tokens());
  out.ignore_eos = stopping.ignore_eos();
  out.priority = request.priority();
  return out;
}

}  // namespace mor
