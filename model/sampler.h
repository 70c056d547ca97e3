// Token sampling on fp32 logits (one row per sequence per step). Torch-free.
//
// Pipeline, in this order (as in vLLM / HF transformers):
//   1. repetition penalty on every token already seen (prompt + output), HF/CTRL
//      rule: logit > 0 ? logit / penalty : logit * penalty;
//   2. temperature < kGreedyTemperature (1e-5, vLLM's epsilon; so 0): greedy argmax,
//      ties -> lowest id; top_k / top_p / min_p do not apply and no random draw is made;
//   3. temperature: logits / temperature;
//   4. top_k: keep the k largest;
//   5. top_p: of the top-k distribution (renormalised), keep the smallest prefix, in
//      descending order, whose mass reaches top_p (a token is kept iff the mass of the
//      tokens before it is < top_p, so the most likely token always survives);
//   6. min_p: drop tokens with p < min_p * p_max (p of the temperature-scaled
//      distribution; ratios do not change under renormalisation, so this equals
//      applying it after top_k / top_p);
//   7. draw from the renormalised distribution over the surviving tokens.
// Ordering is by (logit descending, token id ascending), so ties never make the
// result depend on the implementation.
//
// Reported log-probabilities follow vLLM's "raw" convention: log-softmax of the
// logits after the repetition penalty and before temperature / top_k / top_p /
// min_p. This holds for the sampled token and for top_logprobs.
//
// Input handling: NaN logits are treated as -inf and +inf as the largest finite
// float. A token with weight 0 in float (more than ~87 nats below the best one after
// temperature) is never sampled. If every logit is -inf/NaN, token 0 is returned with
// logprob -inf.
//
// Reproducibility: the random stream is std::mt19937_64 (fully specified by the C++
// standard) seeded with SamplingParams::seed (or the caller's fallback seed); each
// non-greedy Sample() takes one 64-bit output x and uses u = (x >> 11) * 2^-53, and
// the token is the inverse CDF at u of the filtered weights in token-id order. The
// token choice uses only IEEE float/double +, -, *, / and integer operations in a
// fixed order (its own exp, no libm; selections whose result is unique regardless of
// the standard library), so the same seed and logits give the same tokens on every
// machine compiled without floating-point contraction (the x86-64 default; the AVX2
// code paths are FMA-free). Where the compiler fuses a * b + c (e.g. aarch64 GCC),
// weights may differ in the last bit, which changes a token only if u falls within
// ~1e-7 of a boundary.
//
// Cost per call (vocab V): a handful of vectorised O(V) passes (sanitise, max, exp
// for the raw log-normaliser, exp at the temperature when != 1, mask, block sums),
// plus, with top_k / top_p, a histogram of the scaled logits in 1/64-nat buckets that
// locates the boundary bucket; only that bucket is selected (quickselect, no full
// sort). About 0.15 ms greedy and 0.3-0.45 ms with top_p for V = 152k on one core.
#ifndef MOR_MODEL_SAMPLER_H_
#define MOR_MODEL_SAMPLER_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <random>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/types/span.h"

namespace mor {

// Temperatures below this are treated as greedy (vLLM's _SAMPLING_EPS).
inline constexpr float kGreedyTemperature = 1e-5f;
// Largest SamplingParams::num_logprobs.
inline constexpr int32_t kMaxNumLogprobs = 20;

struct SamplingParams {
  float temperature = 0.0f;         // >= 0; 0 = greedy (argmax; ties -> lowest id)
  int32_t top_k = 0;                // >= 0; 0 = disabled
  float top_p = 1.0f;               // (0, 1]; 1 = disabled
  float min_p = 0.0f;               // [0, 1): drop tokens with p < min_p * p_max; 0 = disabled
  float repetition_penalty = 1.0f;  // > 0; 1 = disabled
  std::optional<uint64_t> seed;     // reproducible stream per request
  int32_t num_logprobs = 0;         // top-n logprobs to report, 0..kMaxNumLogprobs
  std::vector<int32_t> stop_token_ids;

