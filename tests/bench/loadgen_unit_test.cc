// Unit tests of mor_loadgen's pure parts: workloads, flags, the Prometheus
// text parser and the report's statistics.
#include <cmath>
#include <limits>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "bench/loadgen/load_report.h"
#include "bench/loadgen/load_runner.h"
#include "bench/loadgen/metrics_scraper.h"
#include "bench/loadgen/prompt_source.h"
#include "bench/loadgen/workload.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace mor::loadgen {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

TEST(PolicyMixTest, ParsesDepthsAdaptiveAndDefault) {
  auto mix = ParsePolicyMix("adaptive:1:depth2,default");
  ASSERT_TRUE(mix.ok()) << mix.status();
  ASSERT_EQ(mix->size(), 4u);
  EXPECT_EQ((*mix)[0].Name(), "adaptive");
  EXPECT_EQ((*mix)[1].Name(), "depth1");
  EXPECT_EQ((*mix)[2].Name(), "depth2");
  EXPECT_EQ((*mix)[3].Name(), "default");
  EXPECT_TRUE(CheckPolicyDepths(*mix, 2).ok());
  EXPECT_THAT(std::string(CheckPolicyDepths(*mix, 1).message()), HasSubstr("depth 2"));
}

TEST(PolicyMixTest, RejectsGarbage) {
  EXPECT_FALSE(ParsePolicyMix("0").ok());
  EXPECT_FALSE(ParsePolicyMix("deep").ok());
  EXPECT_FALSE(ParsePolicyMix("1::2").ok());
}

WorkloadOptions Options() {
  WorkloadOptions o;
  o.num_prompts = 300;
  o.input_len = 20;
  o.input_range_ratio = 0.5;
  o.output_len = 10;
  o.output_range_ratio = 0.2;
  o.request_rate = 50;
  o.policies = *ParsePolicyMix("1:2:3");
  o.seed = 11;
  return o;
}

TEST(WorkloadTest, DeterministicLengthsPoliciesAndPoissonArrivals) {
  const PromptSource prompts = PromptSource::Random(1000);
  auto a = BuildWorkload(Options(), prompts);
  auto b = BuildWorkload(Options(), prompts);
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_EQ(a->size(), 300u);
  double last = 0;
  for (size_t i = 0; i < a->size(); ++i) {
    const RequestSpec& r = (*a)[i];
    EXPECT_EQ(r.prompt, (*b)[i].prompt);
    EXPECT_GE(r.prompt.size(), 10u);
    EXPECT_LE(r.prompt.size(), 30u);
    EXPECT_GE(r.max_tokens, 8);
    EXPECT_LE(r.max_tokens, 12);
    EXPECT_EQ(r.policy.depth, static_cast<int>(i % 3) + 1);
    for (uint32_t t : r.prompt) EXPECT_LT(t, 1000u);
    EXPECT_GE(r.arrival_seconds, last);
    last = r.arrival_seconds;
  }
  EXPECT_EQ((*a)[0].arrival_seconds, 0.0);
  // 299 exponential gaps of mean 1/50 s: about 6 s in all.
  EXPECT_NEAR(last, 299.0 / 50, 1.5);
}

TEST(WorkloadTest, RateChangesArrivalsNotPrompts) {
  const PromptSource prompts = PromptSource::Random(1000);
  WorkloadOptions fast = Options();
  fast.request_rate = std::numeric_limits<double>::infinity();
  auto a = BuildWorkload(Options(), prompts);
  auto b = BuildWorkload(fast, prompts);
  ASSERT_TRUE(a.ok() && b.ok());
  for (size_t i = 0; i < a->size(); ++i) {
    EXPECT_EQ((*a)[i].prompt, (*b)[i].prompt);
    EXPECT_EQ((*b)[i].arrival_seconds, 0.0);
  }
}

TEST(PromptSourceTest, CorpusWindows) {
  auto source = PromptSource::FromTokens({1, 2, 3, 4, 5, 6}, "corpus");
  ASSERT_TRUE(source.ok());
  std::mt19937_64 rng(1);
  for (int i = 0; i < 20; ++i) {
    auto p = source->Make(3, rng);
    ASSERT_TRUE(p.ok());
    ASSERT_EQ(p->size(), 3u);
    EXPECT_EQ((*p)[1], (*p)[0] + 1);
    EXPECT_EQ((*p)[2], (*p)[0] + 2);
  }
  EXPECT_FALSE(source->Make(7, rng).ok());
  EXPECT_FALSE(PromptSource::FromTokens({}, "empty").ok());
}

