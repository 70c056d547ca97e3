#include "model/sampler.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <limits>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace mor {
namespace {

using ::testing::HasSubstr;

constexpr float kInf = std::numeric_limits<float>::infinity();

// ---- Reference implementations (double precision, full sorts) -------------------

std::vector<double> LogSoftmax(const std::vector<float>& z, double temperature = 1.0) {
  double m = -std::numeric_limits<double>::infinity();
  for (float x : z) m = std::max(m, x / temperature);
  double s = 0.0;
  for (float x : z) s += std::exp(x / temperature - m);
  std::vector<double> out(z.size());
  for (size_t i = 0; i < z.size(); ++i) out[i] = z[i] / temperature - m - std::log(s);
  return out;
}

std::vector<double> Softmax(const std::vector<float>& z, double temperature) {
  std::vector<double> p = LogSoftmax(z, temperature);
  for (double& x : p) x = std::exp(x);
  return p;
}

// Token ids by (logit descending, id ascending).
std::vector<int32_t> Order(const std::vector<float>& z) {
  std::vector<int32_t> ids(z.size());
  std::iota(ids.begin(), ids.end(), 0);
  std::sort(ids.begin(), ids.end(),
            [&](int32_t a, int32_t b) { return z[a] > z[b] || (z[a] == z[b] && a < b); });
  return ids;
}

// The renormalised distribution after top_k -> top_p -> min_p (0 outside support).
std::vector<double> FilteredDistribution(const std::vector<float>& z, double temperature, int top_k,
                                         double top_p, double min_p) {
  const std::vector<double> p = Softmax(z, temperature);
  std::vector<int32_t> ids = Order(z);
  if (top_k > 0 && static_cast<size_t>(top_k) < ids.size()) ids.resize(top_k);
  double mass = 0.0;
  for (int32_t id : ids) mass += p[id];
  double before = 0.0;
  size_t keep = 0;
  while (keep < ids.size() && before < top_p * mass) before += p[ids[keep++]];
  ids.resize(keep);
  const double p_max = p[ids[0]];
  std::vector<double> q(z.size(), 0.0);
  double total = 0.0;
  for (int32_t id : ids) {
    if (p[id] >= min_p * p_max) {
      q[id] = p[id];
      total += p[id];
    }
  }
  for (double& x : q) x /= total;
  return q;
}

std::vector<float> RandomLogits(size_t n, uint64_t seed, float stddev, float mean = 0.0f) {
  std::mt19937_64 gen(seed);
  std::normal_distribution<float> dist(mean, stddev);
  std::vector<float> z(n);
  for (float& x : z) x = dist(gen);
  return z;
}

SamplingParams Params(float temperature, int top_k = 0, float top_p = 1.0f, float min_p = 0.0f) {
  SamplingParams p;
  p.temperature = temperature;
  p.top_k = top_k;
  p.top_p = top_p;
  p.min_p = min_p;
  p.seed = 1234;
  return p;
}

std::vector<int64_t> Histogram(SequenceSampler& s, const std::vector<float>& z, int draws) {
  std::vector<int64_t> counts(z.size(), 0);
  for (int i = 0; i < draws; ++i) ++counts[s.Sample(z).token_id];
  return counts;
}

// Pearson chi-square of `counts` against `q`; fails on a draw outside q's support.
double ChiSquare(const std::vector<int64_t>& counts, const std::vector<double>& q, int draws) {
  double chi2 = 0.0;
  for (size_t i = 0; i < q.size(); ++i) {
    if (q[i] == 0.0) {
      EXPECT_EQ(counts[i], 0) << "token " << i << " is outside the support";
      continue;
    }
    const double e = q[i] * draws;
    chi2 += (counts[i] - e) * (counts[i] - e) / e;
  }
  return chi2;
}

// ---- Validate --------------------------------------------------------------------

TEST(SamplingParamsTest, DefaultsAreValid) {
  EXPECT_TRUE(SamplingParams{}.Validate(10).ok());
  SamplingParams p = Params(0.7f, 50, 0.9f, 0.05f);
  p.repetition_penalty = 1.2f;
  p.num_logprobs = 20;
  p.stop_token_ids = {0, 9};
  EXPECT_TRUE(p.Validate(10).ok());
}

TEST(SamplingParamsTest, ValidateMessagesNameTheField) {
  struct Case {
    void (*mutate)(SamplingParams&);
    const char* message;
  };
  const Case cases[] = {
      {[](SamplingParams& p) { p.temperature = -1.0f; }, "temperature must be >= 0 (got -1)"},
      {[](SamplingParams& p) { p.temperature = std::nanf(""); }, "temperature must be finite"},
      {[](SamplingParams& p) { p.top_k = -1; }, "top_k must be >= 0 (got -1)"},
      {[](SamplingParams& p) { p.top_p = 0.0f; }, "top_p must be in (0, 1] (got 0)"},
      {[](SamplingParams& p) { p.top_p = 1.5f; }, "top_p must be in (0, 1] (got 1.5)"},
      {[](SamplingParams& p) { p.min_p = 1.0f; }, "min_p must be in [0, 1) (got 1)"},
      {[](SamplingParams& p) { p.min_p = -0.5f; }, "min_p must be in [0, 1) (got -0.5)"},
      {[](SamplingParams& p) { p.repetition_penalty = 0.0f; }, "repetition_penalty must be"},
      {[](SamplingParams& p) { p.repetition_penalty = -2.0f; }, "(got -2)"},
      {[](SamplingParams& p) { p.num_logprobs = 21; }, "num_logprobs must be in [0, 20] (got 21)"},
      {[](SamplingParams& p) { p.num_logprobs = -1; }, "num_logprobs must be in [0, 20] (got -1)"},
      {[](SamplingParams& p) {
         p.stop_token_ids = {3, 100};
       },
       "stop_token_ids[1] must be in [0, 100) (got 100)"},
      {[](SamplingParams& p) { p.stop_token_ids = {-1}; }, "stop_token_ids[0]"},
  };
  for (const Case& c : cases) {
    SamplingParams p;
    c.mutate(p);
    const absl::Status s = p.Validate(100);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << c.message;
    EXPECT_THAT(std::string(s.message()), HasSubstr(c.message));
  }
  EXPECT_THAT(std::string(SamplingParams{}.Validate(0).message()), HasSubstr("vocab_size"));
}

// ---- Greedy ----------------------------------------------------------------------

TEST(SequenceSamplerTest, GreedyPicksArgmax) {
  SequenceSampler s(SamplingParams{}, 0, {});
  EXPECT_EQ(s.Sample(std::vector<float>{0.1f, 2.0f, -3.0f, 1.9f}).token_id, 1);
  EXPECT_EQ(s.Sample(std::vector<float>{-5.0f, -4.0f, -6.0f}).token_id, 1);
  EXPECT_EQ(s.Sample(std::vector<float>{7.0f}).token_id, 0);
}

TEST(SequenceSamplerTest, GreedyTiesGoToLowestId) {
  SequenceSampler s(SamplingParams{}, 0, {});
  EXPECT_EQ(s.Sample(std::vector<float>{1.0f, 3.0f, 2.0f, 3.0f, 3.0f}).token_id, 1);
  std::vector<float> z(1000, 0.5f);
  z[700] = z[300] = z[999] = 4.0f;
  EXPECT_EQ(s.Sample(z).token_id, 300);
}

TEST(SequenceSamplerTest, TemperatureToZeroLimit) {
  const std::vector<float> z = {1.0f, 2.5f, 2.4f, -1.0f, 2.0f};
  for (float t : {0.01f, 0.002f}) {
    SequenceSampler s(Params(t), 7, {});
    for (int i = 0; i < 500; ++i) ASSERT_EQ(s.Sample(z).token_id, 1) << "T=" << t;
  }
  // Below kGreedyTemperature it is greedy: ties go to the lowest id.
  const std::vector<float> tied = {1.0f, 3.0f, 3.0f, 3.0f};
  SequenceSampler s(Params(kGreedyTemperature / 2), 7, {});
  for (int i = 0; i < 100; ++i) ASSERT_EQ(s.Sample(tied).token_id, 1);
}

TEST(SequenceSamplerTest, TopK1AndTinyTopPEqualGreedy) {
  for (uint64_t row = 0; row < 20; ++row) {
    // Quantised logits so that the maximum is often tied.
    std::vector<float> z = RandomLogits(row % 2 ? 1000 : 50000, row, 2.0f);
    for (float& x : z) x = std::round(x * 2.0f) / 2.0f;
    SequenceSampler greedy(SamplingParams{}, 0, {});
    const int32_t expected = greedy.Sample(z).token_id;
    for (float t : {0.5f, 1.0f, 3.0f}) {
      SequenceSampler k1(Params(t, /*top_k=*/1), row, {});
      SequenceSampler p0(Params(t, 0, /*top_p=*/1e-6f), row, {});
      SequenceSampler both(Params(t, 5, 1e-6f, 0.5f), row, {});
      for (int i = 0; i < 5; ++i) {
        ASSERT_EQ(k1.Sample(z).token_id, expected) << "row " << row << " T=" << t;
        ASSERT_EQ(p0.Sample(z).token_id, expected) << "row " << row << " T=" << t;
        ASSERT_EQ(both.Sample(z).token_id, expected) << "row " << row << " T=" << t;
      }
    }
  }
}

// ---- Repetition penalty ----------------------------------------------------------

TEST(SequenceSamplerTest, RepetitionPenaltyBothSigns) {
  const std::vector<float> z = {2.0f, -1.0f, 1.5f, -3.0f};
  SamplingParams p;
  p.repetition_penalty = 2.0f;
  p.num_logprobs = 4;
  const std::vector<int32_t> prompt = {0, 1, 1, 12345};  // out-of-vocab ids are ignored
  SequenceSampler s(p, 0, prompt);
  // Penalised: {1.0, -2.0, 1.5, -3.0}.
  SampledToken t = s.Sample(z);
  EXPECT_EQ(t.token_id, 2);
  const std::vector<double> ref = LogSoftmax({1.0f, -2.0f, 1.5f, -3.0f});
  EXPECT_NEAR(t.logprob, ref[2], 1e-5);
  ASSERT_EQ(t.top_logprobs.size(), 4u);
  const int32_t order[] = {2, 0, 1, 3};
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(t.top_logprobs[i].first, order[i]);
    EXPECT_NEAR(t.top_logprobs[i].second, ref[order[i]], 1e-5);
  }
  // Token 2 is now seen: {1.0, -2.0, 0.75, -3.0}.
  EXPECT_EQ(s.Sample(z).token_id, 0);
  // Accept() records too: after 0 and 2 are both seen and 3 is accepted,
  // {1.0, -2.0, 0.75, -6.0}.
  s.Accept(3);
  t = s.Sample(z);
  EXPECT_EQ(t.token_id, 0);
  EXPECT_NEAR(t.logprob, LogSoftmax({1.0f, -2.0f, 0.75f, -6.0f})[0], 1e-5);

