#include "model/sampler.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <optional>
#include <string>

#include "absl/strings/str_cat.h"

// Bit-exact results must not depend on whether the compiler fuses a * b + c.
#if defined(__clang__)
#pragma clang fp contract(off)
#endif

namespace mor {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kMaxFinite = std::numeric_limits<float>::max();

// Histogram of scaled logits used to bound top_k / top_p: bucket b holds the tokens
// with (max - logit) / temperature in [b, b + 1) / kBucketsPerNat. Tokens beyond the
// last bucket are more than 90 nats below the best one: their float weight is 0.
constexpr float kBucketsPerNat = 16.0f;
constexpr int kNumBuckets = 90 * 16;

// Weights below exp(kExpFloor) are flushed to 0 (kExpFloor > -90, see above).
constexpr float kExpFloor = -87.0f;

// Blocks for the two-level inverse-CDF walk in SampleIndex().
constexpr size_t kBlock = 256;

// exp(x) for x <= 0 in float, 0 for x < kExpFloor (and for -inf). Cephes expf:
// Cody-Waite reduction and a degree-6 polynomial, ~1 ulp. Only +, *, integer and
// bit operations (written without branches so that GCC vectorises the loops that
// call it), hence deterministic.
inline float ExpNonPositive(float x) {
  // For x <= 0 the bit pattern grows with |x|: clamp and mask in the integer domain.
  constexpr uint32_t kFloorBits = std::bit_cast<uint32_t>(kExpFloor);
  const uint32_t bx = std::bit_cast<uint32_t>(x);
  const float xc = std::bit_cast<float>(bx < kFloorBits ? bx : kFloorBits);
  const float t = xc * 1.44269504088896341f + 12582912.0f;  // round(x / ln 2), 1.5*2^23
  const float n = t - 12582912.0f;
  float r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t e = static_cast<int32_t>(n) + 127;
  const float y = p * std::bit_cast<float>(static_cast<uint32_t>(e) << 23);
  const uint32_t keep = 0u - static_cast<uint32_t>(bx <= kFloorBits);  // x >= kExpFloor
  return std::bit_cast<float>(std::bit_cast<uint32_t>(y) & keep);
}

// Sum in double with 8 interleaved accumulators combined in a fixed order:
// deterministic, and not bound by the latency of one addition chain.
inline double SumLanes(const float* w, size_t n) {
  double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int j = 0; j < 8; ++j) acc[j] += static_cast<double>(w[i + j]);
  }
  for (int j = 0; i < n; ++i, ++j) acc[j] += static_cast<double>(w[i]);
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

// Maps a float to an int32 with the same order (for non-NaN values); an involution.
inline int32_t OrderKey(float x) {
  const int32_t b = std::bit_cast<int32_t>(x);
  return b ^ ((b >> 31) & 0x7FFFFFFF);
}

// Max of z[0, n) (n > 0; no NaN), via integer keys so that the loop vectorises.
inline float MaxLanes(const float* z, size_t n) {
  int32_t m = std::numeric_limits<int32_t>::min();
  for (size_t i = 0; i < n; ++i) m = std::max(m, OrderKey(z[i]));
  return std::bit_cast<float>(OrderKey(std::bit_cast<float>(m)));
}

// Index drawn with probability w[i] / sum(w) (u in [0, 1)), or -1 when the sum is
// 0. Never returns an index with w[i] == 0. Walks block sums first, then one block.
int64_t SampleIndex(const float* w, size_t n, double u, std::vector<double>& block_sums) {
  const size_t num_blocks = (n + kBlock - 1) / kBlock;
  block_sums.resize(num_blocks);
  double total = 0.0;
  for (size_t b = 0; b < num_blocks; ++b) {
    const size_t begin = b * kBlock;
    block_sums[b] = SumLanes(w + begin, std::min(kBlock, n - begin));
    total += block_sums[b];
  }
  if (!(total > 0.0)) return -1;
  double rem = u * total;
  int64_t last_positive = -1;
  for (size_t b = 0; b < num_blocks; ++b) {
    const size_t begin = b * kBlock;
    const size_t end = std::min(n, begin + kBlock);
    if (block_sums[b] > 0.0) {
      if (rem < block_sums[b]) {
        for (size_t i = begin; i < end; ++i) {
          if (w[i] > 0.0f) {
            last_positive = static_cast<int64_t>(i);
            rem -= static_cast<double>(w[i]);
            if (rem < 0.0) return last_positive;
          }
        }
        return last_positive;  // rounding: the block sum was slightly larger
      }
      for (size_t i = end; i-- > begin;) {
        if (w[i] > 0.0f) {
          last_positive = static_cast<int64_t>(i);
          break;
        }
      }
    }
    rem -= block_sums[b];
  }
  return last_positive;  // rounding: u * total reached the total
}