TEST(MakeRequestTest, FillsPromptLengthAndPolicy) {
  RequestSpec spec;
  spec.index = 7;
  spec.prompt = {4, 5};
  spec.max_tokens = 9;
  spec.policy = (*ParsePolicyMix("3"))[0];
  mor::v1::GenerateRequest base;
  base.mutable_stopping()->set_ignore_eos(true);
  const mor::v1::GenerateRequest r = MakeRequest(spec, base);
  EXPECT_EQ(r.request_id(), "loadgen-7");
  EXPECT_THAT(r.tokens().ids(), ElementsAre(4, 5));
  EXPECT_EQ(r.stopping().max_tokens(), 9u);
  EXPECT_TRUE(r.stopping().ignore_eos());
  EXPECT_EQ(r.recursion().fixed_depth(), 3u);
  spec.policy = (*ParsePolicyMix("adaptive"))[0];
  EXPECT_TRUE(MakeRequest(spec, base).recursion().has_adaptive());
}

TEST(FlagParsingTest, SloAndPercentiles) {
  auto slo = ParseSlo("ttft:2000 tpot:50,e2el:9000");
  ASSERT_TRUE(slo.ok());
  EXPECT_EQ(slo->ttft_ms, 2000);
  EXPECT_EQ(slo->tpot_ms, 50);
  EXPECT_EQ(slo->e2el_ms, 9000);
  EXPECT_FALSE(ParseSlo("ttft").ok());
  EXPECT_FALSE(ParseSlo("itl:4").ok());
  EXPECT_FALSE(ParseSlo("ttft:-1").ok());
  EXPECT_THAT(*ParsePercentiles("50, 99.9"), ElementsAre(50, 99.9));
  EXPECT_FALSE(ParsePercentiles("0").ok());
  EXPECT_FALSE(ParsePercentiles("101").ok());
}

TEST(PrometheusTextTest, ParsesSeriesLabelsAndSums) {
  const MetricSamples s = ParsePrometheusText(
      "# HELP mor_x help\n# TYPE mor_x counter\n"
      "mor_kv_cache_used_bytes{pool=\"depth\"} 2048\n"
      "mor_kv_cache_used_bytes{pool=\"unique\"} 1024\n"
      "mor_kv_cache_used_bytes_extra 5\n"
      "mor_engine_steps_total 17\n"
      "mor_stage_sum{stage=\"block\"} 1.5\n"
      "mor_stage_sum{stage=\"exit\"} 0.25\n"
      "mor_model_info{architecture=\"mor\",model_name=\"a b\"} 1\n"
      "mor_hist_bucket{le=\"+Inf\"} 3\n"
      "mor_gauge_inf +Inf\n"
      "garbage line\n");
  EXPECT_EQ(Sample(s, "mor_engine_steps_total"), 17);
  EXPECT_EQ(Sample(s, "missing", -1), -1);
  EXPECT_EQ(SumSamples(s, "mor_kv_cache_used_bytes"), 3072);
  EXPECT_EQ(Sample(s, "mor_kv_cache_used_bytes{pool=\"depth\"}"), 2048);
  const auto stages = SamplesByLabel(s, "mor_stage_sum", "stage");
  EXPECT_EQ(stages.at("block"), 1.5);
  EXPECT_EQ(stages.at("exit"), 0.25);
  const auto info = LabelsOf(s, "mor_model_info");
  EXPECT_EQ(info.at("architecture"), "mor");
  EXPECT_EQ(info.at("model_name"), "a b");
  EXPECT_EQ(Sample(s, "mor_hist_bucket{le=\"+Inf\"}"), 3);
  EXPECT_TRUE(std::isinf(Sample(s, "mor_gauge_inf")));
}

TEST(MetricsScraperTest, NeedsNumericHostAndPort) {
  EXPECT_TRUE(MetricsScraper::Create("127.0.0.1:9400").ok());
  EXPECT_TRUE(MetricsScraper::Create("localhost:9400").ok());
  EXPECT_FALSE(MetricsScraper::Create("example.com:9400").ok());
  EXPECT_FALSE(MetricsScraper::Create("127.0.0.1").ok());
}