  // penalty < 1 favours seen tokens: {4.0, -0.5, 1.5, -3.0}.
  p.repetition_penalty = 0.5f;
  SequenceSampler favour(p, 0, std::vector<int32_t>{1, 0});
  t = favour.Sample(std::vector<float>{2.0f, -1.0f, 3.0f, -3.0f});
  EXPECT_EQ(t.token_id, 0);
  EXPECT_NEAR(t.logprob, LogSoftmax({4.0f, -0.5f, 3.0f, -3.0f})[0], 1e-5);
  EXPECT_EQ(t.top_logprobs[1].first, 2);
  EXPECT_EQ(t.top_logprobs[2].first, 1);
}

TEST(SequenceSamplerTest, NoPenaltyMeansLogitsUnchanged) {
  SamplingParams p;
  p.num_logprobs = 2;
  SequenceSampler s(p, 0, std::vector<int32_t>{0, 0, 0});
  const std::vector<float> z = {2.0f, 1.0f};
  for (int i = 0; i < 3; ++i) {
    SampledToken t = s.Sample(z);
    EXPECT_EQ(t.token_id, 0);
    EXPECT_NEAR(t.logprob, LogSoftmax(z)[0], 1e-6);
  }
}

// ---- Seeds -----------------------------------------------------------------------