using sampler_internal::Candidate;

// Strict total order: larger logit first, then lower id.
inline bool Before(const Candidate& a, const Candidate& b) {
  return a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
}

// Rearranges [first, last) so that [first, first + r) holds its r first elements in
// Before order, sorted. Deterministic: that set is unique, and then sorted.
void SelectSorted(Candidate* first, Candidate* last, size_t r) {
  Candidate* mid = first + r;
  if (mid < last) std::nth_element(first, mid, last, Before);
  std::sort(first, mid, Before);
}

// top_p inside one range: an element is kept iff the mass before it (`before`, the
// mass ahead of the range, plus the elements ahead of it in the range) is < `target`.
// Returns the number kept and leaves them first, sorted. Sorts only as many chunks
// as needed (64, 128, ...), so a boundary found early costs O(n).
size_t TopPCut(Candidate* first, Candidate* last, double before, double target) {
  const size_t n = static_cast<size_t>(last - first);
  size_t done = 0;
  size_t chunk = 64;
  while (done < n) {
    const size_t c = std::min(chunk, n - done);
    SelectSorted(first + done, last, c);
    for (size_t i = done; i < done + c; ++i) {
      if (!(before < target)) return i;
      before += static_cast<double>(first[i].weight);
    }
    done += c;
    chunk *= 2;
  }
  return n;
}

// The tokens of bucket `b`, in id order.
void GatherBucket(const float* z, const float* w, const uint16_t* bucket, size_t vocab, int b,
                  int32_t count, std::vector<Candidate>& out) {
  out.resize(count);
  Candidate* c = out.data();
  for (size_t i = 0; i < vocab; ++i) {
    if (bucket[i] == b) *c++ = Candidate{z[i], w[i], static_cast<int32_t>(i)};
  }
}

// The last token kept by top_k and top_p (in Before order), or nullopt when they
// keep everything. z: penalised logits (max m); w: exp((z - m) / temperature).
//
// A histogram of (m - z) / temperature in buckets of 1/kBucketsPerNat nats (monotone
// in z) locates the bucket holding the boundary; only that bucket is then gathered
// and partially sorted.
std::optional<Candidate> FindThreshold(const SamplingParams& params, const float* z,
                                       const float* w, size_t vocab, float m,
                                       sampler_internal::Scratch& ws) {
  const bool use_top_k = params.top_k > 0 && static_cast<size_t>(params.top_k) < vocab;
  const bool use_top_p = params.top_p < 1.0f;
  if (!use_top_k && !use_top_p) return std::nullopt;

  // Bucket of every token; kNumBuckets (an overflow bucket) for weight-0 tokens.
  ws.buckets.resize(vocab);
  uint16_t* bucket = ws.buckets.data();
  const float scale = kBucketsPerNat / params.temperature;
  const float overflow = static_cast<float>(kNumBuckets);
  for (size_t i = 0; i < vocab; ++i) {
    const float d = (m - z[i]) * scale;
    bucket[i] = static_cast<uint16_t>(static_cast<int32_t>(d < overflow ? d : overflow));
  }
  ws.bucket_count.assign(kNumBuckets + 1, 0);
  ws.bucket_mass.assign(kNumBuckets + 1, 0.0);
  int32_t* count = ws.bucket_count.data();
  double* mass = ws.bucket_mass.data();
  for (size_t i = 0; i < vocab; ++i) {
    ++count[bucket[i]];
    mass[bucket[i]] += static_cast<double>(w[i]);
  }

  std::vector<Candidate>& cand = ws.candidates;
  std::optional<Candidate> threshold;
  // top_k: the k-th token lies in bucket k_bucket, as element `need` of it.
  int k_bucket = -1;
  size_t need = 0;
  if (use_top_k) {
    int64_t cum = 0;
    for (int b = 0; b < kNumBuckets; ++b) {
      if (cum + count[b] >= params.top_k) {
        k_bucket = b;
        need = static_cast<size_t>(params.top_k - cum);
        break;
      }
      cum += count[b];
    }
  }
  if (k_bucket >= 0) {  // else fewer than k tokens have a non-zero weight
    GatherBucket(z, w, bucket, vocab, k_bucket, count[k_bucket], cand);
    if (need < cand.size()) {
      SelectSorted(cand.data(), cand.data() + cand.size(), need);
      threshold = cand[need - 1];
      cand.resize(need);
    } else {
      threshold = *std::max_element(cand.begin(), cand.end(), Before);
    }
  }
  if (!use_top_p) return threshold;

  // top_p over the top-k distribution (all tokens when top_k is off).
  const int last_bucket = k_bucket >= 0 ? k_bucket : kNumBuckets;  // exclusive
  double total = 0.0;
  for (int b = 0; b < last_bucket; ++b) total += mass[b];
  if (k_bucket >= 0) {
    for (const Candidate& c : cand) total += static_cast<double>(c.weight);
  }
  const double target = static_cast<double>(params.top_p) * total;
  double before = 0.0;
  for (int b = 0; b < last_bucket; ++b) {
    if (before + mass[b] >= target) {
      GatherBucket(z, w, bucket, vocab, b, count[b], cand);
      const size_t cut = TopPCut(cand.data(), cand.data() + cand.size(), before, target);
      return cand[std::max<size_t>(cut, 1) - 1];
    }
    before += mass[b];
  }
  if (k_bucket >= 0) {  // the boundary is among the top-k part of k_bucket
    const size_t cut = TopPCut(cand.data(), cand.data() + cand.size(), before, target);
    return cand[std::max<size_t>(cut, 1) - 1];
  }
  return std::nullopt;  // rounding: the whole mass is needed
}