RequestRecord Done(int index, const std::string& policy, double send, double first, double end,
                   int tokens) {
  RequestRecord r;
  r.index = index;
  r.policy = policy;
  r.prompt_tokens = 4;
  r.max_tokens = tokens;
  r.sent = r.done = r.has_final = true;
  r.send_seconds = send;
  r.first_token_seconds = first;
  r.end_seconds = end;
  r.output_tokens = tokens;
  r.chunks = tokens;
  r.finish_reason = mor::v1::FINISH_REASON_MAX_TOKENS;
  r.usage.set_completion_tokens(static_cast<uint32_t>(tokens));
  r.usage.add_token_steps_per_depth(10);
  r.usage.add_token_steps_per_depth(policy == "depth1" ? 0 : 10);
  for (int i = 1; i < tokens; ++i) r.itl_seconds.push_back(0.01f);
  return r;
}

TEST(ReportTest, VllmStatistics) {
  RunResult run;
  // TTFTs 0.1 .. 0.5 s; E2E = TTFT + 0.4 s over 5 tokens: TPOT 0.1 s.
  for (int i = 0; i < 5; ++i) {
    run.records.push_back(
        Done(i, i % 2 ? "depth1" : "adaptive", 0, 0.1 * (i + 1), 0.1 * (i + 1) + 0.4, 5));
  }
  RequestRecord failed;
  failed.sent = failed.done = true;
  failed.code = grpc::StatusCode::RESOURCE_EXHAUSTED;
  run.records.push_back(failed);
  run.records.emplace_back();  // never sent
  run.duration_seconds = 2.0;
  ReportInputs in;
  in.run = &run;
  in.percentiles = {50, 90, 99};
  in.slo.ttft_ms = 250;
  const nlohmann::json r = BuildReport(in);
  EXPECT_EQ(r["completed"], 5);
  EXPECT_EQ(r["failed"], 1);
  EXPECT_EQ(r["not_sent"], 1);
  EXPECT_EQ(r["errors"]["RESOURCE_EXHAUSTED"], 1);
  EXPECT_EQ(r["output_tokens"], 25);
  EXPECT_DOUBLE_EQ(r["output_throughput"].get<double>(), 12.5);
  EXPECT_DOUBLE_EQ(r["request_throughput"].get<double>(), 2.5);
  EXPECT_NEAR(r["ttft_ms"]["mean"].get<double>(), 300, 1e-9);
  EXPECT_NEAR(r["ttft_ms"]["p50"].get<double>(), 300, 1e-9);
  EXPECT_NEAR(r["ttft_ms"]["p90"].get<double>(), 460, 1e-9);  // numpy's linear rule
  EXPECT_NEAR(r["tpot_ms"]["median"].get<double>(), 100, 1e-9);
  EXPECT_NEAR(r["e2el_ms"]["max"].get<double>(), 900, 1e-9);
  EXPECT_EQ(r["itl_ms"]["count"], 20);
  EXPECT_EQ(r["goodput"]["good_requests"], 2);  // TTFT 100 and 200 ms
  EXPECT_DOUBLE_EQ(r["goodput"]["request_goodput"].get<double>(), 1.0);
  EXPECT_EQ(r["output_len_check"]["mismatched"], 0);
  EXPECT_EQ(r["per_policy"]["adaptive"]["completed"], 3);
  EXPECT_EQ(r["per_policy"]["depth1"]["completed"], 2);
  EXPECT_THAT(r["compute"]["token_steps_per_depth"].get<std::vector<double>>(),
              ElementsAre(50, 30));
  EXPECT_THAT(
      r["per_policy"]["depth1"]["compute"]["token_steps_per_depth"].get<std::vector<double>>(),
      ElementsAre(20, 0));
  EXPECT_TRUE(r["server"].is_null());
  const std::string table = FormatReportTable(r);
  EXPECT_THAT(table, HasSubstr("Successful requests:"));
  EXPECT_THAT(table, HasSubstr("P99 TTFT (ms):"));
}

}  // namespace
}  // namespace mor::loadgen