std::vector<int32_t> Draw(SequenceSampler s, int n, size_t vocab = 64) {
  std::vector<int32_t> out;
  for (int i = 0; i < n; ++i) out.push_back(s.Sample(RandomLogits(vocab, i, 1.0f)).token_id);
  return out;
}

TEST(SequenceSamplerTest, SameSeedSameSequenceDifferentSeedsDiffer) {
  for (const SamplingParams& base : {Params(1.0f), Params(0.8f, 20, 0.9f, 0.01f)}) {
    SamplingParams a = base, b = base;
    a.seed = 42;
    b.seed = 43;
    const std::vector<int32_t> first = Draw(SequenceSampler(a, 0, {}), 200);
    EXPECT_EQ(first, Draw(SequenceSampler(a, 99, {}), 200));
    EXPECT_NE(first, Draw(SequenceSampler(b, 0, {}), 200));
    // The fallback seed is used when no seed is given.
    SamplingParams unseeded = base;
    unseeded.seed.reset();
    SequenceSampler fallback(unseeded, 42, {});
    EXPECT_EQ(fallback.seed(), 42u);
    EXPECT_EQ(first, Draw(std::move(fallback), 200));
  }
}

// Inverse CDF in token-id order: the first j with u < q[0] + ... + q[j].
int32_t ReferenceDraw(const std::vector<double>& q, double u) {
  double cum = 0.0;
  int32_t last = -1;
  for (size_t j = 0; j < q.size(); ++j) {
    if (q[j] == 0.0) continue;
    cum += q[j];
    last = static_cast<int32_t>(j);
    if (u < cum) return last;
  }
  return last;
}

