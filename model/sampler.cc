#include "model/sampler.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"

// Bit-exact results must not depend on whether the compiler fuses a * b + c.
#if defined(__clang__)
#pragma clang fp contract(off)
#endif

// The O(vocab) loops below are written to vectorise. On x86-64 Linux with GCC they
// are also compiled for AVX2 (without FMA, so every clone computes bit-identical
// results) and picked at load time.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define MOR_SAMPLER_KERNEL __attribute__((target_clones("avx2", "default"), noinline))
#else
#define MOR_SAMPLER_KERNEL
#endif

namespace mor {
namespace {

using sampler_internal::Candidate;

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kMaxFinite = std::numeric_limits<float>::max();

// Histogram of scaled logits used to bound top_k / top_p: bucket b holds the tokens
// with (max - logit) / temperature in [b, b + 1) / kBucketsPerNat. Tokens beyond the
// last bucket are more than 90 nats below the best one: their float weight is 0.
constexpr float kBucketsPerNat = 64.0f;
constexpr int kNumBuckets = 90 * 64;

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

// Combines 8 double lanes in a fixed order.
inline double CombineLanes(const double* acc) {
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

// Sum in double with 8 interleaved accumulators combined in a fixed order:
// deterministic, and not bound by the latency of one addition chain.
MOR_SAMPLER_KERNEL double SumLanes(const float* w, size_t n) {
  double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int j = 0; j < 8; ++j) acc[j] += static_cast<double>(w[i + j]);
  }
  for (int j = 0; i < n; ++i, ++j) acc[j] += static_cast<double>(w[i]);
  return CombineLanes(acc);
}

// Maps a float to an int32 with the same order (for non-NaN values); an involution.
inline int32_t OrderKey(float x) {
  const int32_t b = std::bit_cast<int32_t>(x);
  return b ^ ((b >> 31) & 0x7FFFFFFF);
}

// Max of z[0, n) (n > 0; no NaN), via integer keys so that the loop vectorises.
MOR_SAMPLER_KERNEL float MaxLanes(const float* z, size_t n) {
  int32_t m = std::numeric_limits<int32_t>::min();
  for (size_t i = 0; i < n; ++i) m = std::max(m, OrderKey(z[i]));
  return std::bit_cast<float>(OrderKey(std::bit_cast<float>(m)));
}

// z[i] = logits[i] with NaN -> -inf and +inf -> the largest finite float.
MOR_SAMPLER_KERNEL void Sanitize(const float* logits, float* z, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    const float x = logits[i];
    const float y = x != x ? -kInf : x;
    z[i] = y > kMaxFinite ? kMaxFinite : y;
  }
}

MOR_SAMPLER_KERNEL void ExpShiftedKernel(const float* z, float* w, size_t n, float m) {
  for (size_t i = 0; i < n; ++i) w[i] = ExpNonPositive(z[i] - m);
}

MOR_SAMPLER_KERNEL void ExpScaledKernel(const float* z, float* w, size_t n, float m,
                                        float temperature) {
  for (size_t i = 0; i < n; ++i) w[i] = ExpNonPositive((z[i] - m) / temperature);
}

// w[i] = exp(z[i] - m); returns SumLanes(w, n). (Two loops: fusing the sum into the
// exp loop vectorises worse.)
double ExpShifted(const float* z, float* w, size_t n, float m) {
  ExpShiftedKernel(z, w, n, m);
  return SumLanes(w, n);
}

// w[i] = exp((z[i] - m) / temperature); returns SumLanes(w, n).
double ExpScaled(const float* z, float* w, size_t n, float m, float temperature) {
  ExpScaledKernel(z, w, n, m, temperature);
  return SumLanes(w, n);
}

// The first i with z[i] == v (n when none).
MOR_SAMPLER_KERNEL size_t FirstIndexOf(const float* z, size_t n, float v) {
  constexpr size_t kSpan = 64;
  for (size_t base = 0; base < n; base += kSpan) {
    const size_t len = std::min(kSpan, n - base);
    int32_t any = 0;
    for (size_t j = 0; j < len; ++j) any |= static_cast<int32_t>(z[base + j] == v);
    if (any == 0) continue;
    for (size_t j = 0; j < len; ++j) {
      if (z[base + j] == v) return base + j;
    }
  }
  return n;
}

// Tokens are processed in chunks so that stretches without interesting tokens cost
// only vector work.
constexpr size_t kChunk = 32;