  // OK, or InvalidArgument naming the offending field and value, e.g.
  // "temperature must be >= 0 (got -1)". Non-finite floats are rejected.
  absl::Status Validate(int64_t vocab_size) const;

  bool is_greedy() const { return temperature < kGreedyTemperature; }
};

struct SampledToken {
  int32_t token_id = -1;
  float logprob = 0.0f;        // raw log-softmax (see the file comment)
  bool is_stop_token = false;  // token_id is in SamplingParams::stop_token_ids
  // The num_logprobs most likely tokens as (token id, raw logprob), sorted by
  // logprob descending, ties by id ascending. Empty when num_logprobs == 0.
  std::vector<std::pair<int32_t, float>> top_logprobs;
};

namespace sampler_internal {
struct Candidate {
  float logit;   // after the repetition penalty
  float weight;  // exp((logit - max) / temperature)
  int32_t id;
};
struct Scratch {
  std::vector<float> logits;      // penalised, sanitised logits
  std::vector<float> weights;     // exp((logit - max) / temperature)
  std::vector<uint16_t> buckets;  // histogram bucket of every token
  std::vector<int32_t> bucket_count;
  std::vector<double> bucket_mass;
  std::vector<Candidate> candidates;
  std::vector<double> block_sums;
  std::vector<std::pair<float, int32_t>> top;  // (logit, id) for top_logprobs
};
}  // namespace sampler_internal

// Scratch memory for Sample() (O(vocab) floats). A SequenceSampler allocates its
// own on first use; an engine sampling many sequences can instead keep one per
// thread and pass it in, so that idle requests hold no O(vocab) memory. Buffers
// only grow. Not thread-safe: one Sample() at a time per workspace.
class SamplerWorkspace {
 public:
  SamplerWorkspace() = default;
  SamplerWorkspace(SamplerWorkspace&&) = default;
  SamplerWorkspace& operator=(SamplerWorkspace&&) = default;
  SamplerWorkspace(const SamplerWorkspace&) = delete;
  SamplerWorkspace& operator=(const SamplerWorkspace&) = delete;

 private:
  friend class SequenceSampler;
  sampler_internal::Scratch scratch_;
};

// Per-request sampler: owns the random stream and the set of tokens seen (prompt +
// output) for the repetition penalty. The seen set is kept only when
// repetition_penalty != 1. Not thread-safe; movable.
class SequenceSampler {
 public:
  // `params` must have passed Validate(). The stream is seeded with params.seed, or
  // with `fallback_seed` when params.seed is unset.
  SequenceSampler(SamplingParams params, uint64_t fallback_seed,
                  absl::Span<const int32_t> prompt_tokens);

  SequenceSampler(SequenceSampler&&) = default;
  SequenceSampler& operator=(SequenceSampler&&) = default;

  // Samples one token from `logits` (one row, size = vocab) and records it as seen.
  // Uses an internal workspace, allocated on first use. An empty row yields
  // token_id -1.
  SampledToken Sample(absl::Span<const float> logits);
  // Same, with caller-owned scratch memory.
  SampledToken Sample(absl::Span<const float> logits, SamplerWorkspace& workspace);

  // Records a token produced elsewhere (e.g. replayed after a preemption). Does not
  // advance the random stream: keep the request's sampler alive across preemption
  // to keep its stream.
  void Accept(int32_t token);

  const SamplingParams& params() const { return params_; }
  uint64_t seed() const { return seed_; }  // the seed actually used
  bool IsStopToken(int32_t token) const;

 private:
  SamplingParams params_;
  uint64_t seed_;
  std::mt19937_64 rng_;
  absl::flat_hash_set<int32_t> seen_;
  std::unique_ptr<SamplerWorkspace> own_workspace_;

  double NextUniform();  // [0, 1), 53 random bits
};

}  // namespace mor

#endif  // MOR_MODEL_SAMPLER_H_