struct RefCase {
  size_t vocab;
  float temperature;
  int top_k;
  float top_p;
  float min_p;
};

// The stream is std::mt19937_64 and a draw is (x >> 11) * 2^-53 mapped through the
// inverse CDF, in token-id order, of the filtered distribution. A double-precision
// reference with full sorts must therefore agree token for token (the float
// arithmetic differs only ~1e-7 from it).
TEST(SequenceSamplerTest, MatchesReferenceSamplerTokenForToken) {
  const RefCase cases[] = {
      {300, 0.9f, 0, 1.0f, 0.0f},     {300, 0.7f, 20, 1.0f, 0.0f},
      {300, 1.2f, 0, 0.8f, 0.0f},     {300, 1.0f, 100, 0.9f, 0.02f},
      {300, 0.5f, 0, 1.0f, 0.1f},     {20000, 1.0f, 0, 0.9f, 0.0f},
      {20000, 0.6f, 40, 1.0f, 0.0f},  {20000, 1.3f, 1000, 0.95f, 0.0f},
      {20000, 0.8f, 0, 0.5f, 0.001f}, {20000, 2.0f, 0, 1.0f, 0.0f},
  };
  for (const RefCase& c : cases) {
    std::vector<float> z = RandomLogits(c.vocab, c.vocab + 1, 1.5f);
    if (c.vocab > 1000) {
      for (float& x : z) x = std::round(x * 16.0f) / 16.0f;  // ties, also at the boundaries
    }
    const std::vector<double> q = FilteredDistribution(z, c.temperature, c.top_k, c.top_p, c.min_p);
    SamplingParams params = Params(c.temperature, c.top_k, c.top_p, c.min_p);
    params.seed = 2024;
    SequenceSampler s(params, 0, {});
    std::mt19937_64 gen(2024);
    const int draws = c.vocab > 1000 ? 300 : 1000;
    for (int i = 0; i < draws; ++i) {
      const double u = static_cast<double>(gen() >> 11) * 0x1.0p-53;
      const int32_t token = s.Sample(z).token_id;
      ASSERT_EQ(token, ReferenceDraw(q, u))
          << "draw " << i << " vocab " << c.vocab << " T=" << c.temperature << " k=" << c.top_k
          << " p=" << c.top_p << " min_p=" << c.min_p;
    }
  }
}