std::string FloatStr(float v) { return absl::StrCat(v); }

}  // namespace

absl::Status SamplingParams::Validate(int64_t vocab_size) const {
  if (vocab_size <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("vocab_size must be > 0 (got ", vocab_size, ")"));
  }
  if (!std::isfinite(temperature)) {
    return absl::InvalidArgumentError(
        absl::StrCat("temperature must be finite (got ", FloatStr(temperature), ")"));
  }
  if (temperature < 0.0f) {
    return absl::InvalidArgumentError(
        absl::StrCat("temperature must be >= 0 (got ", FloatStr(temperature), ")"));
  }
  if (top_k < 0) {
    return absl::InvalidArgumentError(absl::StrCat("top_k must be >= 0 (got ", top_k, ")"));
  }
  if (!(top_p > 0.0f && top_p <= 1.0f)) {
    return absl::InvalidArgumentError(
        absl::StrCat("top_p must be in (0, 1] (got ", FloatStr(top_p), ")"));
  }
  if (!(min_p >= 0.0f && min_p < 1.0f)) {
    return absl::InvalidArgumentError(
        absl::StrCat("min_p must be in [0, 1) (got ", FloatStr(min_p), ")"));
  }
  if (!(repetition_penalty > 0.0f) || !std::isfinite(repetition_penalty)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "repetition_penalty must be finite and > 0 (got ", FloatStr(repetition_penalty), ")"));
  }
  if (num_logprobs < 0 || num_logprobs > kMaxNumLogprobs) {
    return absl::InvalidArgumentError(absl::StrCat("num_logprobs must be in [0, ",
                                                   kMaxNumLogprobs, "] (got ", num_logprobs, ")"));
  }
  for (size_t i = 0; i < stop_token_ids.size(); ++i) {
    if (stop_token_ids[i] < 0 || stop_token_ids[i] >= vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("stop_token_ids[", i, "] must be in [0, ",
                                                     vocab_size, ") (got ", stop_token_ids[i], ")"));
    }
  }
  return absl::OkStatus();
}

SequenceSampler::SequenceSampler(SamplingParams params, uint64_t fallback_seed,
                                 absl::Span<const int32_t> prompt_tokens)
    : params_(std::move(params)),
      seed_(params_.seed.has_value() ? *params_.seed : fallback_seed),
      rng_(seed_) {
  if (params_.repetition_penalty != 1.0f) seen_.insert(prompt_tokens.begin(), prompt_tokens.end());
}

void SequenceSampler::Accept(int32_t token) {
  if (params_.repetition_penalty != 1.0f) seen_.insert(token);
}

bool SequenceSampler::IsStopToken(int32_t token) const {
  return std::find(params_.stop_token_ids.begin(), params_.stop_token_ids.end(), token) !=
         params_.stop_token_ids.end();
}