// Layout of the histogram: kHistCopies interleaved copies (token j of a chunk goes
// to copy j % kHistCopies, so runs of one bucket do not serialise on one counter),
// each with kNumBuckets buckets, the overflow bucket, and one scratch slot per chunk
// position for the tokens beyond the cap (keeps the scatter branch-free without a
// dependency chain on one slot).
constexpr int kHistCopies = 4;
constexpr size_t kHistStride = kNumBuckets + 1 + kChunk;

// bucket[i] = min(floor((m - z[i]) * scale), cap), and the count and (if `mass`
// is non-null) the mass (sum of w) of every bucket below `cap`: each copy is
// accumulated in id order and the copies are then added in a fixed order into
// copy 0. Chunks without a token below `cap` skip the scatter. count and mass hold
// kHistCopies * kHistStride zeroed entries.
MOR_SAMPLER_KERNEL void BucketHistogram(const float* z, const float* w, uint16_t* bucket, size_t n,
                                        float m, float scale, int32_t cap, int32_t* count,
                                        double* mass) {
  const float overflow = static_cast<float>(cap);
  int32_t slot[kChunk];
  for (size_t base = 0; base < n; base += kChunk) {
    const int32_t len = static_cast<int32_t>(std::min(kChunk, n - base));
    const float* zc = z + base;
    uint16_t* bc = bucket + base;
    int32_t any = 0;
    for (int32_t j = 0; j < len; ++j) {
      const float d = (m - zc[j]) * scale;
      const int32_t b = static_cast<int32_t>(d < overflow ? d : overflow);
      bc[j] = static_cast<uint16_t>(b);
      any |= static_cast<int32_t>(b < cap);
      slot[j] = (j % kHistCopies) * static_cast<int32_t>(kHistStride) + (b < cap ? b : cap + 1 + j);
    }
    if (any == 0) continue;
    if (mass != nullptr) {
      const float* wc = w + base;
      for (int32_t j = 0; j < len; ++j) {
        ++count[slot[j]];
        mass[slot[j]] += static_cast<double>(wc[j]);
      }
    } else {
      for (int32_t j = 0; j < len; ++j) ++count[slot[j]];
    }
  }
  static_assert(kHistCopies == 4);
  constexpr size_t s = kHistStride;
  for (int32_t b = 0; b < cap; ++b) {
    count[b] = (count[b] + count[s + b]) + (count[2 * s + b] + count[3 * s + b]);
  }
  if (mass != nullptr) {
    for (int32_t b = 0; b < cap; ++b) {
      mass[b] = (mass[b] + mass[s + b]) + (mass[2 * s + b] + mass[3 * s + b]);
    }
  }
}

// count[j] = number of tokens with (m - z[i]) * scale < limit[j] (i.e. in a bucket
// below limit[j]), for 4 limits at once.
MOR_SAMPLER_KERNEL void CountBelow(const float* z, size_t n, float m, float scale,
                                   const float* limit, int64_t* count) {
  const float l0 = limit[0], l1 = limit[1], l2 = limit[2], l3 = limit[3];
  for (size_t base = 0; base < n; base += 4096) {  // int32 partial counts cannot overflow
    const size_t end = std::min(n, base + 4096);
    int32_t c0 = 0, c1 = 0, c2 = 0, c3 = 0;
    for (size_t i = base; i < end; ++i) {
      const float d = (m - z[i]) * scale;
      c0 += static_cast<int32_t>(d < l0);
      c1 += static_cast<int32_t>(d < l1);
      c2 += static_cast<int32_t>(d < l2);
      c3 += static_cast<int32_t>(d < l3);
    }
    count[0] += c0;
    count[1] += c1;
    count[2] += c2;
    count[3] += c3;
  }
}

// The tokens of bucket `b`, in id order, into `out` (room for their count + 1:
// the compaction below stores unconditionally).
MOR_SAMPLER_KERNEL void GatherBucket(const float* z, const float* w, const uint16_t* bucket,
                                     size_t n, uint16_t b, Candidate* out) {
  int32_t hit[kChunk];
  size_t k = 0;
  for (size_t base = 0; base < n; base += kChunk) {
    const size_t len = std::min(kChunk, n - base);
    const uint16_t* bc = bucket + base;
    int32_t any = 0;
    for (size_t j = 0; j < len; ++j) {
      hit[j] = static_cast<int32_t>(bc[j] == b);
      any |= hit[j];
    }
    if (any == 0) continue;
    for (size_t j = 0; j < len; ++j) {  // branch-free compaction
      const size_t i = base + j;
      out[k] = Candidate{z[i], w[i], static_cast<int32_t>(i)};
      k += static_cast<size_t>(hit[j]);
    }
  }
}