// Pins the stream: logits from exact float arithmetic (no std:: distribution), so the
// expected tokens hold for every standard library and machine.
TEST(SequenceSamplerTest, GoldenStream) {
  std::vector<float> z(300);
  for (size_t i = 0; i < z.size(); ++i) {
    z[i] = static_cast<float>((i * 7919) % 1000) / 250.0f - 2.0f;  // [-2, 2)
  }
  SamplingParams params = Params(0.9f);
  params.seed = 2024;
  SequenceSampler s(params, 0, {});
  std::vector<int32_t> tokens;
  for (int i = 0; i < 8; ++i) tokens.push_back(s.Sample(z).token_id);
  // Also computed by an independent Python mt19937_64 + double softmax.
  EXPECT_THAT(tokens, ::testing::ElementsAre(187, 240, 81, 101, 1, 41, 284, 174));
}

// All logits equal: every token is in one histogram bucket and ties are broken by
// id, so top_p = 0.5 keeps exactly the lower half of the ids and top_k the first k.
TEST(SequenceSamplerTest, TiesAreBrokenByTokenId) {
  const std::vector<float> z(10000, 0.25f);
  SamplingParams half_params = Params(1.0f, 0, 0.5f);
  SamplingParams first_params = Params(0.7f, 123);
  SequenceSampler half(half_params, 0, {});
  SequenceSampler first(first_params, 0, {});
  std::mt19937_64 half_gen(*half_params.seed), first_gen(*first_params.seed);
  for (int i = 0; i < 1000; ++i) {
    // Uniform over the kept ids: the draw is floor(u * size).
    const double u_half = static_cast<double>(half_gen() >> 11) * 0x1.0p-53;
    const double u_first = static_cast<double>(first_gen() >> 11) * 0x1.0p-53;
    ASSERT_EQ(half.Sample(z).token_id, static_cast<int32_t>(u_half * 5000)) << i;
    ASSERT_EQ(first.Sample(z).token_id, static_cast<int32_t>(u_first * 123)) << i;
  }
}

// top_k spanning tens of nats: the first, capped histogram cannot hold the k-th
// token, so the full one is built.
TEST(SequenceSamplerTest, TopKFarBelowTheMaximum) {
  std::vector<float> z(4000);
  for (size_t i = 0; i < z.size(); ++i) z[i] = -0.02f * static_cast<float>((i * 7919) % 4000);
  for (int k : {1000, 2000}) {  // the k-th token is 40 / 80 nats down
    const std::vector<double> q = FilteredDistribution(z, 0.5, k, 1.0, 0.0);
    SamplingParams params = Params(0.5f, k);
    SequenceSampler s(params, 0, {});
    std::mt19937_64 gen(*params.seed);
    for (int i = 0; i < 300; ++i) {
      const double u = static_cast<double>(gen() >> 11) * 0x1.0p-53;
      ASSERT_EQ(s.Sample(z).token_id, ReferenceDraw(q, u)) << "k=" << k << " draw " << i;
    }
  }
}

// ---- Distribution ----------------------------------------------------------------

struct DistCase {
  float temperature;
  int top_k;
  float top_p;
  float min_p;
};

TEST(SequenceSamplerTest, EmpiricalDistributionMatchesFilteredSoftmax) {
  const std::vector<float> z = {1.0f, 0.2f, -0.5f, 2.0f, 1.5f, 0.0f, -1.0f, 0.7f, 1.1f, -2.0f};
  const DistCase cases[] = {
      {1.0f, 0, 1.0f, 0.0f}, {0.7f, 0, 1.0f, 0.0f}, {2.0f, 0, 1.0f, 0.0f}, {1.0f, 4, 1.0f, 0.0f},
      {1.0f, 0, 0.7f, 0.0f}, {0.8f, 0, 1.0f, 0.2f}, {1.3f, 6, 0.8f, 0.0f}, {1.0f, 7, 0.9f, 0.1f},
  };
  constexpr int kDraws = 20000;
  for (const DistCase& c : cases) {
    SequenceSampler s(Params(c.temperature, c.top_k, c.top_p, c.min_p), 77, {});
    const std::vector<double> q = FilteredDistribution(z, c.temperature, c.top_k, c.top_p, c.min_p);
    const std::vector<int64_t> counts = Histogram(s, z, kDraws);
    int support = 0;
    for (double x : q) support += x > 0;
    // df <= 9; chi2(9) exceeds 30 with probability 4e-4 (fixed seed: no flakes).
    const double chi2 = ChiSquare(counts, q, kDraws);
    EXPECT_LT(chi2, 30.0) << "T=" << c.temperature << " k=" << c.top_k << " p=" << c.top_p
                          << " min_p=" << c.min_p << " support=" << support;
    for (size_t i = 0; i < q.size(); ++i) {
      if (q[i] > 0.01) {
        EXPECT_GT(counts[i], 0) << i;
      }
    }
  }
}