double SequenceSampler::NextUniform() {
  return static_cast<double>(rng_() >> 11) * 0x1.0p-53;
}

SampledToken SequenceSampler::Sample(absl::Span<const float> logits) {
  if (own_workspace_ == nullptr) own_workspace_ = std::make_unique<SamplerWorkspace>();
  return Sample(logits, *own_workspace_);
}

SampledToken SequenceSampler::Sample(absl::Span<const float> logits, SamplerWorkspace& ws) {
  SampledToken out;
  const size_t vocab = logits.size();
  if (vocab == 0) {
    out.logprob = -kInf;
    return out;
  }

  // 1. Sanitise and apply the repetition penalty.
  ws.scratch_.logits.resize(vocab);
  float* z = ws.scratch_.logits.data();
  for (size_t i = 0; i < vocab; ++i) {
    const float x = logits[i];
    const float y = x != x ? -kInf : x;
    z[i] = y > kMaxFinite ? kMaxFinite : y;
  }
  const float penalty = params_.repetition_penalty;
  if (penalty != 1.0f) {
    for (const int32_t t : seen_) {
      if (t < 0 || static_cast<size_t>(t) >= vocab) continue;
      const float x = z[t];
      const float y = x > 0.0f ? x / penalty : x * penalty;
      z[t] = y > kMaxFinite ? kMaxFinite : y;
    }
  }

  // Raw log-normaliser (after the penalty, before temperature).
  const float m = MaxLanes(z, vocab);
  size_t argmax = 0;
  while (z[argmax] != m) ++argmax;
  ws.scratch_.weights.resize(vocab);
  float* w = ws.scratch_.weights.data();
  double log_norm;  // log sum exp(z)
  if (m == -kInf) {
    // Every logit is -inf / NaN: nothing is likely; return token 0.
    log_norm = kInf;
  } else {
    for (size_t i = 0; i < vocab; ++i) w[i] = ExpNonPositive(z[i] - m);
    log_norm = static_cast<double>(m) + std::log(SumLanes(w, vocab));
  }
  auto logprob = [&](int32_t id) {
    return static_cast<float>(static_cast<double>(z[id]) - log_norm);
  };

  // 2-7. Choose the token.
  int32_t token = static_cast<int32_t>(argmax);
  if (!params_.is_greedy() && m != -kInf) {
    const float temperature = params_.temperature;
    if (temperature != 1.0f) {
      for (size_t i = 0; i < vocab; ++i) w[i] = ExpNonPositive((z[i] - m) / temperature);
    }
    const std::optional<Candidate> threshold = FindThreshold(params_, z, w, vocab, m, ws.scratch_);
    const float min_p = params_.min_p;
    if (threshold.has_value() || min_p > 0.0f) {
      // Zero the weights of the tokens after the threshold and below min_p.
      const float tz = threshold.has_value() ? threshold->logit : -kInf;
      const int32_t tid = threshold.has_value() ? threshold->id : vocab;
      const int32_t n = static_cast<int32_t>(vocab);
      for (int32_t i = 0; i < n; ++i) {
        const float zi = z[i];
        const float wi = w[i];
        const bool keep = (zi > tz) | ((zi == tz) & (i <= tid));
        w[i] = keep & (wi >= min_p) ? wi : 0.0f;
      }
    }
    const int64_t chosen = SampleIndex(w, vocab, NextUniform(), ws.scratch_.block_sums);
    if (chosen >= 0) token = static_cast<int32_t>(chosen);
  }

  out.token_id = token;
  out.logprob = logprob(token);
  out.is_stop_token = IsStopToken(token);

  // Top-n raw logprobs: one pass keeping a small sorted buffer.
  const size_t n_top = std::min<size_t>(params_.num_logprobs, vocab);
  if (n_top > 0) {
    auto& top = ws.scratch_.top;
    top.clear();
    for (size_t i = 0; i < vocab; ++i) {
      const float x = z[i];
      if (top.size() == n_top) {
        if (!(x > top.back().first)) continue;  // ids ascend: an equal logit loses
        top.pop_back();
      }
      auto pos = std::find_if(top.begin(), top.end(), [x](const auto& e) { return e.first < x; });
      top.insert(pos, {x, static_cast<int32_t>(i)});
    }
    out.top_logprobs.reserve(n_top);
    for (const auto& [x, id] : top) out.top_logprobs.emplace_back(id, logprob(id));
  }

  if (penalty != 1.0f) seen_.insert(token);
  return out;
}

}  // namespace mor