// Zeroes w[i] unless token i comes no later than (tz, tid) in (logit desc, id asc)
// order and w[i] >= min_p.
MOR_SAMPLER_KERNEL void MaskWeights(const float* z, float* w, int32_t n, float tz, int32_t tid,
                                    float min_p) {
  for (int32_t i = 0; i < n; ++i) {
    const float zi = z[i];
    const float wi = w[i];
    const bool keep = (zi > tz) | ((zi == tz) & (i <= tid));
    w[i] = keep & (wi >= min_p) ? wi : 0.0f;
  }
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

// Strict total order: larger logit first, then lower id.
inline bool Before(const Candidate& a, const Candidate& b) {
  return a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
}

// The last of the first r elements (1 <= r <= n) of [first, last) in Before order,
// moving those r elements to the front (in no particular order). The element and the
// set are unique, so the result does not depend on the library's nth_element.
Candidate SelectFirst(Candidate* first, Candidate* last, size_t r) {
  if (first + r < last) std::nth_element(first, first + r - 1, last, Before);
  return *std::max_element(first, first + r, Before);
}

// Weights in fixed point for top_p inside a bucket: integer sums are exact, so the
// mass of a set does not depend on the order in which a selection visits it.
constexpr double kFixedOne = 0x1.0p40;
inline int64_t Fixed(float w) { return static_cast<int64_t>(static_cast<double>(w) * kFixedOne); }

// top_p inside one bucket: an element is kept iff `before` (the mass ahead of the
// range) plus the mass of the range's elements ahead of it is < `target`. Returns
// the last kept element (in Before order); moves the kept ones to the front.
// Weighted quickselect: O(n) expected, no sort.
Candidate TopPCut(Candidate* first, Candidate* last, double before, double target) {
  auto kept = [&](int64_t ahead) {
    return before + static_cast<double>(ahead) / kFixedOne < target;
  };
  Candidate* lo = first;  // [first, lo): kept; [hi, last): dropped
  Candidate* hi = last;
  int64_t ahead = 0;  // fixed-point mass of [first, lo)
  while (hi - lo > 16) {
    Candidate* mid = lo + (hi - lo) / 2;
    std::nth_element(lo, mid, hi, Before);
    int64_t left = 0;
    for (const Candidate* c = lo; c < mid; ++c) left += Fixed(c->weight);
    if (kept(ahead + left)) {  // *mid and everything before it are kept
      ahead += left + Fixed(mid->weight);
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  std::sort(lo, hi, Before);
  while (lo < hi && kept(ahead)) ahead += Fixed((lo++)->weight);
  if (lo == first) ++lo;  // the first element is always kept (callers ensure this anyway)
  return *std::max_element(first, lo, Before);
}

// The k (>= 1, <= n) largest logits as (logit, id), by logit descending then id
// ascending. One pass; spans of 64 with nothing above the current k-th are skipped
// with vector compares.
MOR_SAMPLER_KERNEL void TopLogits(const float* z, size_t n, size_t k,
                                  std::vector<std::pair<float, int32_t>>& top) {
  top.clear();
  for (size_t i = 0; i < k; ++i) top.emplace_back(z[i], static_cast<int32_t>(i));
  auto ahead = [](const std::pair<float, int32_t>& a, const std::pair<float, int32_t>& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  };
  std::sort(top.begin(), top.end(), ahead);
  float floor = top.back().first;  // a later token must beat it strictly (its id is larger)
  constexpr size_t kSpan = 64;
  for (size_t base = k; base < n; base += kSpan) {
    const size_t len = std::min(kSpan, n - base);
    const float* zc = z + base;
    int32_t any = 0;
    for (size_t j = 0; j < len; ++j) any |= static_cast<int32_t>(zc[j] > floor);
    if (any == 0) continue;
    for (size_t j = 0; j < len; ++j) {
      const float x = zc[j];
      if (!(x > floor)) continue;
      top.pop_back();
      auto pos = std::find_if(top.begin(), top.end(), [x](const auto& e) { return e.first < x; });
      top.insert(pos, {x, static_cast<int32_t>(base + j)});
      floor = top.back().first;
    }
  }
}

struct ThresholdResult {
  bool decided = false;  // false: the boundary may lie beyond the histogram's cap
  std::optional<Candidate> threshold;
};

// FindThreshold() with a histogram of the buckets below `cap` only. `total_mass`
// (sum of w) is used by top_p when top_k is off.
ThresholdResult FindThresholdCapped(const SamplingParams& params, const float* z, const float* w,
                                    size_t vocab, float m, int cap, double total_mass,
                                    sampler_internal::Scratch& ws) {
  const bool use_top_k = params.top_k > 0 && static_cast<size_t>(params.top_k) < vocab;
  const bool use_top_p = params.top_p < 1.0f;
  const bool full = cap == kNumBuckets;
  ws.buckets.resize(vocab);
  uint16_t* bucket = ws.buckets.data();
  ws.bucket_count.resize(kHistCopies * kHistStride);
  ws.bucket_mass.resize(kHistCopies * kHistStride);
  int32_t* count = ws.bucket_count.data();
  double* mass = ws.bucket_mass.data();
  for (int c = 0; c < kHistCopies; ++c) {  // the slots BucketHistogram touches
    std::fill_n(count + c * kHistStride, cap + 1 + kChunk, 0);
    if (use_top_p) std::fill_n(mass + c * kHistStride, cap + 1 + kChunk, 0.0);
  }
  BucketHistogram(z, w, bucket, vocab, m, kBucketsPerNat / params.temperature, cap, count,
                  use_top_p ? mass : nullptr);
  std::vector<Candidate>& cand = ws.candidates;
  auto gather = [&](int b) {
    cand.resize(count[b] + 1);
    GatherBucket(z, w, bucket, vocab, static_cast<uint16_t>(b), cand.data());
    cand.pop_back();
  };

  ThresholdResult result;
  // top_k: the k-th token is element `need` of bucket k_bucket.
  int k_bucket = -1;
  size_t need = 0;
  if (use_top_k) {
    int64_t cum = 0;
    for (int b = 0; b < cap; ++b) {
      if (cum + count[b] >= params.top_k) {
        k_bucket = b;
        need = static_cast<size_t>(params.top_k - cum);
        break;
      }
      cum += count[b];
    }
    if (k_bucket < 0 && !full) return result;  // undecided
  }
  if (k_bucket >= 0) {  // else fewer than k tokens have a non-zero weight
    gather(k_bucket);
    result.threshold = SelectFirst(cand.data(), cand.data() + cand.size(), need);
    cand.resize(need);
  }
  result.decided = true;
  if (!use_top_p) return result;

  // top_p over the top-k distribution (all tokens when top_k is off).
  const int end_bucket = k_bucket >= 0 ? k_bucket : cap;
  double total = total_mass;
  if (k_bucket >= 0) {
    total = 0.0;
    for (int b = 0; b < end_bucket; ++b) total += mass[b];
    for (const Candidate& c : cand) total += static_cast<double>(c.weight);
  }
  const double target = static_cast<double>(params.top_p) * total;
  double before = 0.0;
  for (int b = 0; b < end_bucket; ++b) {
    if (before + mass[b] >= target) {
      gather(b);
      result.threshold = TopPCut(cand.data(), cand.data() + cand.size(), before, target);
      return result;
    }
    before += mass[b];
  }
  if (k_bucket >= 0) {  // the boundary is among the top-k part of k_bucket
    result.threshold = TopPCut(cand.data(), cand.data() + cand.size(), before, target);
    return result;
  }
  result.decided = full;  // full: rounding left the target unreached, keep everything
  return result;
}

// The last token kept by top_k and top_p (in Before order), or nullopt when they
// keep everything. z: penalised logits (max m); w: exp((z - m) / temperature).
//
// A histogram of (m - z) / temperature in buckets of 1/kBucketsPerNat nats (monotone
// in z) locates the bucket holding the boundary; only that bucket is then gathered
// and partially sorted. The histogram first covers only the top `cap` buckets
// (where the boundary almost always is; a heuristic that never changes the result)
// and is redone in full when the boundary is not found there.
std::optional<Candidate> FindThreshold(const SamplingParams& params, const float* z, const float* w,
                                       size_t vocab, float m, double total_mass,
                                       sampler_internal::Scratch& ws) {
  const bool use_top_k = params.top_k > 0 && static_cast<size_t>(params.top_k) < vocab;
  const bool use_top_p = params.top_p < 1.0f;
  if (!use_top_k && !use_top_p) return std::nullopt;
  const float scale = kBucketsPerNat / params.temperature;
  int cap = kNumBuckets;
  if (use_top_k) {
    // The smallest of a few caps that holds at least k tokens (one vector pass).
    const int caps[4] = {static_cast<int>(2 * kBucketsPerNat), static_cast<int>(5 * kBucketsPerNat),
                         static_cast<int>(12 * kBucketsPerNat),
                         static_cast<int>(30 * kBucketsPerNat)};
    const float limits[4] = {static_cast<float>(caps[0]), static_cast<float>(caps[1]),
                             static_cast<float>(caps[2]), static_cast<float>(caps[3])};
    int64_t counts[4] = {0, 0, 0, 0};
    CountBelow(z, vocab, m, scale, limits, counts);
    for (int j = 3; j >= 0; --j) {
      if (counts[j] >= params.top_k) cap = caps[j];
    }
  } else {
    // Tokens more than x nats below the best hold at most vocab * exp(-x) of the
    // mass (>= 1), which is < 1 - top_p for x > log(vocab / (1 - top_p)).
    const double nats =
        std::log(static_cast<double>(vocab) / (1.0 - static_cast<double>(params.top_p))) + 1.0;
    cap = std::clamp(static_cast<int>(std::ceil(nats * kBucketsPerNat)),
                     static_cast<int>(4 * kBucketsPerNat), kNumBuckets);
  }
  ThresholdResult r = FindThresholdCapped(params, z, w, vocab, m, cap, total_mass, ws);
  if (!r.decided) r = FindThresholdCapped(params, z, w, vocab, m, kNumBuckets, total_mass, ws);
  return r.threshold;
}

std::string FloatStr(float v) { return absl::StrCat(v); }

}  // namespace

absl::Status SamplingParams::Validate(int64_t vocab_size) const {
  if (vocab_size <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("vocab_size must be > 0 (got ", vocab_size, ")"));
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
    return absl::InvalidArgumentError(absl::StrCat("num_logprobs must be in [0, ", kMaxNumLogprobs,
                                                   "] (got ", num_logprobs, ")"));
  }
  for (size_t i = 0; i < stop_token_ids.size(); ++i) {
    if (stop_token_ids[i] < 0 || stop_token_ids[i] >= vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("stop_token_ids[", i, "] must be in [0, ",
                                                     vocab_size, ") (got ", stop_token_ids[i],
                                                     ")"));
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

double SequenceSampler::NextUniform() { return static_cast<double>(rng_() >> 11) * 0x1.0p-53; }

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
  Sanitize(logits.data(), z, vocab);
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
  const size_t argmax = std::min(FirstIndexOf(z, vocab, m), vocab - 1);
  ws.scratch_.weights.resize(vocab);
  float* w = ws.scratch_.weights.data();
  double log_norm;        // log sum exp(z)
  double raw_mass = 0.0;  // sum exp(z - m)
  if (m == -kInf) {
    // Every logit is -inf / NaN: nothing is likely; return token 0.
    log_norm = kInf;
  } else {
    raw_mass = ExpShifted(z, w, vocab, m);
    log_norm = static_cast<double>(m) + std::log(raw_mass);
  }
  auto logprob = [&](int32_t id) {
    return static_cast<float>(static_cast<double>(z[id]) - log_norm);
  };

  // 2-7. Choose the token.
  int32_t token = static_cast<int32_t>(argmax);
  if (!params_.is_greedy() && m != -kInf) {
    const float temperature = params_.temperature;
    const double mass =
        temperature != 1.0f ? ExpScaled(z, w, vocab, m, temperature) : raw_mass;  // sum of w
    const std::optional<Candidate> threshold =
        FindThreshold(params_, z, w, vocab, m, mass, ws.scratch_);
    const float min_p = params_.min_p;
    if (threshold.has_value() || min_p > 0.0f) {
      // Zero the weights of the tokens after the threshold and below min_p.
      const float tz = threshold.has_value() ? threshold->logit : -kInf;
      const int32_t tid = threshold.has_value() ? threshold->id : static_cast<int32_t>(vocab);
      MaskWeights(z, w, static_cast<int32_t>(vocab), tz, tid, min_p);
    }
    const int64_t chosen = SampleIndex(w, vocab, NextUniform(), ws.scratch_.block_sums);
    if (chosen >= 0) token = static_cast<int32_t>(chosen);
  }

  out.token_id = token;
  out.logprob = logprob(token);
  out.is_stop_token = IsStopToken(token);

  // Top-n raw logprobs.
  const size_t n_top = std::min<size_t>(params_.num_logprobs, vocab);
  if (n_top > 0) {
    auto& top = ws.scratch_.top;
    TopLogits(z, vocab, n_top, top);
    out.top_logprobs.reserve(n_top);
    for (const auto& [x, id] : top) out.top_logprobs.emplace_back(id, logprob(id));
  }

  if (penalty != 1.0f) seen_.insert(token);
  return out;
}

}  // namespace mor