TEST(SequenceSamplerTest, MinPDropsUnlikelyTokens) {
  // p ∝ {1, 0.5, 0.3, 0.1, 0.05}; min_p = 0.25 keeps ids 0..2.
  const std::vector<float> z = {0.0f, std::log(0.5f), std::log(0.3f), std::log(0.1f),
                                std::log(0.05f)};
  SequenceSampler s(Params(1.0f, 0, 1.0f, 0.25f), 3, {});
  const std::vector<int64_t> counts = Histogram(s, z, 20000);
  EXPECT_EQ(counts[3], 0);
  EXPECT_EQ(counts[4], 0);
  EXPECT_LT(ChiSquare(counts, {1 / 1.8, 0.5 / 1.8, 0.3 / 1.8, 0, 0}, 20000), 20.0);
  // With temperature the ratio is taken on the scaled distribution: at T = 2,
  // p / p_max = {1, 0.71, 0.55, 0.32, 0.22}, so min_p = 0.3 keeps ids 0..3.
  SequenceSampler hot(Params(2.0f, 0, 1.0f, 0.3f), 3, {});
  const std::vector<int64_t> hot_counts = Histogram(hot, z, 20000);
  EXPECT_EQ(hot_counts[4], 0);
  EXPECT_GT(hot_counts[3], 0);
}

// Larger vocabularies with ties exercise the bucketed top_k / top_p selection:
// the sampled support must be exactly the reference support.
TEST(SequenceSamplerTest, TopKTopPRestrictSupport) {
  const DistCase cases[] = {
      {1.0f, 50, 1.0f, 0.0f},   {0.7f, 0, 0.9f, 0.0f},   {1.5f, 0, 0.5f, 0.0f},
      {1.0f, 200, 0.95f, 0.0f}, {0.9f, 20, 0.6f, 0.05f}, {3.0f, 0, 0.3f, 0.0f},
      {100.0f, 0, 0.1f, 0.0f},  {1.0f, 3, 1.0f, 0.0f},
  };
  for (size_t vocab : {2000u, 20000u}) {
    std::vector<float> z = RandomLogits(vocab, vocab, 1.5f);
    for (float& x : z) x = std::round(x * 8.0f) / 8.0f;  // many ties
    z[17] += 4.0f;
    z[vocab - 3] += 3.5f;
    for (const DistCase& c : cases) {
      const std::vector<double> q =
          FilteredDistribution(z, c.temperature, c.top_k, c.top_p, c.min_p);
      std::set<int32_t> support;
      for (size_t i = 0; i < q.size(); ++i) {
        if (q[i] > 0) support.insert(static_cast<int32_t>(i));
      }
      SequenceSampler s(Params(c.temperature, c.top_k, c.top_p, c.min_p), 11, {});
      std::set<int32_t> seen;
      const int draws = vocab > 2000 ? 500 : 2000;
      for (int i = 0; i < draws; ++i) {
        const int32_t t = s.Sample(z).token_id;
        ASSERT_TRUE(support.count(t))
            << "token " << t << " outside support, vocab " << vocab << " T=" << c.temperature
            << " k=" << c.top_k << " p=" << c.top_p;
        seen.insert(t);
      }
      // Every token likely enough to be drawn shows up.
      for (int32_t id : support) {
        if (q[id] * draws > 20) {
          EXPECT_TRUE(seen.count(id)) << id;
        }
      }
      if (c.top_k > 0 && c.top_k <= 3) {
        EXPECT_EQ(seen.size(), support.size());
      }
    }
  }
}

TEST(SequenceSamplerTest, TopKLargerThanVocabIsNoOp) {
  const std::vector<float> z = {0.0f, 0.5f, -0.5f};
  SequenceSampler s(Params(1.0f, 10), 5, {});
  const std::vector<int64_t> counts = Histogram(s, z, 20000);
  EXPECT_LT(ChiSquare(counts, Softmax(z, 1.0), 20000), 15.0);
}

// ---- Logprobs, stop tokens, edge cases -------------------------------------------

TEST(SequenceSamplerTest, LogprobsMatchLogSoftmaxAndAreSorted) {
  for (float t : {0.0f, 0.6f, 1.0f, 1.7f}) {
    SamplingParams p = Params(t, 0, 0.95f);
    p.num_logprobs = 20;
    SequenceSampler s(p, 0, {});
    for (uint64_t row = 0; row < 5; ++row) {
      const std::vector<float> z = RandomLogits(5000, 100 + row, 3.0f, 4.0f);
      const std::vector<double> ref = LogSoftmax(z);  // raw: before temperature
      const SampledToken tok = s.Sample(z);
      EXPECT_NEAR(tok.logprob, ref[tok.token_id], 1e-5);
      ASSERT_EQ(tok.top_logprobs.size(), 20u);
      const std::vector<int32_t> order = Order(z);
      for (int i = 0; i < 20; ++i) {
        EXPECT_EQ(tok.top_logprobs[i].first, order[i]);
        EXPECT_NEAR(tok.top_logprobs[i].second, ref[order[i]], 1e-5);
        if (i > 0) {
          EXPECT_GE(tok.top_logprobs[i - 1].second, tok.top_logprobs[i].second);
        }
      }
    }
  }
  // More requested than the vocabulary holds; ties sorted by id.
  SamplingParams p;
  p.num_logprobs = 5;
  SequenceSampler s(p, 0, {});
  const SampledToken tok = s.Sample(std::vector<float>{1.0f, 2.0f, 1.0f});
  ASSERT_EQ(tok.top_logprobs.size(), 3u);
  EXPECT_EQ(tok.top_logprobs[0].first, 1);
  EXPECT_EQ(tok.top_logprobs[1].first, 0);
  EXPECT_EQ(tok.top_logprobs[2].first, 2);
  EXPECT_TRUE(SequenceSampler(SamplingParams{}, 0, {})
                  .Sample(std::vector<float>{1.0f, 2.0f})
                  .top_logprobs.empty());
}

TEST(SequenceSamplerTest, StopTokens) {
  SamplingParams p;
  p.stop_token_ids = {2, 5};
  SequenceSampler s(p, 0, {});
  EXPECT_TRUE(s.Sample(std::vector<float>{0, 0, 9, 0, 0, 0}).is_stop_token);
  EXPECT_TRUE(s.Sample(std::vector<float>{0, 0, 0, 0, 0, 9}).is_stop_token);
  EXPECT_FALSE(s.Sample(std::vector<float>{0, 9, 0, 0, 0, 0}).is_stop_token);
  EXPECT_TRUE(s.IsStopToken(5));
  EXPECT_FALSE(s.IsStopToken(0));
}

TEST(SequenceSamplerTest, NonFiniteLogits) {
  const float nan = std::nanf("");
  SequenceSampler s(Params(1.0f), 1, {});
  for (int i = 0; i < 200; ++i) {
    const int32_t t = s.Sample(std::vector<float>{nan, 0.0f, -kInf, 0.5f, nan}).token_id;
    ASSERT_TRUE(t == 1 || t == 3) << t;
  }
  SequenceSampler g(SamplingParams{}, 1, {});
  EXPECT_EQ(g.Sample(std::vector<float>{nan, 1.0f, kInf, kInf}).token_id, 2);
  const SampledToken dead = g.Sample(std::vector<float>{-kInf, nan, -kInf});
  EXPECT_EQ(dead.token_id, 0);
  // A token ~100 nats below the best one has probability 0 in float.
  SequenceSampler far(Params(1.0f, 0, 1.0f), 1, {});
  for (int i = 0; i < 200; ++i) {
    ASSERT_EQ(far.Sample(std::vector<float>{0.0f, -100.0f}).token_id, 0);
  }
}

TEST(SequenceSamplerTest, SharedWorkspaceGivesSameResults) {
  SamplerWorkspace ws;
  SequenceSampler a(Params(0.9f, 40, 0.9f), 1, {});
  SequenceSampler b(Params(1.2f, 0, 0.8f), 2, {});
  SequenceSampler a2(Params(0.9f, 40, 0.9f), 1, {});
  SequenceSampler b2(Params(1.2f, 0, 0.8f), 2, {});
  for (int i = 0; i < 50; ++i) {
    const std::vector<float> za = RandomLogits(3000 + i, i, 2.0f);
    const std::vector<float> zb = RandomLogits(100 + i, i + 1000, 2.0f);
    EXPECT_EQ(a.Sample(za, ws).token_id, a2.Sample(za).token_id);
    EXPECT_EQ(b.Sample(zb, ws).token_id, b2.Sample(zb).token_id);
  }
}

// ---- Speed -----------------------------------------------------------------------

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr bool kSanitized = true;  // timings are meaningless there
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
constexpr bool kSanitized = true;
#else
constexpr bool kSanitized = false;
#endif
#else
constexpr bool kSanitized = false;
#endif

double ThreadCpuMicros() {
  timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) * 1e6 + static_cast<double>(t.tv_nsec) / 1e3;
}

TEST(SequenceSamplerTest, LargeVocabIsFast) {
  constexpr size_t kVocab = 151936;
  // LLM-like rows: a broad background plus a few strong candidates.
  std::vector<std::vector<float>> rows;
  for (uint64_t r = 0; r < 8; ++r) {
    std::vector<float> z = RandomLogits(kVocab, 500 + r, 2.0f);
    std::mt19937_64 gen(r);
    for (int j = 0; j < 30; ++j) z[gen() % kVocab] += 6.0f + 0.3f * j;
    rows.push_back(std::move(z));
  }
  const std::vector<float> flat = RandomLogits(kVocab, 7, 1.0f);  // worst-ish case
  struct Case {
    const char* name;
    SamplingParams params;
    bool use_flat;
  };
  const Case cases[] = {
      {"greedy", SamplingParams{}, false},
      {"T=1", Params(1.0f), false},
      {"T=0.8 top_p=0.9", Params(0.8f, 0, 0.9f), false},
      {"T=1 top_p=0.9", Params(1.0f, 0, 0.9f), false},
      {"T=0.7 top_k=50 top_p=0.95", Params(0.7f, 50, 0.95f), false},
      {"T=1 top_p=0.9 min_p=0.05 logprobs=20", Params(1.0f, 0, 0.9f, 0.05f), false},
      {"flat N(0,1) T=1 top_p=0.9", Params(1.0f, 0, 0.9f), true},
  };
  for (const Case& c : cases) {
    SamplingParams p = c.params;
    p.repetition_penalty = 1.1f;
    if (std::string(c.name).find("logprobs") != std::string::npos) p.num_logprobs = 20;
    std::vector<int32_t> prompt(512);
    std::iota(prompt.begin(), prompt.end(), 1000);
    SequenceSampler s(p, 0, prompt);
    const int kIters = kSanitized ? 10 : 200;
    int64_t checksum = s.Sample(rows[0]).token_id;  // warm-up allocates scratch
    const double cpu_start = ThreadCpuMicros();
    const auto start = std::chrono::steady_clock::now();
    for (int i = 0; i < kIters; ++i) {
      checksum += s.Sample(c.use_flat ? flat : rows[i % rows.size()]).token_id;
    }
    const double us =
        std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start)
            .count() /
        kIters;
    const double cpu_us = (ThreadCpuMicros() - cpu_start) / kIters;
    std::printf(
        "[ timing   ] vocab %zu, %-38s %7.1f us/sample wall, %7.1f us cpu (checksum %lld)\n",
        kVocab, c.name, us, cpu_us, static_cast<long long>(checksum));
    if (!kSanitized) {
      EXPECT_LT(us, 20000.0) << c.name;  // loose: CI machines vary
    }
  }
}

}  // namespace
}  // namespace mor
